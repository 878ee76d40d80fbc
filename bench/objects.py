"""Object-aware search (issue 17): find an object pasted into a busy scene, both ways round, in one run.

Scenes come from the acceptance check's generator (../shared/acceptance/make_scenes.py: the central 60%
of a UKBench photo pasted at 12-30% of the area onto a Flickr8k photo), one per object.
(a) scene as query against the clean UKBench photos: whole-image search vs `search(objects=True)`.
(b) another UKBench view of the object as query against the scenes + other Flickr8k photos: the gallery
    indexed plainly vs with `index(regions="objects")`.
Also: index time and vectors per image of both galleries, query latency, and UKBench-1000 N-S with
`objects=True` against plain search on ordinary photos (the cost of object-aware search where the
object fills the picture).

    nice -n 10 .venv/bin/python bench/objects.py                  # the figures in docs/benchmarks.md
    nice -n 10 .venv/bin/python bench/objects.py --scenes 30 --ns-queries 50   # quicker
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike import Library
from lookalike.objects import region_count

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"
UKBENCH = DATASETS / "ukbench_first1000"
FLICKR = DATASETS / "flickr8k_1000"


def group(name: str) -> int:
    return int(name[7:12]) // 4 if name.startswith("ukbench") else -1


def other_view(name: str) -> Path:
    n = int(name[7:12])
    return UKBENCH / f"ukbench{n + 1 if n % 4 == 0 else n - 1:05d}.jpg"


def timed_search(lib: Library, query: Path, collection: str, k: int, **kw: object) -> tuple[list[str], float]:
    started = time.perf_counter()
    hits = lib.search(query, k=k, collection=collection, **kw)  # type: ignore[arg-type]
    return [Path(h.path).name for h in hits], time.perf_counter() - started


def recall(ranked: list[list[str]], want: list[object], key: object = None) -> tuple[float, float]:
    f = key or (lambda n: n)
    r1 = np.mean([bool(r) and f(r[0]) == w for r, w in zip(ranked, want, strict=True)])  # type: ignore[operator]
    r4 = np.mean([any(f(n) == w for n in r[:4]) for r, w in zip(ranked, want, strict=True)])  # type: ignore[operator]
    return float(r1), float(r4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=60, help="scenes (objects) per task")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--busy", type=int, default=300, help="other Flickr8k photos in gallery (b)")
    ap.add_argument("--ns-queries", type=int, default=100, help="UKBench-1000 queries for the N-S check (0: skip)")
    ap.add_argument("--home", default=None, help="library directory to reuse (default: a new temporary one)")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="lookalike-objects-"))
    work = home / "data"
    uk = sorted(UKBENCH.glob("ukbench*.jpg"))
    objects = uk[:400:4][:args.scenes]
    scenes = work / "scenes"
    if not (scenes / "truth.json").is_file():
        subprocess.run([sys.executable, str(SHARED / "acceptance" / "make_scenes.py"), str(scenes), str(args.seed),
                        str(FLICKR), *map(str, objects)], check=True)
        (scenes / "scenes.json").rename(scenes / "truth.json")
    truth = json.loads((scenes / "truth.json").read_text())
    clean = work / "clean"
    busy = work / "busy"
    if not clean.is_dir():
        clean.mkdir(parents=True)
        for p in uk[:400]:
            shutil.copy(p, clean)
        busy.mkdir()
        for p in sorted(FLICKR.rglob("*.jpg"))[-args.busy:]:
            shutil.copy(p, busy)
        for s in truth:
            shutil.copy(scenes / s, busy)
    fig: dict[str, object] = {}
    with Library.open(home) as lib:
        def index(folder: Path, name: str, **kw: object) -> float:
            started = time.perf_counter()
            lib.index([folder], name, **kw)  # type: ignore[arg-type]
            return time.perf_counter() - started

        t_clean = index(clean, "clean")
        # (a) scene query against the clean photos
        want_a = [group(v["object"]) for v in truth.values()]
        rows_a = {}
        for label, kw in (("whole", {}), ("objects", {"objects": True})):
            ranked, secs = zip(*(timed_search(lib, scenes / s, "clean", 4, **kw) for s in truth), strict=True)
            rows_a[label] = (*recall(list(ranked), want_a, group), float(np.median(secs)))
        # (b) clean query against the busy gallery, plain and with regions
        t_plain = index(busy, "busy")
        t_regions = index(busy, "busy-regions", regions="objects")
        n_busy = lib.count("busy-regions")
        vectors = (n_busy + region_count(lib.store, "busy-regions")) / n_busy
        want_b = list(truth)
        rows_b = {}
        for label, name in (("whole", "busy"), ("regions", "busy-regions")):
            ranked, secs = zip(*(timed_search(lib, other_view(v["object"]), name, 4) for v in truth.values()),
                               strict=True)
            rows_b[label] = (*recall(list(ranked), want_b), float(np.median(secs)))
        ns = None
        if args.ns_queries:
            t_uk = index(UKBENCH, "uk")
            queries = uk[::max(1, len(uk) // args.ns_queries)][:args.ns_queries]
            ns = {}
            for label, kw in (("plain", {}), ("objects", {"objects": True})):
                total, secs = 0, []
                for q in queries:
                    names, dt = timed_search(lib, q, "uk", 4, **kw)
                    total += sum(group(n) == group(q.name) for n in names[:4])
                    secs.append(dt)
                ns[label] = (total / len(queries), float(np.median(secs)))
            fig["ukbench_index_s"] = round(t_uk, 1)
    print(f"scenes: {len(truth)} (seed {args.seed}), gallery (a) 400 clean UKBench photos, gallery (b) "
          f"{len(truth)} scenes + {args.busy} Flickr8k photos; detector: {lib.detector().name}")
    print()
    print("| task | search | recall@1 | recall@4 | median query |")
    print("|---|---|---|---|---|")
    for label, (r1, r4, t) in rows_a.items():
        print(f"| (a) scene query vs clean | {label} | {r1:.3f} | {r4:.3f} | {t * 1000:.0f} ms |")
    for label, (r1, r4, t) in rows_b.items():
        print(f"| (b) clean query vs scenes | {label} | {r1:.3f} | {r4:.3f} | {t * 1000:.0f} ms |")
    print()
    print(f"index (a) clean 400: {t_clean:.1f} s; (b) {n_busy} images plain {t_plain:.1f} s, with regions "
          f"{t_regions:.1f} s ({vectors:.1f} vectors per image)")
    if ns:
        print(f"UKBench-1000 N-S over {args.ns_queries} queries: plain {ns['plain'][0]:.3f} "
              f"({ns['plain'][1] * 1000:.0f} ms), --objects {ns['objects'][0]:.3f} ({ns['objects'][1] * 1000:.0f} ms)")
    fig.update(a=rows_a, b=rows_b, ns=ns, index_s={"clean": t_clean, "busy": t_plain, "busy_regions": t_regions},
               vectors_per_image=vectors)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(fig, indent=1))


if __name__ == "__main__":
    main()
