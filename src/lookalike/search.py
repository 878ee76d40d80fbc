"""Search: a query (picture, bytes, stored id or text) -> vector -> top-k hits from the store."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .store import Filter, ImageRecord, Store


@dataclass
class Hit:
    id: int
    path: str
    score: float
    record: ImageRecord
    box: list[int] | None = None  # the region of this image that matched (regions indexed), else the whole
    query_box: list[int] | None = None  # the region of the query that found it (search --objects / --box)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self.record)
        data["score"] = round(float(self.score), 6)
        if self.box is not None:
            data["box"] = list(self.box)
        if self.query_box is not None:
            data["query_box"] = list(self.query_box)
        return data


def nearest(store: Store, collection: str, query: np.ndarray, k: int, *, flt: Filter | None = None,
            exclude_ids: set[int] | None = None, min_score: float | None = None) -> list[Hit]:
    """Top-k hits for one query vector, best first, with their catalogue rows."""
    exclude_ids = exclude_ids or set()
    scores, ids = store.search(collection, query[None, :], k + len(exclude_ids), flt)
    pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True)
             if i >= 0 and int(i) not in exclude_ids]
    if min_score is not None:
        pairs = [(i, s) for i, s in pairs if s >= min_score]
    pairs = pairs[:k]
    records = {r.id: r for r in store.get(collection, [i for i, _ in pairs])}
    return [Hit(i, records[i].path, s, records[i]) for i, s in pairs if i in records]
