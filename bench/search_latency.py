"""Single-query search latency on a large collection (embedding excluded), synthetic vectors.

    python bench/search_latency.py [--n 100000] [--dim 2304] [--queries 300]

Fills collections with clustered random unit vectors and times `Library.search_vector` (Faiss search
+ query expansion + catalogue lookup of the hits) for: exact search without refinement (the reference
for recall), the automatic index without refinement, and the automatic index with the default
refinement (DBA at index time + alpha query expansion), whose one-off DBA time and per-image update
cost (one new vector, then `refine.refresh`) are reported too. Prints a markdown table.
"""


from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike import Library, refine
from lookalike.refine import RefineParams
from lookalike.store import ImageRecord, Store


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 50), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def upsert_all(store: Store, name: str, vecs: np.ndarray, prefix: str = "/synthetic") -> None:
    """Store synthetic vectors as rows `<prefix>/<n>.jpg`, 5000 per transaction (as an index run commits)."""
    for i in range(0, len(vecs), 5000):
        chunk = vecs[i:i + 5000]
        store.upsert(name, [ImageRecord(path=f"{prefix}/{i + j}.jpg") for j in range(len(chunk))], chunk)


def fill(lib: Library, name: str, spec: str, vecs: np.ndarray, refined: bool) -> tuple[float, float]:
    """(seconds to store + index the vectors, seconds of the one-off DBA pass)."""
    settings = RefineParams().to_settings() if refined else {}
    lib.store.create_collection(name, "synthetic", vecs.shape[1], index_spec=spec, settings=settings)
    start = time.perf_counter()
    upsert_all(lib.store, name, vecs)
    lib.store.index_for(name)
    lib.store.flush()
    stored = time.perf_counter() - start
    start = time.perf_counter()
    refine.refresh(lib.store, name)
    lib.store.flush()
    return stored, time.perf_counter() - start


def add_one_cost(lib: Library, name: str, vecs: np.ndarray, times: int = 10) -> float:
    """Mean ms to add one vector and bring the refinement up to date (what an upload costs)."""
    spent = []
    for i in range(times):
        t0 = time.perf_counter()
        lib.store.upsert(name, [ImageRecord(path=f"/synthetic/new-{i}.jpg")], vecs[i:i + 1])
        refine.refresh(lib.store, name)
        spent.append((time.perf_counter() - t0) * 1000)
    return float(np.mean(spent))


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
    ap.add_argument("--dim", type=int, default=2304)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    vecs = clustered(args.n, args.dim, 0)
    rng = np.random.default_rng(1)
    queries = vecs[rng.integers(0, args.n, args.queries)] + 0.02 * rng.normal(size=(args.queries, args.dim))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    with tempfile.TemporaryDirectory() as home:
        lib = Library(Path(home))
        rows = []
        exact_found: list[list[str]] = []
        for name, spec, refined in (("exact", "Flat", False), ("auto", "auto", False),
                                    ("auto + DBA + aQE (default)", "auto", True)):
            stored, dba = fill(lib, name.split()[0] + ("-refined" if refined else ""), spec, vecs, refined)
            coll = name.split()[0] + ("-refined" if refined else "")
            times, found = time_queries(lib, coll, queries, args.k)
            if name == "exact":
                exact_found = found
            recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, exact_found, strict=True)])
            add_ms = add_one_cost(lib, coll, clustered(10, args.dim, 2)) if refined else float("nan")
            rows.append((name, lib.info(coll).index_type, stored, dba if refined else float("nan"), add_ms,
                         np.percentile(times, 50), np.percentile(times, 99), recall))
        lib.close()
    print(f"{args.n} vectors of {args.dim} dims, {args.queries} single queries, k={args.k}")
    print("| collection | index | store+index s | DBA pass s | add one image ms | p50 ms | p99 ms "
          "| recall@10 vs exact plain |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kind, stored, dba, add_ms, p50, p99, recall in rows:
        shown = f"{recall:.3f}" if "DBA" not in name else "n/a (refined ranking)"
        print(f"| {name} | {kind} | {stored:.1f} | {dba:.1f} | {add_ms:.1f} | {p50:.2f} | {p99:.2f} | {shown} |")

if __name__ == "__main__":
    main()
