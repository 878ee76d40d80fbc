"""Search latency of Milvus Lite against the embedded store on the same vectors (docs/stores.md).

    python bench/lite_latency.py                    # 1k and 10k 2304-d vectors, 200 single queries each
    python bench/lite_latency.py --sizes 1000 50000 --queries 100

Vectors are clustered synthetic unit vectors of the default model's width (2304-d). Both stores search
exactly (FLAT / Faiss Flat below 50k rows); each query is one `Store.search` call with k=10, as one
`lookalike search` makes. Prints one markdown table: insert rate, p50 / p99 per query, and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lookalike.store import ImageRecord, open_store


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 4), dim))
    x = (centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(uri: str, folder: Path, vecs: np.ndarray, queries: np.ndarray) -> tuple[float, float, float]:
    store = open_store(folder, uri)
    store.create_collection("b", "synthetic", vecs.shape[1])
    started = time.perf_counter()
    for start in range(0, len(vecs), 1000):
        chunk = vecs[start:start + 1000]
        store.upsert("b", [ImageRecord(path=f"/{start + i}.jpg") for i in range(len(chunk))], chunk)
    store.flush()
    insert_rate = len(vecs) / (time.perf_counter() - started)
    store.search("b", queries[:1], 10)  # warm: loads the index
    times = []
    for q in queries:
        t = time.perf_counter()
        store.search("b", q[None, :], 10)
        times.append(time.perf_counter() - t)
    store.close()
    return insert_rate, float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    print("| vectors | store | insert (vec/s) | p50 / query | p99 / query | p50 ratio |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        vecs = clustered(n, args.dim)
        queries = clustered(args.queries, args.dim, seed=1)
        with tempfile.TemporaryDirectory() as tmp:
            emb = measure("embedded", Path(tmp) / "e", vecs, queries)
            lite = measure(f"milvus:{tmp}/lite.db", Path(tmp) / "m", vecs, queries)
        for name, (rate, p50, p99) in (("embedded (Faiss Flat)", emb), ("Milvus Lite (FLAT)", lite)):
            print(f"| {n} | {name} | {rate:.0f} | {p50 * 1000:.1f} ms | {p99 * 1000:.1f} ms | "
                  f"{p50 / emb[1]:.0f}x |")


if __name__ == "__main__":
    main()
