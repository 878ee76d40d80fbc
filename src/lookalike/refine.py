"""Refine: neighbourhood smoothing that makes plain cosine search clearly better, with no labels.

Two steps, both measured in docs/benchmarks.md ("Retrieval quality"):
  * database-side augmentation (DBA), at index time: every stored vector x_i is replaced, for search
    only, by d_i = norm(sum_j max(cos(x_i, x_j), 0)^p * x_j) over its k nearest stored vectors
    (itself included). Pictures of the same thing pull together; outliers stay put.
  * alpha query expansion (aQE), at query time: q' = norm(q + sum_j max(q.d_j, 0)^alpha * d_j) over
    the query's top `qe_k` hits, then the final ranking is by q'.d.

DBA is incremental: each row keeps its neighbour list in the store, so adding a picture recomputes only
the new rows and the stored rows it enters the top-k of, and removing one recomputes only the rows
that listed it (the store returns those to "pending"). Nothing is rebuilt wholesale.

When many rows are pending at once (a first `index`, `collections refine`), one pass over all vectors
in memory replaces the per-row index searches: candidates from a PCA-256 projection, then exact
re-scoring with the full vectors (`_refresh_bulk`; bench/dba_pass.py times both paths).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from .embed.base import l2_normalise
from .errors import LookalikeError, StaleWrite
from .store import CollectionInfo, Filter, Store

CANDIDATES = 32  # neighbours fetched from the index per pending row before exact re-scoring
CHUNK = 1024  # pending rows refined per store transaction
BULK_MIN = 2000  # pending rows from which one in-memory pass over all vectors beats per-row searches...
BULK_MIN_FRACTION = 0.2  # ...if they are also this share of the collection (else the pass costs more)...
BULK_MAX_BYTES = 1 << 30  # ...and the plain vectors fit in this much memory (the pass peaks near 4x it)
EXACT_ALL_PAIRS = 4000  # up to this many rows, candidates come from exact all-pairs products
APPROXIMATE_ABOVE = 50_000  # above this many rows, candidates come from an inverted file (see _candidates)
CANDIDATE_RECALL = 0.995  # share of sampled rows whose true top-k a projection must keep among its candidates
PROJECTED_CANDIDATES = 64  # candidates per row from the projection (more than from the index: it is coarser)


@dataclass(frozen=True)
class RefineParams:
    dba_k: int = 4
    dba_power: float = 3.0
    qe_k: int = 5
    qe_alpha: float = 3.0

    @classmethod
    def of(cls, info: CollectionInfo) -> RefineParams:
        """A collection's parameters; collections made before refinement existed have none (all off)."""
        return cls.from_settings(info.metric, info.settings)

    @classmethod
    def from_settings(cls, metric: str, settings: dict[str, Any]) -> RefineParams:
        raw = settings.get("refine") if metric == "cosine" else None
        if not isinstance(raw, dict):
            return cls(dba_k=0, qe_k=0)
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in raw.items() if k in cls.__dataclass_fields__})

    def to_settings(self) -> dict[str, Any]:
        return {"refine": asdict(self)}


def _augment(neighbour_vectors: np.ndarray, cosines: np.ndarray, power: float) -> np.ndarray:
    return l2_normalise((np.clip(cosines, 0.0, None) ** power) @ neighbour_vectors)


def refresh(store: Store, collection: str, *, progress: Callable[[int, int], None] | None = None) -> int:
    """Compute augmented vectors for every pending row (and the stored rows they join the top-k of).

    All neighbour searches run first, against one state of the index, and the writes follow in
    chunks: an index that can't update in place (HNSW) is then rebuilt once, not once per chunk. If
    another process writes to the collection meanwhile, the work is redone from its new state."""
    for _attempt in range(5):
        try:
            return _refresh_once(store, collection, progress)
        except StaleWrite:
            continue
    return 0  # rows stay pending (searched by their plain vectors) until the next refresh


