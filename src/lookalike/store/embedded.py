"""The embedded store: a SQLite catalogue (catalogue.py) that owns every row and vector, plus one Faiss index
per collection (faiss_index.py) that is only a derived, rebuildable cache.

Why two parts: each write commits its rows and the log of index entries it changed in one catalogue
transaction, then hands the resulting `IndexChange` to the index, which applies it in memory or catches up
from the log on next use, in this process or any other. So catalogue and index can't disagree, and the
catalogue, having no Faiss in it, can serve another vector backend unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import CollectionInfo, Filter, ImageRecord, Store
from .catalogue import Catalogue
from .faiss_index import FaissIndex, check_index_spec


class EmbeddedStore(Store):
    """Faiss + SQLite in one library directory. Thread-safe; several processes may read while one writes."""

    def __init__(self, home: Path, *, exact_below: int = 50_000) -> None:
        self.home = Path(home)
        self.catalogue = Catalogue(self.home)
        self.faiss_index = FaissIndex(self.catalogue, self.home / "indexes", exact_below=exact_below)
        self.index_dir = self.faiss_index.index_dir
        self._lock = self.catalogue.lock  # held across a catalogue write and the index update after it

    # -- collections --------------------------------------------------------------------------
    def create_collection(self, name: str, model: str, dim: int, metric: str = "cosine",
                          index_spec: str = "auto", settings: dict[str, Any] | None = None
                          ) -> CollectionInfo:
        self.catalogue.check_new_collection(name, metric)
        if index_spec != "auto":
            check_index_spec(index_spec, dim, metric)
        self.catalogue.create_collection(name, model, dim, metric, index_spec, settings)
        return self.collection(name)

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self.catalogue.drop_collection(name)
            self.faiss_index.drop(name)

    def collections(self) -> list[CollectionInfo]:
        return [self.collection(n) for n in self.catalogue.collection_names()]

    def collection(self, name: str) -> CollectionInfo:
        with self._lock:
            info = self.catalogue.collection_info(name)
            info.index_type, index_bytes = self.faiss_index.describe(name, info.count)
            info.size_bytes += index_bytes
            return info

    def collection_settings(self, name: str) -> tuple[str, dict[str, Any]]:
        return self.catalogue.collection_settings(name)

    def set_collection_settings(self, name: str, settings: dict[str, Any]) -> None:
        self.catalogue.set_collection_settings(name, settings)

    # -- writes: catalogue first, then the index ----------------------------------------------
    def upsert(self, collection: str, records: list[ImageRecord], vectors: np.ndarray) -> list[int]:
        with self._lock:
            ids, change = self.catalogue.upsert(collection, records, vectors)
            self.faiss_index.apply(change)
            return ids

    def remove(self, collection: str, ids: list[int]) -> int:
        with self._lock:
            removed, change = self.catalogue.remove(collection, ids)
            self.faiss_index.apply(change)
            return removed

    def set_augmented(self, collection: str, ids: list[int], vectors: np.ndarray,
                      neighbours: list[list[tuple[int, float]]], *, if_generation: int | None = None) -> int:
        with self._lock:
            generation, change = self.catalogue.set_augmented(collection, ids, vectors, neighbours,
                                                              if_generation=if_generation)
            self.faiss_index.apply(change)
            return generation

    def clear_augmented(self, collection: str) -> None:
        with self._lock:
            self.faiss_index.apply(self.catalogue.clear_augmented(collection))

    def import_rows(self, collection: str, records: list[ImageRecord], vectors: np.ndarray,
                    augmented: list[np.ndarray | None], neighbours: list[list[tuple[int, float]]]) -> None:
        with self._lock:
            self.faiss_index.apply(self.catalogue.import_rows(collection, records, vectors, augmented, neighbours))

    def update_metadata(self, collection: str, image_id: int, *, group_id: str | None = None,
                        tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> None:
        self.catalogue.update_metadata(collection, image_id, group_id=group_id, tags=tags, metadata=metadata)

    # -- reads: the catalogue alone -----------------------------------------------------------
    def count(self, collection: str) -> int:
        return self.catalogue.count(collection)

    def known_files(self, collection: str) -> dict[str, tuple[int, int, float, str]]:
        return self.catalogue.known_files(collection)

    def get(self, collection: str, ids: list[int]) -> list[ImageRecord]:
        return self.catalogue.get(collection, ids)

    def find_ids(self, collection: str, *, paths: list[str] | None = None,
                 flt: Filter | None = None) -> list[int]:
        return self.catalogue.find_ids(collection, paths=paths, flt=flt)

    def vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        return self.catalogue.vectors(collection, ids)

    def all_vectors(self, collection: str, *, augmented: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return self.catalogue.all_vectors(collection, augmented=augmented)

    def index_vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        return self.catalogue.index_vectors(collection, ids)

    def pending(self, collection: str) -> list[int]:
        return self.catalogue.pending(collection)

    def neighbour_lists(self, collection: str, ids: list[int]) -> dict[int, list[tuple[int, float]]]:
        return self.catalogue.neighbour_lists(collection, ids)

    def generation(self, collection: str) -> int:
        return self.catalogue.generation(collection)

    # -- search and the derived index ---------------------------------------------------------
    def search(self, collection: str, queries: np.ndarray, k: int, flt: Filter | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            state = self.catalogue.collection_state(collection)
            allowed = None if flt is None or flt.is_empty() else self.catalogue.find_ids(collection, flt=flt)
            return self.faiss_index.search(state, queries, k, allowed)

    def index_for(self, collection: str) -> Any:
        """The current Faiss index of a collection (rebuilt if stale)."""
        return self.faiss_index.index_for(collection)

    def flush(self) -> None:
        """Write index files where replaying the log would cost too much (see FaissIndex.flush)."""
        self.faiss_index.flush()

    def close(self) -> None:
        self.flush()
        self.catalogue.close()


__all__ = ["EmbeddedStore"]
