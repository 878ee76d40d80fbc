"""The one-off DBA pass over a whole collection (first `index`, `collections refine`): per-row against bulk.

    python bench/dba_pass.py [--n 100000] [--dim 2304]

Two kinds of synthetic unit vectors, clustered in groups of about 50 as in search_latency.py:
- "image-like": the groups spread in a 128-d subspace plus a little full-dimensional noise, so PCA
  keeps the neighbourhoods, as it does for the shared photo sets' embeddings (tests/test_refine.py);
- "high-rank": groups around unrelated random directions of the full space, where a 256-d projection
  loses neighbours and the bulk pass must fall back to the store's index for its candidates.
For each kind and path, a fresh collection is filled and `refine.refresh` timed; the two paths'
augmented vectors are compared row by row. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from search_latency import clustered, upsert_all  # bench/ is on sys.path when a bench script runs

from lookalike import refine
from lookalike.refine import RefineParams
from lookalike.store import EmbeddedStore


def image_like(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, 128)))[0].T.astype(np.float32)  # 128 orthonormal rows
    centres = rng.normal(size=(max(1, n // 50), 128)).astype(np.float32)
    low = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, 128)).astype(np.float32)
    x = low @ basis + 0.05 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dba_pass(home: Path, vecs: np.ndarray, bulk: bool) -> tuple[float, np.ndarray]:
    refine.BULK_MIN = 2000 if bulk else 10**12
    store = EmbeddedStore(home)
    store.create_collection("c", "synthetic", vecs.shape[1], settings=RefineParams().to_settings())
    upsert_all(store, "c", vecs, prefix="/s")
    store.flush()
    start = time.perf_counter()
    refine.refresh(store, "c")
    seconds = time.perf_counter() - start
    _, augmented = store.all_vectors("c", augmented=True)
    store.close()
    return seconds, augmented


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=2304)
    args = parser.parse_args()
    print(f"{args.n} vectors of {args.dim}-d, DBA k=4\n")
    print("| vectors | per-row s | bulk s | speed-up | rows equal (cos > 1-1e-5) |")
    print("|---|---|---|---|---|")
    for name, make in (("image-like", image_like), ("high-rank", clustered)):
        vecs = make(args.n, args.dim, 0)
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            slow, per_row = dba_pass(Path(a), vecs, bulk=False)
            fast, bulk = dba_pass(Path(b), vecs, bulk=True)
        equal = float((np.einsum("ij,ij->i", per_row, bulk) > 1 - 1e-5).mean())
        print(f"| {name} | {slow:.1f} | {fast:.1f} | {slow / fast:.1f}x | {equal:.4f} |", flush=True)


if __name__ == "__main__":
    main()
