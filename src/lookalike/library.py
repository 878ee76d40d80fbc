"""The Python API: one `Library` (a directory) holding named collections.

    from lookalike import Library
    with Library.open() as lib:                       # $LOOKALIKE_HOME or the user's data dir
        lib.index(["~/Pictures"], collection="photos")
        for hit in lib.search("query.jpg", k=10, collection="photos"):
            print(hit.score, hit.path)

The CLI and the HTTP service are thin faces over this class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import refine
from .config import DEFAULT_COLLECTION, Settings, library_home
from .decode import decode, read_bytes, to_rgb
from .embed import Embedder, get_embedder, resolve
from .errors import EmptyLibrary, LookalikeError
from .ingest import IndexReport as IndexReport
from .ingest import ProgressFn, check_model, collection_settings, ensure_collection, file_key, index_paths
from .search import Hit, nearest
from .store import CollectionInfo, Filter, ImageRecord, Store, open_store

Query = str | os.PathLike[str] | bytes | Image.Image | int


class Library:
    def __init__(self, home: str | os.PathLike[str] | None = None, *, settings: Settings | None = None,
                 store: Store | None = None, model_dir: Path | None = None) -> None:
        self.home = library_home(home)
        self._model_dir = model_dir
        self.settings = settings or Settings.load(self.home)
        self.store = store or open_store(self.home, exact_below=self.settings.exact_below)
        self._embedders: dict[str, Embedder] = {}

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, **settings: Any) -> Library:
        resolved = library_home(home)
        return cls(resolved, settings=Settings.load(resolved, **settings))

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # -- models -------------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return self._model_dir or self.home / "models"

    def embedder(self, model: str | None = None) -> Embedder:
        name = resolve(model or self.settings.model, self.model_dir, fetch=True)
        if name not in self._embedders:
            self._embedders[name] = get_embedder(name, self.model_dir, threads=self.settings.intra_op_threads)
        return self._embedders[name]

    def collection_embedder(self, collection: str, model: str | None = None) -> Embedder:
        info = self.store.collection(collection)
        embedder = self.embedder(model or info.model)
        check_model(collection, info.model, info.dim, embedder)
        return embedder

    # -- collections --------------------------------------------------------------------------
    def collections(self) -> list[CollectionInfo]:
        return self.store.collections()

    def info(self, collection: str = DEFAULT_COLLECTION) -> CollectionInfo:
        return self.store.collection(collection)

    def create_collection(self, name: str, model: str | None = None, index_spec: str = "auto", *,
                          refine: bool = True) -> CollectionInfo:
        """A new empty collection; `refine=False` makes it plain cosine search (no DBA, no expansion)."""
        embedder = self.embedder(model)
        settings = collection_settings(embedder, self.settings) if refine else {}
        return self.store.create_collection(name, embedder.name, embedder.dim, embedder.metric, index_spec,
                                            settings=settings)

    def drop_collection(self, name: str) -> None:
        self.store.drop_collection(name)

    # -- writing ------------------------------------------------------------------------------
    def index(self, paths: list[str | os.PathLike[str]], collection: str = DEFAULT_COLLECTION, *,
              model: str | None = None, prune: bool = False, group_id: str | None = None,
              tags: list[str] | None = None, index_spec: str = "auto",
              progress: ProgressFn | None = None, refine_progress: ProgressFn | None = None) -> IndexReport:
        """Index files and folders; re-running skips unchanged files (see `ingest`). `progress` follows
        the files, `refine_progress` the refinement pass that ends the run (rows done, rows to do)."""
        try:
            existing = self.store.collection(collection).model
        except LookalikeError:
            existing = None
        embedder = self.embedder(model or existing)
        return index_paths(self.store, embedder, [Path(p) for p in paths], collection,
                           settings=self.settings, prune=prune, group_id=group_id, tags=tags,
                           index_spec=index_spec, progress=progress, report_dir=self.home / "reports",
                           refine_progress=refine_progress)

    def add_image(self, data: bytes, collection: str = DEFAULT_COLLECTION, *, name: str | None = None,
                  group_id: str | None = None, tags: list[str] | None = None,
                  metadata: dict[str, Any] | None = None, model: str | None = None) -> ImageRecord:
        """Add (or replace, by name) one uploaded picture; `name` defaults to its content hash."""
        import hashlib

        try:
            embedder = self.collection_embedder(collection, model)
        except LookalikeError as exc:
            if "no collection named" not in str(exc):
                raise
            embedder = self.embedder(model)
            ensure_collection(self.store, collection, embedder, settings=self.settings)
        image = decode(data, max_pixels=self.settings.max_pixels, draft_size=embedder.draft_size)
        digest = hashlib.sha256(data).hexdigest()
        record = ImageRecord(path=name or f"upload:{digest[:16]}", content_hash=digest, size=len(data),
                             width=image.size[0], height=image.size[1], group_id=group_id,
                             tags=list(tags or []), metadata=dict(metadata or {}))
        vector = embedder.embed_images([image])
        self.store.upsert(collection, [record], vector)
        refine.refresh(self.store, collection)
        self.store.flush()
        return record

    def remove(self, targets: list[str | int], collection: str = DEFAULT_COLLECTION) -> int:
        """Remove images by id, by file path, or every image under a folder path."""
        self.store.collection(collection)
        ids: list[int] = []
        paths: list[str] = []
        for target in targets:
            if isinstance(target, int) or (isinstance(target, str) and target.isdigit()
                                           and not os.path.exists(target)):
                ids.append(int(target))
            else:
                paths.append(str(target))
        known = self.store.known_files(collection)
        for raw in paths:
            key = file_key(Path(raw).expanduser())
            if key in known:
                ids.append(known[key][0])
            elif raw in known:  # uploads are stored under their given name
                ids.append(known[raw][0])
            else:
                under = [v[0] for p, v in known.items() if p.startswith(key.rstrip(os.sep) + os.sep)]
                if not under:
                    raise LookalikeError(f"'{raw}' is not in collection '{collection}'; "
                                         "see `lookalike search` or `lookalike info` for what is indexed")
                ids.extend(under)
        removed = self.store.remove(collection, sorted(set(ids)))
        refine.refresh(self.store, collection)
        self.store.flush()
        return removed

    # -- reading ------------------------------------------------------------------------------
    def query_vector(self, query: Query | None = None, *, collection: str = DEFAULT_COLLECTION,
                     text: str | None = None, model: str | None = None,
                     rotation_invariant: bool = False) -> np.ndarray:
        """The vector a query searches with. `rotation_invariant` embeds the picture at 0, 90, 180 and
        270 degrees and averages: it finds photos stored sideways with no EXIF tag (docs/benchmarks.md)."""
        embedder = self.collection_embedder(collection, model)
        if text is not None:
            return embedder.embed_text([text])[0]
        if isinstance(query, int):
            if not rotation_invariant:
                return self.store.vectors(collection, [query])[0]
            record = self.store.get(collection, [query])
            if not record or not os.path.isfile(record[0].path):
                return self.store.vectors(collection, [query])[0]  # raises for an unknown id
            query = record[0].path
        if isinstance(query, Image.Image):
            image = to_rgb(query)
        else:
            if isinstance(query, bytes | bytearray):
                data, suffix = bytes(query), ""
            else:
                path = Path(query).expanduser()  # type: ignore[arg-type]
                data, suffix = read_bytes(path, self.settings.max_file_bytes), path.suffix
            image = decode(data, max_pixels=self.settings.max_pixels, draft_size=embedder.draft_size,
                           suffix=suffix)
        if not rotation_invariant:
            return embedder.embed_images([image])[0]
        views = [image, *(image.transpose(t) for t in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                                         Image.Transpose.ROTATE_270))]
        mean = embedder.embed_images(views).mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def search(self, query: Query | None = None, *, k: int = 10, collection: str = DEFAULT_COLLECTION,
               text: str | None = None, flt: Filter | None = None, min_score: float | None = None,
               model: str | None = None, expand: bool = True, rotation_invariant: bool = False) -> list[Hit]:
        """Top-k images like `query` (a path, bytes, PIL image or stored id) or like `text`."""
        if query is None and text is None:
            raise LookalikeError("give a query image, an image id, or --text")
        self.store.collection_settings(collection)  # raises UnknownCollection, cheaply
        if self.store.count(collection) == 0:
            raise EmptyLibrary(f"collection '{collection}' is empty; add images with "
                               f"`lookalike index PATH --collection {collection}`")
        vector = self.query_vector(query, collection=collection, text=text, model=model,
                                   rotation_invariant=rotation_invariant)
        exclude = {query} if isinstance(query, int) else None
        return self.search_vector(vector, k=k, collection=collection, flt=flt, exclude_ids=exclude,
                                  min_score=min_score, expand=expand and text is None)

    def search_vector(self, vector: np.ndarray, *, k: int = 10, collection: str = DEFAULT_COLLECTION,
                      flt: Filter | None = None, exclude_ids: set[int] | None = None,
                      min_score: float | None = None, expand: bool = True) -> list[Hit]:
        """Top-k for an already embedded query (what `search` does after embedding).

        `expand` applies the collection's query expansion (refine.py) to image queries; pass False
        for text queries, whose vectors live in a different region of the space."""
        if expand:
            params = refine.RefineParams.from_settings(*self.store.collection_settings(collection))
            vector = refine.expand_query(self.store, collection, vector, params, flt)
        return nearest(self.store, collection, vector, k, flt=flt, exclude_ids=exclude_ids, min_score=min_score)

    def refresh(self, collection: str = DEFAULT_COLLECTION) -> int:
        """Bring a collection's refinement up to date after writes made through `store` directly."""
        return refine.refresh(self.store, collection)

    def set_refinement(self, collection: str = DEFAULT_COLLECTION, *, dba_k: int | None = None,
                       qe_k: int | None = None, off: bool = False) -> refine.RefineParams:
        """Change a collection's refinement (recomputing its augmented vectors) and return the new one.
        Values not given keep the collection's own; a collection without refinement gets the defaults."""
        info = self.store.collection(collection)
        if info.metric != "cosine" and not off:
            raise LookalikeError(f"collection '{collection}' holds {info.model} hashes (hamming): refinement "
                                 "needs cosine vectors; use a neural model for it")
        current = refine.RefineParams.of(info)
        if not (current.dba_k or current.qe_k):  # plain (e.g. made by an older lookalike): start from defaults
            current = refine.RefineParams(dba_k=self.settings.dba_k, qe_k=self.settings.qe_k)
        if off:
            refine.rebuild(self.store, collection, None)
            self.store.flush()
            return refine.RefineParams(dba_k=0, qe_k=0)
        params = refine.RefineParams(
            dba_k=current.dba_k if dba_k is None else max(0, dba_k),
            dba_power=current.dba_power,
            qe_k=current.qe_k if qe_k is None else max(0, qe_k),
            qe_alpha=current.qe_alpha)
        refine.rebuild(self.store, collection, params)
        self.store.flush()
        return params
