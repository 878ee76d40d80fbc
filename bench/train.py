#!/usr/bin/env python3
"""Training on your own pictures (issue 16): the default model against a supervised and a
self-supervised model trained on tf_flowers_1000, on held-out pictures, in one run.

Split (the acceptance check's): per class the first 150 files (sorted) train, the last 50 are held out;
the gallery is all 1000 pictures, each model indexing them into its own collection (`index --model`).
Figures: held-out mAP@10 (query excluded; AP@10 = sum_{r<=10} P@r rel(r) / 10) over the check's 50
queries (every 5th held-out picture) and over all 250 held-out pictures; UKBench-1000 N-S of each model
(what specialising to flowers costs elsewhere); training time (view caching + training + export).
`--split-b` also trains and scores a supervised model on the mirrored split (first 50 held out), a
second look that was not used for any choice. Prints one markdown table (for docs/benchmarks.md).

    python bench/train.py                       # library in /tmp/lookalike-bench-train (caches reused)
    python bench/train.py --home DIR --split-b
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lookalike import Library

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
if not SHARED.is_dir():
    SHARED = Path.cwd().parent / "shared" / "datasets"
FLOWERS, UKBENCH = SHARED / "tf_flowers_1000", SHARED / "ukbench_first1000"


def split(mirrored: bool = False) -> tuple[list[Path], list[Path]]:
    train, held = [], []
    for cls in sorted(p for p in FLOWERS.iterdir() if p.is_dir()):
        files = sorted(cls.glob("*.jpg"))
        if mirrored:
            held += files[:50]
            train += files[50:200]
        else:
            train += files[:150]
            held += files[150:200]
    return train, held


def flowers_map(lib: Library, collection: str, queries: list[Path]) -> float:
    aps = []
    for q in queries:
        hits = [h for h in lib.search(str(q), k=11, collection=collection) if Path(h.path).name != q.name][:10]
        rel = np.array([Path(h.path).parent.name == q.parent.name for h in hits], dtype=float)
        aps.append(float((np.cumsum(rel) / np.arange(1, len(rel) + 1) * rel).sum() / 10))
    return float(np.mean(aps))


def ukbench_ns(lib: Library, collection: str) -> float:
    files = sorted(UKBENCH.glob("ukbench*.jpg"))
    score = 0
    for f in files:
        group = int(f.stem[7:]) // 4
        score += sum(int(Path(h.path).stem[7:]) // 4 == group for h in lib.search(str(f), k=4, collection=collection))
    return score / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/lookalike-bench-train")
    ap.add_argument("--split-b", action="store_true", help="also the mirrored split (first 50 held out)")
    ap.add_argument("--no-ukbench", action="store_true")
    args = ap.parse_args()
    lib = Library.open(args.home)
    names = [c.name for c in lib.collections()]
    if "fl" not in names:
        lib.index([FLOWERS], "fl")
    rows = []
    runs = [("default", None, None, False)]
    train, held = split()
    csv = Path(args.home) / "train.csv"
    csv.write_text("image,label\n" + "".join(f"{p.parent.name}/{p.name},{p.parent.name}\n" for p in train))
    runs += [("flowers-sup", csv, held, False), ("flowers-ssl", None, held, True)]
    if args.split_b:
        train_b, held_b = split(mirrored=True)
        csv_b = Path(args.home) / "train-b.csv"
        csv_b.write_text("image,label\n" + "".join(f"{p.parent.name}/{p.name},{p.parent.name}\n" for p in train_b))
        runs.append(("flowers-sup-b", csv_b, held_b, False))
    for name, labels, _, ssl in runs:
        seconds = 0.0
        collection = "fl"
        if name != "default":
            start = time.monotonic()
            card = lib.train(name, "fl", labels=labels, self_supervised=ssl, force=True)
            seconds = time.monotonic() - start
            collection = f"fl-{name}"
            lib.drop_collection(collection) if collection in [c.name for c in lib.collections()] else None
            lib.index([FLOWERS], collection, model=name)
            print(f"{name}: {card['mode']} {card['loss']} dim {card['dim']}, {card['metrics']['epochs_run']} epochs, "
                  f"validation {card['metrics']['metric']} {card['metrics']['before']:.3f} -> "
                  f"{card['metrics']['after']:.3f}, {seconds:.0f} s", flush=True)
        held_q = split(mirrored=name.endswith("-b"))[1]
        ns = float("nan")
        if not args.no_ukbench:
            uk = f"uk-{name}"
            if uk in [c.name for c in lib.collections()] and name != "default":
                lib.drop_collection(uk)
            if uk not in [c.name for c in lib.collections()]:
                lib.index([UKBENCH], uk, model=None if name == "default" else name)
            ns = ukbench_ns(lib, uk)
        rows.append((name, flowers_map(lib, collection, held_q[::5]), flowers_map(lib, collection, held_q),
                     ns, seconds, lib.info(collection).dim))
        print(rows[-1], flush=True)
    print("\n| model | held-out mAP@10 (50 check queries) | held-out mAP@10 (all 250) | UKBench-1000 N-S | dims "
          "| training time |")
    print("|---|---|---|---|---|---|")
    for name, m50, m250, ns, seconds, dim in rows:
        print(f"| {name} | {m50:.3f} | {m250:.3f} | {ns:.3f} | {dim} | {seconds:.0f} s |")
    lib.close()


if __name__ == "__main__":
    main()
