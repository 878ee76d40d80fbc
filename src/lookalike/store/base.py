"""The Store interface: what ingest, search and the service need from a vector store + catalogue.

The embedded store (Faiss + SQLite) implements it; a Milvus backend can implement the same verbs
without any caller changing. Vectors given to a store are already L2-normalised float32 for the
cosine metric (inner product = cosine).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class CollectionInfo:
    name: str
    model: str
    dim: int
    metric: str = "cosine"  # "cosine" (inner product on unit vectors) or "hamming" (binary codes)
    index_spec: str = "auto"  # "auto" or a Faiss index_factory string
    created: float = 0.0
    count: int = 0
    index_type: str = ""
    size_bytes: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageRecord:
    """One catalogue row. `id` is assigned by the store; `path` is unique within a collection."""

    path: str
    content_hash: str = ""
    size: int = 0
    mtime: float = 0.0
    width: int = 0
    height: int = 0
    group_id: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    added: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Filter:
    """Restricts a search to images whose catalogue fields match (all conditions must hold)."""

    group_id: str | None = None
    tags: list[str] = field(default_factory=list)  # image must carry every tag
    path_prefix: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # exact match on user metadata keys
    ids: list[int] | None = None

    def is_empty(self) -> bool:
        return (self.group_id is None and not self.tags and self.path_prefix is None
                and not self.metadata and self.ids is None)


class Store(ABC):
    """Collections of (catalogue row, vector) pairs with nearest-neighbour search."""

    @abstractmethod
    def create_collection(self, name: str, model: str, dim: int, metric: str = "cosine",
                          index_spec: str = "auto", settings: dict[str, Any] | None = None
                          ) -> CollectionInfo: ...

    @abstractmethod
    def drop_collection(self, name: str) -> None: ...

    @abstractmethod
    def collections(self) -> list[CollectionInfo]: ...

    @abstractmethod
    def collection(self, name: str) -> CollectionInfo:
        """Describe one collection; raises UnknownCollection."""

    @abstractmethod
    def collection_settings(self, name: str) -> tuple[str, dict[str, Any]]:
        """(metric, settings) of a collection: the cheap part of `collection`, read on every search."""

    @abstractmethod
    def set_collection_settings(self, name: str, settings: dict[str, Any]) -> None: ...

    @abstractmethod
    def known_files(self, collection: str) -> dict[str, tuple[int, int, float, str]]:
        """path -> (id, size, mtime, content_hash), for incremental indexing."""

    @abstractmethod
    def upsert(self, collection: str, records: list[ImageRecord], vectors: np.ndarray) -> list[int]:
        """Insert or replace (by path) rows with their vectors, atomically; returns their ids."""

    @abstractmethod
    def remove(self, collection: str, ids: list[int]) -> int: ...

    @abstractmethod
    def update_metadata(self, collection: str, image_id: int, *, group_id: str | None = None,
                        tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> None: ...

    @abstractmethod
    def get(self, collection: str, ids: list[int]) -> list[ImageRecord]: ...

    @abstractmethod
    def find_ids(self, collection: str, *, paths: list[str] | None = None,
                 flt: Filter | None = None) -> list[int]: ...

    @abstractmethod
    def vectors(self, collection: str, ids: list[int]) -> np.ndarray: ...

    @abstractmethod
    def all_vectors(self, collection: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every row, in id order."""

    # Database-side augmentation (refine.py): the index searches an augmented vector per row where
    # one is set, the plain vector otherwise; rows without one are "pending".
    @abstractmethod
    def index_vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        """The vectors the index searches for these rows (augmented where set)."""

    @abstractmethod
    def pending(self, collection: str) -> list[int]:
        """Ids of rows with no augmented vector yet (new, changed, or a neighbour changed)."""

    @abstractmethod
    def neighbour_lists(self, collection: str, ids: list[int]) -> dict[int, list[tuple[int, float]]]:
        """The (neighbour id, cosine) lists the augmented vectors were computed from, best first."""

    @abstractmethod
    def generation(self, collection: str) -> int:
        """A counter bumped by every write to the collection."""

    @abstractmethod
    def set_augmented(self, collection: str, ids: list[int], vectors: np.ndarray,
                      neighbours: list[list[tuple[int, float]]], *, if_generation: int | None = None) -> int:
        """Store augmented vectors and their neighbour lists atomically; return the new generation.
        Raises StaleWrite if `if_generation` is given and another write happened since. Changing or
        removing a row later returns every row whose list holds it to pending."""

    @abstractmethod
    def clear_augmented(self, collection: str) -> None:
        """Make every row pending (e.g. after the augmentation settings change)."""

    @abstractmethod
    def import_rows(self, collection: str, records: list[ImageRecord], vectors: np.ndarray,
                    augmented: list[np.ndarray | None], neighbours: list[list[tuple[int, float]]]) -> None:
        """Write rows exactly as another store holds them (`migrate`): their ids and `added` kept, with their
        augmented vector (None: pending) and neighbour list. Rewriting a row already there is harmless, so
        a resumed copy may; a path held under another id is refused (AlreadyExists)."""

    @abstractmethod
    def search(self, collection: str, queries: np.ndarray, k: int, flt: Filter | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row; ids are -1 where fewer than k matched."""

    @abstractmethod
    def count(self, collection: str) -> int: ...

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Persist derived structures (e.g. an index file); data is already durable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        self.flush()
