"""Single-query search latency on a large collection (embedding excluded), synthetic vectors.

    python bench/search_latency.py [--n 100000] [--dim 1280] [--queries 300]

Fills a collection with clustered random unit vectors, then times `Library.search_vector` (Faiss
search + catalogue lookup of the hits), for the automatic index choice (HNSW above 50k) and for exact
search, and reports recall@10 of the approximate index against the exact one. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike import Library
from lookalike.store import ImageRecord


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 50), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(lib: Library, name: str, spec: str, vecs: np.ndarray) -> float:
    lib.store.create_collection(name, "synthetic", vecs.shape[1], index_spec=spec)
    start = time.perf_counter()
    for i in range(0, len(vecs), 5000):
        chunk = vecs[i:i + 5000]
        lib.store.upsert(name, [ImageRecord(path=f"/synthetic/{i + j}.jpg") for j in range(len(chunk))], chunk)
    lib.store.flush()
    return time.perf_counter() - start


def time_queries(lib: Library, name: str, queries: np.ndarray, k: int) -> tuple[list[float], list[list[str]]]:
    lib.search_vector(queries[0], k=k, collection=name)  # load the index
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = lib.search_vector(q, k=k, collection=name)
        times.append((time.perf_counter() - t0) * 1000)
        found.append([h.path for h in hits])
    return times, found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    vecs = clustered(args.n, args.dim, 0)
    queries = clustered(args.queries, args.dim, 1)
    with tempfile.TemporaryDirectory() as home:
        lib = Library(Path(home))
        rows = []
        exact_found: list[list[str]] = []
        for name, spec in (("exact", "Flat"), ("auto", "auto")):
            build = fill(lib, name, spec, vecs)
            times, found = time_queries(lib, name, queries, args.k)
            if name == "exact":
                exact_found = found
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, exact_found, strict=True)])
            rows.append((name, lib.info(name).index_type, build, np.percentile(times, 50),
                         np.percentile(times, 99), recall))
        lib.close()
    print(f"{args.n} vectors of {args.dim} dims, {args.queries} single queries, k={args.k}")
    print("| index | type | build s | p50 ms | p99 ms | recall@10 vs exact |")
    print("|---|---|---|---|---|---|")
    for name, kind, build, p50, p99, recall in rows:
        print(f"| {name} | {kind} | {build:.1f} | {p50:.2f} | {p99:.2f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
