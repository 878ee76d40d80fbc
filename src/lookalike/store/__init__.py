"""Stores: where vectors and their catalogue rows live. `open_store` picks the backend from a store URI:
`embedded` (Faiss + SQLite in the library directory, the default) or `milvus:<uri pymilvus takes>` (a local
path ending .db: Milvus Lite; http(s)://host:port: a Milvus server, token from $LOOKALIKE_MILVUS_TOKEN)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LookalikeError
from .base import CollectionInfo, Filter, ImageRecord, Store
from .embedded import EmbeddedStore

STORE_HELP = "embedded (default) or milvus:<path>.db (Milvus Lite) or milvus:http://HOST:19530 (a Milvus server)"


def open_store(home: Path, backend: str = "embedded", **options: object) -> Store:
    """The store a URI names; `options` (e.g. exact_below) go to its constructor."""
    uri = (backend or "embedded").strip()
    if uri == "embedded":
        return EmbeddedStore(home, **options)  # type: ignore[arg-type]
    if uri.startswith("milvus:"):
        target = uri[len("milvus:"):]
        if not target:
            raise LookalikeError(f"store '{uri}' names no Milvus: use {STORE_HELP}")
        try:
            from .milvus import MilvusStore
        except ImportError as exc:
            raise LookalikeError(f"the Milvus store needs pymilvus ({exc.name} is missing): "
                                 "pip install 'lookalike[scale]'") from None
        return MilvusStore(target, token=os.environ.get("LOOKALIKE_MILVUS_TOKEN"), **options)  # type: ignore[arg-type]
    raise LookalikeError(f"unknown store '{uri}': use {STORE_HELP}")


__all__ = ["STORE_HELP", "CollectionInfo", "EmbeddedStore", "Filter", "ImageRecord", "Store", "open_store"]