def _refresh_once(store: Store, collection: str, progress: Callable[[int, int], None] | None) -> int:
    generation = store.generation(collection)
    params = RefineParams.from_settings(*store.collection_settings(collection))
    if params.dba_k <= 0:
        return 0
    pending = store.pending(collection)
    if not pending:
        return 0
    count = store.count(collection)
    if len(pending) >= max(BULK_MIN, BULK_MIN_FRACTION * count):
        try:
            fits = count * store.vectors(collection, pending[:1]).shape[1] * 4 <= BULK_MAX_BYTES
        except LookalikeError:  # removed meanwhile by another writer: the write below will notice
            fits = False
        if fits:
            return _refresh_bulk(store, collection, params, generation, set(pending), progress)
    k = params.dba_k
    still_pending = set(pending)
    depth = min(max(CANDIDATES, 2 * k), count)
    lists: dict[int, list[tuple[int, float]]] = {}
    joins: dict[int, list[tuple[int, float]]] = {}  # stored row -> pending rows that may enter its top-k
    for start in range(0, len(pending), CHUNK):
        chunk = pending[start:start + CHUNK]
        raw = store.vectors(collection, chunk)
        _, cand = store.search(collection, raw, depth)
        cand_ids = sorted({int(i) for i in cand.ravel() if i >= 0} | set(chunk))
        position = {i: n for n, i in enumerate(cand_ids)}
        cand_vectors = store.vectors(collection, cand_ids)
        for row, image_id in enumerate(chunk):
            ids = sorted({int(i) for i in cand[row] if i >= 0} | {image_id})
            sims = cand_vectors[[position[i] for i in ids]] @ raw[row]
            pairs = sorted(zip(ids, sims.tolist(), strict=True), key=lambda p: (p[0] != image_id, -p[1]))
            lists[image_id] = pairs[:k]
            for other, cos in pairs:
                if other not in still_pending:
                    joins.setdefault(other, []).append((image_id, cos))
        if progress:
            progress(min(start + CHUNK, len(pending)), len(pending))
    if joins:
        current = store.neighbour_lists(collection, list(joins))
        for other, offers in joins.items():
            merged = _merge_offers(other, current.get(other), offers, k)
            if merged is not None:
                lists[other] = merged
    # stored rows first: if another writer interrupts, the pending rows not yet written are still
    # pending on the retry, and recompute what they offer to stored rows (written rows already did)
    targets = sorted(lists, key=lambda t: t in still_pending)
    for start in range(0, len(targets), CHUNK):
        chunk = targets[start:start + CHUNK]
        needed = sorted({n for t in chunk for n, _ in lists[t]})
        vectors = dict(zip(needed, store.vectors(collection, needed), strict=True))
        augmented = np.stack([
            _augment(np.stack([vectors[n] for n, _ in lists[t]]),
                     np.asarray([c for _, c in lists[t]], dtype=np.float32), params.dba_power)
            for t in chunk])
        generation = store.set_augmented(collection, chunk, augmented, [lists[t] for t in chunk],
                                         if_generation=generation)
    return len(pending)


def _merge_offers(image_id: int, old: list[tuple[int, float]] | None, offers: list[tuple[int, float]],
                  k: int) -> list[tuple[int, float]] | None:
    """A stored row's new top-k (itself first) once pending rows offer themselves, or None if unchanged.

    Only offers that beat the row's k-th neighbour count; a row with no stored list (None) is pending
    in another writer's view and will be refreshed there."""
    if old is None:
        return None
    kth = old[-1][1] if len(old) >= k else -np.inf
    listed = {i for i, _ in old}
    better = [(i, c) for i, c in offers if c > kth and i not in listed]
    if not better:
        return None
    return sorted(old + better, key=lambda p: (p[0] != image_id, -p[1]))[:k]


