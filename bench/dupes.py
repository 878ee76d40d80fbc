"""Grouping cost of `lookalike dupes` at scale, and the verification cost per candidate pair.

    python bench/dupes.py [--n 100000] [--dim 2304]     # grouping time per stage, then verification cost
    python bench/dupes.py --skip-grouping --pairs 300     # real photos only: verification ms per pair

1. Grouping (embedding and verification excluded): a collection of `--n` clustered unit vectors (as in
   bench/search_latency.py) in the embedded store, each with a "90-degree view" vector (another
   clustered draw, far from it, as real views are) in the views cache `Library.dupes` reads
   (dupes/cache.py); 1% of rows share another row's content hash (exact duplicates) and 2% are
   near-copies of another row: half of its vector, half of its view (a copy turned sideways, found
   only through the view). `find_groups` runs its whole pipeline (content-hash pass; candidates:
   projection learned, vectors and views streamed from the store and the cache, the candidate index
   built, k-NN of every vector and view (candidates.py); union-find, groups), with the verifier
   replaced by a constant-time stand-in (cosine >= 0.9 is a copy) and no picture loaded. Prints the
   time per stage, the share of planted near-copies among the candidates, and the peak memory.
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
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lookalike.dupes import candidates as C
from lookalike.dupes import groups as G
from lookalike.dupes import verify
from lookalike.dupes.cache import TURNS, TurnedVectors
from lookalike.store import ImageRecord, open_store

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def embedding_like(n: int, dim: int, seed: int, alpha: float = 1.1) -> np.ndarray:
    """Clustered unit vectors (as bench/search_latency.py's) with the decaying spectrum of real embeddings:
    variance i^-alpha along axis i; alpha 1.1 puts 71% / 79% / 86% of the energy in the top 128 / 256 / 512
    dimensions (the default model's vectors of the shared sets: 69% / 79% / 89%). Made in chunks."""
    rng = np.random.default_rng(seed)
    scale = (np.arange(1, dim + 1, dtype=np.float32) ** (-alpha / 2)).astype(np.float32)
    centres = rng.standard_normal((max(1, n // 50), dim), dtype=np.float32) * scale
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 10_000):
        m = min(n, start + 10_000) - start
        x = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, dim), dtype=np.float32) * scale
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def grouping(n: int, dim: int, depth: int, views: bool) -> float:
    rng = np.random.default_rng(3)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    for i in rng.choice(n, n // 100, replace=False):
        hashes[i] = hashes[(i + 1) % n]
    vecs = embedding_like(n, dim, 0)
    # near-copies of rows that are not copies themselves: half as they are, half turned by 90 degrees
    order = rng.permutation(n)
    planted, sources = order[:n // 50], order[n // 50:n // 25]
    sideways = np.arange(len(planted)) % 2 == 1 if views else np.zeros(len(planted), bool)
    noise = (0.3 / np.sqrt(dim)) * rng.standard_normal((len(planted), dim), dtype=np.float32)  # cosine ~0.95
    with tempfile.TemporaryDirectory() as home:
        t0 = time.perf_counter()
        cache = TurnedVectors.of_library(home)
        keys = [("synthetic" if degrees == 90 else f"synthetic@{degrees}") for degrees, _ in TURNS] if views else []
        for seed, key in enumerate(keys, 1):  # each picture's views: far from its vector, as real ones are
            turned = embedding_like(n, dim, seed)
            if seed == 1:
                vecs[planted[sideways]] = turned[sources[sideways]]
            for i in range(0, n, 5000):
                cache.put(key, {hashes[j]: turned[j] for j in range(i, min(n, i + 5000))})
            del turned
        vecs[planted[~sideways]] = vecs[sources[~sideways]]
        vecs[planted] += noise
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store = open_store(Path(home))
        store.create_collection("b", "synthetic", dim)
        for i in range(0, n, 5000):
            store.upsert("b", [ImageRecord(path=f"/synthetic/{j}.jpg", content_hash=hashes[j])
                               for j in range(i, min(n, i + 5000))], vecs[i:i + 5000])
        store.flush()
        fill_s = time.perf_counter() - t0
        ids_in_order = sorted(store.find_ids("b"))
        pos_of = {r.id: int(r.path.rsplit("/", 1)[1][:-4]) for r in store.get("b", ids_in_order)}
        del vecs
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        def extra_views(ids: list[int]) -> np.ndarray:  # Library._turned_views, minus the embedding
            hs = [r.content_hash for r in store.get("b", ids)]
            out = np.zeros((len(ids), len(keys), dim), np.float32)
            for col, key in enumerate(keys):
                known = cache.get(key, hs)
                for row, h in enumerate(hs):
                    if h in known:
                        out[row, col] = known[h]
            return out

        sentinel = object()
        real_extract = G.verify.extract
        G.verify.extract = lambda image: sentinel  # type: ignore[assignment]

        def stand_in(fa: object, fb: object, cos: float) -> verify.Comparison:
            ok = cos >= 0.9
            return verify.Comparison(score=cos if ok else 0.0, verdict="duplicate" if ok else "different",
                                     check="stand-in", cosine=cos)

        found: set[tuple[int, int]] = set()
        real_pairs = G.candidate_pairs

        def keep_pairs(*a, **kw):  # noqa: ANN002, ANN003, ANN202 - records the candidates for the recall
            c = real_pairs(*a, **kw)
            found.update(zip((pos_of[int(x)] for x in c.a), (pos_of[int(y)] for y in c.b), strict=True))
            return c

        G.candidate_pairs = keep_pairs
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            report = G.find_groups(store, "b", lambda r: sentinel, depth=depth, compare_fn=stand_in,  # type: ignore
                                   extra_views=extra_views if views else None)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            G.verify.extract = real_extract
            G.candidate_pairs = real_pairs
        cache.close()
        store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = report.seconds
    hits = [(min(int(a), int(b)), max(int(a), int(b))) in found for a, b in zip(planted, sources, strict=True)]
    hits_arr = np.array(hits)
    print(f"{n} vectors x {dim} dims, stored in {fill_s:.0f} s; "
          f"depth {depth}, turned views: {len(keys)} per picture; candidate index: "
          f"{f'PCA-{C.REDUCED_DIM}' if n >= C.REDUCE_ABOVE else 'full vectors'}, "
          f"{f'IVF, nprobe {C.NPROBE}' if n >= C.IVF_ABOVE else 'exact'}")
    print("| stage | seconds |")
    print("|---|---|")
    for k, label in (("exact", "exact duplicates (content hashes)"),
                     ("candidates.projection", "candidates: learn the projection"),
                     ("candidates.read", "candidates: read + project vectors and views"),
                     ("candidates.index", "candidates: build the index"),
                     ("candidates.search", "candidates: k-NN of every vector and view, pairs"),
                     ("verify", "verification loop (stand-in verifier)"), ("group", "union-find + groups")):
        print(f"| {label} | {s.get(k, 0):.1f} |")
    print(f"| total, the stand-in verification loop included | {total:.1f} |")
    print(f"| **total (embedding and verification excluded)** | **{total - s.get('verify', 0):.1f}** |")
    print(f"\nCPU time of the process for the grouping: {cpu:.1f} s, of which the candidates "
          f"{s.get('candidates.cpu', 0):.1f} s (all threads; load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    turned_share = hits_arr[sideways].mean() if sideways.any() else 0.0
    print(f"planted near-copies among the candidates: {hits_arr.mean():.4f} ({hits_arr.sum()} of {len(hits)}; "
          f"as they are {hits_arr[~sideways].mean():.4f}, turned {turned_share:.4f})")
    print(f"\n{report.candidate_pairs} candidate pairs, {report.verified_pairs} checked by the stand-in, "
          f"{report.exact_pairs} exact pairs, {len(report.groups)} groups; peak RSS {peak:.0f} MiB "
          f"(after filling the store: {rss_before:.0f} MiB)")
    return report.candidate_pairs / n


def verification(n_pairs: int) -> tuple[float, float]:
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
    return extract_ms, pair_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2304)
    ap.add_argument("--depth", type=int, default=G.DEPTH)
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--skip-grouping", action="store_true")
    ap.add_argument("--no-views", action="store_true", help="search without the 90-degree views")
    args = ap.parse_args()
    per_picture = None
    if not args.skip_grouping:
        per_picture = grouping(args.n, args.dim, args.depth, not args.no_views)
    if args.pairs:
        extract_ms, pair_ms = verification(args.pairs)
        if per_picture is not None:
            print(f"so verifying these {args.n} pictures' candidates would cost about {args.n} x {extract_ms:.0f} ms + "
                  f"{per_picture * args.n:.0f} pairs x {pair_ms:.1f} ms = "
                  f"{(args.n * extract_ms + per_picture * args.n * pair_ms) / 1000 / 3600:.1f} CPU hours "
                  "(real collections have fewer pairs per picture than these dense synthetic clusters: 9-23 "
                  "in bench/copies.py)")


if __name__ == "__main__":
    main()
