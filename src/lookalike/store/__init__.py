"""Stores: where vectors and their catalogue rows live. `open_store` picks the backend by name."""

from __future__ import annotations

from pathlib import Path

from .base import CollectionInfo, Filter, ImageRecord, Store
from .embedded import EmbeddedStore


def open_store(home: Path, backend: str = "embedded", **options: object) -> Store:
    if backend == "embedded":
        return EmbeddedStore(home, **options)  # type: ignore[arg-type]
    from ..errors import LookalikeError

    raise LookalikeError(f"unknown store backend '{backend}': available: embedded")


__all__ = ["CollectionInfo", "EmbeddedStore", "Filter", "ImageRecord", "Store", "open_store"]