def _refresh_bulk(store: Store, collection: str, params: RefineParams, generation: int, pending: set[int],
                  progress: Callable[[int, int], None] | None) -> int:
    """The per-row path's result for many pending rows, from one read of all plain vectors.

    Pending rows get their top-k (themselves first) in numpy. A stored row's list changes only where a
    pending row beats its k-th neighbour, as in the per-row path; the offers come from the pending
    rows' candidates (as there) and from the stored row's own, so none of the per-row path's is missed.
    """
    ids, raw = store.all_vectors(collection)
    n = len(ids)
    k = min(params.dba_k, n)
    candidates = _candidates(raw, k, progress)
    if candidates is None:  # the store's own index, as the per-row path uses (its ids are sorted: rows by search)
        depth = min(max(CANDIDATES, 2 * k), n)
        candidates = np.empty((n, depth), dtype=np.int64)
        for start in range(0, n, CHUNK):
            _, found = store.search(collection, raw[start:start + CHUNK], depth)
            rows = np.searchsorted(ids, found)
            candidates[start:start + CHUNK] = np.where(found >= 0, rows.clip(0, n - 1), -1)
            if progress:
                progress(min(start + CHUNK, n), n)
    is_pending = np.isin(ids, np.fromiter(pending, dtype=np.int64, count=len(pending)))
    neighbours = np.empty((n, k), dtype=np.int64)  # row numbers, the row itself first
    cosines = np.empty((n, k), dtype=np.float32)
    offers: dict[int, dict[int, float]] = {}  # stored row -> {pending row: cosine}
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(start + CHUNK, n))
        cand = candidates[rows]
        usable = (cand >= 0) & (cand != rows[:, None])  # -1: fewer hits than asked; self is added below
        cand = np.where(cand >= 0, cand, rows[:, None])
        sims = np.where(usable, (raw[cand] @ raw[rows][:, :, None])[:, :, 0], -np.inf)
        # pending row -> stored candidate, and stored row -> pending candidate: both are offers
        pair = usable & (is_pending[rows][:, None] != is_pending[cand])
        for i, j in zip(*np.nonzero(pair), strict=True):
            a, b, cos = int(rows[i]), int(cand[i, j]), float(sims[i, j])
            stored, new = (b, a) if is_pending[a] else (a, b)
            offers.setdefault(stored, {})[new] = cos
        cand = np.concatenate([rows[:, None], cand], axis=1)
        sims = np.concatenate([np.full((len(rows), 1), np.inf, np.float32), sims], axis=1)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        neighbours[rows] = np.take_along_axis(cand, order, axis=1)
        cosines[rows] = np.take_along_axis(sims, order, axis=1)
        cosines[rows, 0] = 1.0
    current = store.neighbour_lists(collection, [int(ids[r]) for r in offers])
    changed: dict[int, list[tuple[int, float]]] = {}
    for row, offered in offers.items():
        image_id = int(ids[row])
        merged = _merge_offers(image_id, current.get(image_id), [(int(ids[r]), c) for r, c in offered.items()], k)
        if merged is not None:
            changed[image_id] = merged
    # stored rows first: if another writer interrupts, the pending rows not yet written are still
    # pending on the retry, and recompute what they offer to stored rows
    position = {int(i): row for row, i in enumerate(ids.tolist())}
    targets = list(changed)
    for start in range(0, len(targets), CHUNK):
        chunk = targets[start:start + CHUNK]
        augmented = np.stack([
            _augment(raw[[position[i] for i, _ in changed[t]]],
                     np.asarray([c for _, c in changed[t]], dtype=np.float32), params.dba_power)
            for t in chunk])
        generation = store.set_augmented(collection, chunk, augmented, [changed[t] for t in chunk],
                                         if_generation=generation)
    pending_rows = np.flatnonzero(is_pending)
    weights = np.clip(cosines, 0.0, None) ** params.dba_power
    weights[~np.isfinite(cosines)] = 0.0  # (a row with fewer than k neighbours)
    for start in range(0, len(pending_rows), CHUNK):
        rows = pending_rows[start:start + CHUNK]
        augmented = l2_normalise(np.einsum("nk,nkd->nd", weights[rows], raw[neighbours[rows]]))
        lists = [[(int(ids[j]), float(c)) for j, c in zip(neighbours[r], cosines[r], strict=True) if np.isfinite(c)]
                 for r in rows.tolist()]
        generation = store.set_augmented(collection, ids[rows].tolist(), augmented, lists,
                                         if_generation=generation)
    return len(pending)


