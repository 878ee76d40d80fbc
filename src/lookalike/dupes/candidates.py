"""Candidate pairs for `dupes`: every picture's nearest neighbours, through an index of its own.

The collection's search index answers one query at a time well; `dupes` asks every picture (and its
90-degree view) at once, and at 100,000 pictures that all-pairs pass through the full-dimension
index was 96% of the grouping time (docs/benchmarks.md). So the candidate stage builds a cheaper
index for itself, from the plain vectors, streamed from the store in chunks:

- below `REDUCE_ABOVE` pictures: the plain vectors as they are, searched exactly;
- from `REDUCE_ABOVE` on: projected onto their top `REDUCED_DIM` principal directions, learned on
  (a sample of) the collection itself. The projection is *uncentred* (eigenvectors of the second
  moment matrix), which keeps inner products: the projected dot product of two unit vectors is their
  cosine minus that of the dropped residuals, measured within +-0.006 (sd) of the full cosine for
  pairs of cosine 0.3-0.8, so the candidate thresholds apply to it unchanged and no full vector is
  read twice. 256 of 2304 dimensions keep 79% of the energy of the default model's vectors;
- from `IVF_ABOVE` on: the reduced vectors in an IVF index (about 4 sqrt(N) lists, `NPROBE` probed),
  trained on a sample; queries go in large batches on every core.

The depth, the dimensions and the probes were chosen by measuring whether copies stay among the
candidates (`bench/copies.py`, `bench/dupes.py`). Memory: the reduced vectors of every picture and
of its views (N x 256 float32 each: 100 MB at 100,000), plus one chunk of full vectors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.linalg

REDUCE_ABOVE = 20_000  # collections at least this large search reduced vectors
REDUCED_DIM = 256  # dimensions kept
PCA_SAMPLE = 20_000  # vectors the projection is learned from
IVF_ABOVE = 50_000  # collections at least this large search an IVF index of the reduced vectors
NPROBE = 8  # inverted lists probed per query (16 -> 8: k-NN 47.0 -> 18.6 s at 100k, planted copies found unchanged)
READ_CHUNK = 4096  # vectors read from the store at once
QUERY_CHUNK = 4096  # queries searched at once (all threads)

VectorsOf = Callable[[list[int]], np.ndarray]  # ids -> their plain vectors, one row each
ProgressFn = Callable[[str, int, int], None]


@dataclass
class CandidateParams:
    """Which pairs are verified: among each picture's `depth` nearest neighbours (of its vector or of
    its view), those with cosine >= `min_cosine`, or >= `near_min_cosine` among the `near_ranks` nearest."""

    depth: int
    min_cosine: float
    near_ranks: int
    near_min_cosine: float
    reduce_above: int = REDUCE_ABOVE
    reduced_dim: int = REDUCED_DIM
    ivf_above: int = IVF_ABOVE
    nprobe: int = NPROBE


def learn_projection(ids: list[int], vectors_of: VectorsOf, dim: int, keep: int, *,
                     sample: int = PCA_SAMPLE, seed: int = 0) -> np.ndarray:
    """(dim, keep) float32: the top `keep` eigenvectors of the second-moment matrix of a seeded sample
    of the rows (uncentred PCA: the best rank-`keep` approximation of their inner products)."""
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(ids, size=min(sample, len(ids)), replace=False).tolist())
    moment = np.zeros((dim, dim), np.float64)
    for start in range(0, len(picked), READ_CHUNK):
        v = np.asarray(vectors_of(picked[start:start + READ_CHUNK]), np.float32)
        moment += (v.T @ v).astype(np.float64)
    _, vecs = scipy.linalg.eigh(moment, subset_by_index=[dim - keep, dim - 1], driver="evr")
    return np.ascontiguousarray(vecs[:, ::-1], dtype=np.float32)


def _index(vectors: np.ndarray, params: CandidateParams) -> faiss.Index:
    n, dim = vectors.shape
    if n < params.ivf_above:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(1)
        index.train(vectors[np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))])
        index.nprobe = min(nlist, params.nprobe)
    index.add(vectors)
    return index


@dataclass
class Candidates:
    """Candidate pairs as arrays: `a` < `b` (ids), `cosine` of the pair; each pair once."""

    a: np.ndarray
    b: np.ndarray
    cosine: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def to_dict(self) -> dict[tuple[int, int], float]:
        return {(int(x), int(y)): float(c) for x, y, c in zip(self.a, self.b, self.cosine, strict=True)}


def candidate_pairs(ids: list[int], vectors_of: VectorsOf, params: CandidateParams, *,
                    views_of: VectorsOf | None = None, progress: ProgressFn | None = None,
                    seconds: dict[str, float] | None = None) -> Candidates:
    """Every candidate pair among `ids` (see `CandidateParams`), each once with its best cosine.
    `views_of(ids)`: more query vectors for those rows (their pictures turned), (rows, dim) or (rows,
    views per row, dim), zeros where there is none; a view's neighbours are candidates too, scored by
    the view's cosine.
    `seconds`, when given, receives the time of each step (projection, read, index, search) and
    the process's CPU time for all of them (`cpu`)."""
    clock = time.perf_counter
    times = seconds if seconds is not None else {}
    cpu0 = time.process_time()
    n = len(ids)
    id_array = np.asarray(ids, np.int64)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return Candidates(empty, empty, np.zeros(0, np.float32))
    t0 = clock()
    dim = np.asarray(vectors_of(ids[:1]), np.float32).shape[1]
    projection = None
    if n >= params.reduce_above and dim > params.reduced_dim:
        projection = learn_projection(ids, vectors_of, dim, params.reduced_dim)
    times["projection"] = clock() - t0
    t0 = clock()
    width = dim if projection is None else projection.shape[1]
    base = np.zeros((n, width), np.float32)
    views: np.ndarray | None = None  # (n, views per row, width)
    has_view: np.ndarray | None = None
    for start in range(0, n, READ_CHUNK):
        chunk = ids[start:start + READ_CHUNK]
        v = np.asarray(vectors_of(chunk), np.float32)
        base[start:start + len(chunk)] = v if projection is None else v @ projection
        if views_of is not None:
            w = np.asarray(views_of(chunk), np.float32)
            w = w[:, None, :] if w.ndim == 2 else w
            if views is None:
                views = np.zeros((n, w.shape[1], width), np.float32)
                has_view = np.zeros((n, w.shape[1]), bool)
            has_view[start:start + len(chunk)] = w.any(axis=2)  # type: ignore[index]
            if projection is not None:  # one 2-D product (a 3-D one runs as many small ones, far slower)
                w = (w.reshape(-1, dim) @ projection).reshape(w.shape[0], w.shape[1], width)
            views[start:start + len(chunk)] = w
        if progress:
            progress("candidates", min(start + READ_CHUNK, n), 2 * n)  # reading: the first half
    times["read"] = clock() - t0
    t0 = clock()
    index = _index(base, params)
    times["index"] = clock() - t0
    t0 = clock()
    k = min(params.depth + 1, n)
    keys, cosines = [], []
    for start in range(0, n, QUERY_CHUNK):
        rows = np.arange(start, min(start + QUERY_CHUNK, n))
        lists = [(base, None)]
        if views is not None and has_view is not None:
            lists += [(views[:, j], has_view[:, j]) for j in range(views.shape[1])]
        for queries, present in lists:
            sel = rows if present is None else rows[present[rows]]
            if len(sel):
                scores, found = index.search(queries[sel], k)
                key, cos = _kept(sel, scores, found, params, n)
                keys.append(key)
                cosines.append(cos)
        if progress:
            progress("candidates", n + int(rows[-1]) + 1, 2 * n)
    key = np.concatenate(keys)
    cos = np.concatenate(cosines)
    order = np.lexsort((-cos, key))  # by pair, best cosine first: keep the first of each pair
    key, cos = key[order], cos[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    key, cos = key[first], cos[first]
    times["search"] = clock() - t0
    times["cpu"] = time.process_time() - cpu0
    return Candidates(id_array[key // n], id_array[key % n], cos)


def _kept(rows: np.ndarray, scores: np.ndarray, found: np.ndarray, params: CandidateParams, n: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """(pair keys lo * n + hi over row positions, cosines) of the neighbours of these query rows that
    pass the thresholds (ranks count the neighbours other than the row itself)."""
    valid = (found >= 0) & (found != rows[:, None])
    rank = np.cumsum(valid, axis=1)
    keep = valid & ((scores >= params.min_cosine)
                    | ((rank <= params.near_ranks) & (scores >= params.near_min_cosine)))
    r, c = np.nonzero(keep)
    a, b = rows[r].astype(np.int64), found[r, c].astype(np.int64)
    return np.minimum(a, b) * n + np.maximum(a, b), scores[r, c].astype(np.float32)
