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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .embed.base import l2_normalise
from .errors import StaleWrite
from .store import CollectionInfo, Filter, Store

CANDIDATES = 32  # neighbours fetched from the index per pending row before exact re-scoring
CHUNK = 1024  # pending rows refined per store transaction


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
    k = params.dba_k
    still_pending = set(pending)
    depth = min(max(CANDIDATES, 2 * k), store.count(collection))
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
            old = current.get(other)
            if old is None:
                continue  # pending in another writer's view; it will be refreshed there
            kth = old[-1][1] if len(old) >= k else -np.inf
            listed = {n for n, _ in old}
            better = [(i, c) for i, c in offers if c > kth and i not in listed]
            if better:
                lists[other] = sorted(old + better, key=lambda p: (p[0] != other, -p[1]))[:k]
    targets = list(lists)
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