def _candidates(raw: np.ndarray, k: int, progress: Callable[[int, int], None] | None) -> np.ndarray | None:
    """(N, depth) row numbers of each row's likely nearest neighbours, for exact re-scoring; None when
    a cheap projection would miss neighbours on these vectors (the caller then uses the store's index).

    Exact up to EXACT_ALL_PAIRS rows. Above, the rows are projected to 256-d by PCA and compared by L2,
    which for unit vectors ranks as cosine does and which PCA's centring leaves intact: 9x less work
    than the full vectors (above APPROXIMATE_ABOVE rows, where the store's index is approximate too,
    through an inverted file), re-scored from PROJECTED_CANDIDATES per row. Image embeddings keep their
    neighbours under such a projection (every true top-4 on both shared sets), but vectors of high
    intrinsic dimension need not, so the result is checked against exact search on 400 sampled rows
    and refused if fewer than CANDIDATE_RECALL of them keep their whole true top-k."""
    n, dim = raw.shape
    depth = min(max(CANDIDATES if n <= EXACT_ALL_PAIRS else PROJECTED_CANDIDATES, 2 * k), n)
    out = np.empty((n, depth), dtype=np.int64)
    if n <= EXACT_ALL_PAIRS:
        for start in range(0, n, CHUNK):
            sims = raw[start:start + CHUNK] @ raw.T
            if depth < n:
                out[start:start + CHUNK] = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
            else:
                out[start:start + CHUNK] = np.arange(n)
            if progress:
                progress(min(start + CHUNK, n), n)
        return out
    reduced = min(256, dim)
    rng = np.random.default_rng(0)
    sample = raw[rng.choice(n, min(n, 20 * reduced), replace=False)]
    mean = sample.mean(axis=0)
    # PCA by numpy's eigh of the sample covariance: 10x faster than faiss.PCAMatrix at 2304 dims
    _, eigenvectors = np.linalg.eigh((sample - mean).T @ (sample - mean))
    projection = np.ascontiguousarray(eigenvectors[:, -reduced:], dtype=np.float32)
    low = np.empty((n, reduced), dtype=np.float32)
    for start in range(0, n, CHUNK * 8):
        low[start:start + CHUNK * 8] = (raw[start:start + CHUNK * 8] - mean) @ projection
    quantizer = faiss.IndexFlatL2(reduced)  # held here: an inverted file only borrows it
    if n <= APPROXIMATE_ABOVE:
        index = quantizer
    else:
        nlist = int(min(2 ** round(np.log2(4 * np.sqrt(n))), 2 ** int(np.log2(n // 39))))  # >= 39 rows per list
        index = faiss.IndexIVFFlat(quantizer, reduced, nlist, faiss.METRIC_L2)
        index.train(low[rng.choice(n, min(n, 39 * nlist), replace=False)])
        index.nprobe = max(8, nlist // 32)  # the store's own index probes as many
    index.add(low)
    probe = rng.choice(n, min(n, 400), replace=False)
    truth = np.argpartition(-(raw[probe] @ raw.T), k - 1, axis=1)[:, :k]
    _, found = index.search(low[probe], depth)
    kept = np.mean([set(t.tolist()) <= set(f.tolist()) | {int(r)} for t, f, r in zip(truth, found, probe, strict=True)])
    if kept < CANDIDATE_RECALL:
        return None
    step = CHUNK * 8
    for start in range(0, n, step):
        _, found = index.search(low[start:start + step], depth)
        out[start:start + step] = found
        if progress:
            progress(min(start + step, n), n)
    return out


def rebuild(store: Store, collection: str, params: RefineParams | None) -> int:
    """Change a collection's refinement settings (None: off) and recompute every augmented vector."""
    info = store.collection(collection)
    settings = {k: v for k, v in info.settings.items() if k != "refine"}
    if params is not None:
        settings.update(params.to_settings())
    store.set_collection_settings(collection, settings)
    store.clear_augmented(collection)
    return refresh(store, collection)


def expand_query(store: Store, collection: str, query: np.ndarray, params: RefineParams,
                 flt: Filter | None = None) -> np.ndarray:
    """Alpha query expansion over the query's top `qe_k` hits in the (augmented) index."""
    if params.qe_k <= 0:
        return query
    scores, ids = store.search(collection, query[None, :], params.qe_k, flt)
    keep = ids[0] >= 0
    if not keep.any():
        return query
    vectors = store.index_vectors(collection, [int(i) for i in ids[0][keep]])
    weights = np.clip(scores[0][keep], 0.0, None) ** params.qe_alpha
    return l2_normalise(query + weights @ vectors)
