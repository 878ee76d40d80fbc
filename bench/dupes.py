"""Grouping cost of `lookalike dupes` at scale, and the verification cost per candidate pair.

    python bench/dupes.py [--n 100000] [--dim 2304]     # synthetic vectors: grouping time
    python bench/dupes.py --pairs 300                     # real photos: verification ms per pair

1. Grouping (embedding and verification excluded): a collection of `--n` clustered unit vectors (as in
   bench/search_latency.py) in the embedded store with its automatic index (IVF above 50k), 1% of
   rows sharing another row's content hash (exact duplicates) and 2% near-copies of another row's
   vector. `find_groups` runs its whole pipeline (content-hash pass, k-NN candidates through
   `Store.search` in chunks, plain-cosine re-scoring, union-find, groups), with the verifier replaced
   by a constant-time stand-in (cosine >= 0.9 is a copy) and no picture loaded. Prints the time per
   stage and the peak memory of the process.
2. Verification: `--pairs` (copy, original) and same-object pairs of UKBench photos; the time to
   extract one picture's features (SIFT, once per picture and cached) and to verify one pair from
   cached features, on one core.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_latency import clustered  # noqa: E402

from lookalike.dupes import find_groups, verify  # noqa: E402
from lookalike.dupes import groups as G  # noqa: E402
from lookalike.store import ImageRecord, open_store  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def grouping(n: int, dim: int, depth: int) -> None:
    rng = np.random.default_rng(3)
    vecs = clustered(n, dim, 0)
    copies = rng.choice(n, n // 50, replace=False)
    sources = rng.integers(0, n, len(copies))
    vecs[copies] = vecs[sources] + 0.02 * rng.normal(size=(len(copies), dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    for i in rng.choice(n, n // 100, replace=False):
        hashes[i] = hashes[(i + 1) % n]
    with tempfile.TemporaryDirectory() as home:
        store = open_store(Path(home))
        store.create_collection("b", "synthetic", dim)
        t0 = time.perf_counter()
        for i in range(0, n, 5000):
            store.upsert("b", [ImageRecord(path=f"/synthetic/{j}.jpg", content_hash=hashes[j])
                               for j in range(i, min(n, i + 5000))], vecs[i:i + 5000])
        store.index_for("b")
        store.flush()
        fill_s = time.perf_counter() - t0
        del vecs
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        sentinel = object()
        real_extract = G.verify.extract
        G.verify.extract = lambda image: sentinel  # type: ignore[assignment]

        def stand_in(fa: object, fb: object, cos: float) -> verify.Comparison:
            ok = cos >= 0.9
            return verify.Comparison(score=cos if ok else 0.0, verdict="duplicate" if ok else "different",
                                     check="stand-in", cosine=cos)

        try:
            t0, c0 = time.perf_counter(), time.process_time()
            report = find_groups(store, "b", lambda r: sentinel, depth=depth, compare_fn=stand_in)  # type: ignore
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            G.verify.extract = real_extract
        info = store.collection("b")
        store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = report.seconds
    print(f"{n} vectors x {dim} dims ({info.index_type}), stored in {fill_s:.0f} s; depth {depth}")
    print("| stage | seconds |")
    print("|---|---|")
    for k in ("exact", "candidates", "verify", "group"):
        print(f"| {k} | {s.get(k, 0):.1f} |")
    print(f"| **total (embedding and verification excluded)** | **{total:.1f}** |")
    print(f"\nCPU time of the process for the grouping: {cpu:.1f} s (all threads; load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"\n{report.candidate_pairs} candidate pairs, {report.verified_pairs} checked by the stand-in, "
          f"{report.exact_pairs} exact pairs, {len(report.groups)} groups; peak RSS {peak:.0f} MiB "
          f"(after filling the store: {rss_before:.0f} MiB)")


def verification(n_pairs: int) -> None:
    files = sorted((DATASETS / "ukbench_first1000").glob("ukbench*.jpg"))
    r = random.Random(5)
    pairs = []
    for _ in range(n_pairs // 2):
        a = r.choice(files)
        im = Image.open(a).convert("RGB")
        w, h = im.size
        crop = im.crop((w // 10, h // 10, w - w // 8, h - h // 9)).resize((w // 2, h // 2)).rotate(90, expand=True)
        pairs.append((im, crop))
        g = files.index(a) // 4 * 4
        pairs.append((im, Image.open(files[g + (files.index(a) - g + 1) % 4]).convert("RGB")))
    t0 = time.process_time()  # CPU time: the figure does not depend on what else runs on the machine
    feats = [(verify.extract(a), verify.extract(b)) for a, b in pairs]
    extract_ms = 1000 * (time.process_time() - t0) / (2 * len(pairs))
    t0 = time.process_time()
    out = [verify.compare_features(a, b) for a, b in feats]
    pair_ms = 1000 * (time.process_time() - t0) / len(pairs)
    copies = np.mean([c.is_copy for c in out[0::2]])
    others = np.mean([c.is_copy for c in out[1::2]])
    print(f"\nverification on {len(pairs)} UKBench pairs (half copies: crop + half size + 90-degree turn; half "
          f"another photo of the object): {extract_ms:.1f} ms of CPU per picture to extract features (once, cached), "
          f"{pair_ms:.1f} ms of CPU per pair from cached features; copies verified {copies:.0%}, other photos "
          f"called copies {others:.0%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2304)
    ap.add_argument("--depth", type=int, default=G.DEPTH)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--skip-grouping", action="store_true")
    args = ap.parse_args()
    if not args.skip_grouping:
        grouping(args.n, args.dim, args.depth)
    if args.pairs:
        verification(args.pairs)


if __name__ == "__main__":
    main()
