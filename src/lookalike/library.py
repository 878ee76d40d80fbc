"""The Python API: one `Library` (a directory) holding named collections.

    from lookalike import Library
    with Library.open() as lib:                       # $LOOKALIKE_HOME or the user's data dir
        lib.index(["~/Pictures"], collection="photos")
        for hit in lib.search("query.jpg", k=10, collection="photos"):
            print(hit.score, hit.path)

Every operation a user can ask for lives here (or in the module it delegates to); the CLI and the HTTP
service only parse, call one method and format. Methods that take bytes from a client accept `limits`
(the service's upload limits); without them the library's own file limits apply.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from . import refine
from .compare import compare_vectors
from .config import DEFAULT_COLLECTION, Settings, library_home
from .decode import (
    MEDIA_TYPES,
    configure_memory,
    decode,
    decode_upload,
    read_bytes,
    read_file,
    sniff,
    source_size,
    to_rgb,
)
from .embed import Embedder, ModelCard, get_embedder, model_cards, resolve
from .errors import (
    Busy,
    DecodeError,
    EmptyLibrary,
    FileChanged,
    LookalikeError,
    NotFound,
    NotPermitted,
    UnknownCollection,
    UnknownImage,
)
from .ingest import IndexReport as IndexReport
from .ingest import ProgressFn, check_model, collection_settings, ensure_collection, file_key, index_paths
from .names import valid_image_id
from .roots import is_within, resolve_roots, resolve_within
from .search import Hit, nearest
from .store import CollectionInfo, Filter, ImageRecord, Store, open_store
from .uploads import UploadStore, is_upload, upload_path
from .write_lock import LibraryWriteLock

if TYPE_CHECKING:
    from .dupes import DupesReport, Plan, UndoReport
    from .dupes.groups import CopyHit
    from .dupes.groups import ProgressFn as DupesProgress
    from .dupes.verify import PairVerdict
    from .objects import QueryRegions

Query = str | os.PathLike[str] | bytes | Image.Image | int
THUMBNAIL_CACHE = 2048  # thumbnails kept in memory (about 20 KB each)


@dataclass(frozen=True)
class Limits:
    """What a picture sent by a client may be: checked before it is decoded (see decode.decode_upload)."""

    max_bytes: int
    max_pixels: int


@dataclass(frozen=True)
class Upload:
    """One picture to add: its bytes and, optionally, the caller's id for it (default: its content hash)."""

    data: bytes
    name: str | None = None


def _same_store(a: str, b: str) -> bool:
    """Whether two store URIs name one store (Lite paths compared resolved)."""
    def norm(uri: str) -> str:
        uri = (uri or "embedded").strip()
        if uri.startswith("milvus:") and "://" not in uri:
            return "milvus:" + str(Path(uri[len("milvus:"):]).expanduser().resolve())
        return uri.rstrip("/")
    return norm(a) == norm(b)


class Library:
    def __init__(self, home: str | os.PathLike[str] | None = None, *, settings: Settings | None = None,
                 store: Store | None = None, model_dir: Path | None = None) -> None:
        self.home = library_home(home)
        self._model_dir = model_dir
        self.settings = settings or Settings.load(self.home)
        self.store = store or open_store(self.home, self.settings.store, exact_below=self.settings.exact_below)
        self.uploads = UploadStore(self.home / "uploads")
        self._embedders: dict[str, Embedder] = {}
        self._embed_lock = threading.Lock()  # one load per model, however many threads ask at once
        # uploads, replaces, removes, index batches: check-then-write of a collection and its files, one at a time
        # across this library's processes (write_lock.py); Busy after settings.write_wait seconds
        self._write_lock = LibraryWriteLock(self.home / "locks", wait=self.settings.write_wait)
        self._thumbs: OrderedDict[tuple[str, int, str, int], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()
        configure_memory(self.settings.decode_memory_mb)  # the process's decode memory (decode.MEMORY)

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

    @property
    def default_model(self) -> str:
        return resolve(self.settings.model, self.model_dir)

    def models(self) -> list[ModelCard]:
        """Every embedder this library can use (see `default_model` for the one new collections get),
        then the models trained on this library's pictures (`train`), with their lineage and figures."""
        return model_cards() + self.trained_models()

    def trained_models(self) -> list[ModelCard]:
        from .embed import trained

        cards = []
        for name in trained.names(self.model_dir):
            with suppress(LookalikeError, KeyError, ValueError, TypeError):
                cards.append(trained.model_card(trained.read_card(self.model_dir, name)))
        return cards

    def forget_embedder(self, name: str) -> None:
        """Drop a loaded model (and its versions) so the next use reads it again (after a retrain)."""
        with self._embed_lock:
            for key in [k for k in self._embedders if k == name or k.startswith(name + "@")]:
                del self._embedders[key]

    def has_text(self, model: str) -> bool:
        """Whether collections of `model` can be searched by text."""
        return any(card.text for card in model_cards() if card.name == model)

    def embedder(self, model: str | None = None) -> Embedder:
        with self._embed_lock:
            name = resolve(model or self.settings.model, self.model_dir, fetch=True)
            if name not in self._embedders:
                self._embedders[name] = get_embedder(name, self.model_dir, threads=self.settings.intra_op_threads)
            return self._embedders[name]

    def collection_embedder(self, collection: str, model: str | None = None) -> Embedder:
        info = self.store.collection(collection)
        embedder = self.embedder(model or info.model)
        check_model(collection, info.model, info.dim, embedder)
        return embedder

    def _write_embedder(self, collection: str, model: str | None = None) -> Embedder:
        """The collection's model if it exists, else `model` or the default (the collection is made on write)."""
        try:
            return self.collection_embedder(collection, model)
        except UnknownCollection:
            return self.embedder(model)

    def warm_up(self) -> list[str]:
        """Load the default model and every collection's model and run each once; returns their names."""
        names = {self.default_model} | {c.model for c in self.collections()}
        for name in sorted(names):
            try:
                self.embedder(name).embed_images([Image.new("RGB", (64, 64), "gray")])
            except LookalikeError:
                continue
        return sorted(names)

    # -- collections --------------------------------------------------------------------------
    def collections(self) -> list[CollectionInfo]:
        from .names import is_regions_name

        return [c for c in self.store.collections() if not is_regions_name(c.name)]  # no ~regions companions

    def info(self, collection: str = DEFAULT_COLLECTION) -> CollectionInfo:
        return self.store.collection(collection)

    def count(self, collection: str = DEFAULT_COLLECTION) -> int:
        self.store.collection_settings(collection)  # raises UnknownCollection, cheaply
        return self.store.count(collection)

    def create_collection(self, name: str, model: str | None = None, index_spec: str = "auto", *,
                          refine: bool = True) -> CollectionInfo:
        """A new empty collection; `refine=False` makes it plain cosine search (no DBA, no expansion)."""
        embedder = self.embedder(model)
        settings = collection_settings(embedder, self.settings) if refine else {}
        return self.store.create_collection(name, embedder.name, embedder.dim, embedder.metric, index_spec,
                                            settings=settings)

    def drop_collection(self, name: str) -> int:
        """Drop a collection and everything in it; returns how many images it held."""
        count = self.count(name)
        hashes = self._hashes(name)
        self.store.drop_collection(name)
        from .objects import has_regions, regions_of

        if has_regions(self.store, name):
            self.store.drop_collection(regions_of(name))
        self._forget_uploads(hashes)
        return count

    # -- writing ------------------------------------------------------------------------------
    def index(self, paths: list[str | os.PathLike[str]], collection: str = DEFAULT_COLLECTION, *,
              model: str | None = None, prune: bool = False, group_id: str | None = None,
              tags: list[str] | None = None, index_spec: str = "auto",
              progress: ProgressFn | None = None, refine_progress: ProgressFn | None = None,
              allowed_roots: list[str | os.PathLike[str]] | None = None, exclusive: bool = True,
              regions: str | None = None, regions_progress: ProgressFn | None = None,
              engine: str | None = None) -> IndexReport:
        """Index files and folders; re-running skips unchanged files (see `ingest`). `progress` follows
        the files, `refine_progress` the refinement pass that ends the run (rows done, rows to do).

        `allowed_roots` (default: the library's `allowed_roots` setting; empty: no restriction): each path
        must lie inside one of them, and so must every file the walk reaches (a symlink pointing out is
        skipped as `outside-root`). `exclusive`: hold the collection's index lock for the run, the one the
        server's jobs take (`jobs_db.py`), so one run at a time per collection across processes; a second
        one raises Busy (the job runner, which holds the lock already, passes False).
        `regions="objects"`: also index each image's regions (objects.py); a collection indexed so keeps
        its regions up to date on every later write.
        `engine` (default: the `engine` setting, "local"): "local-cluster" or a Dask scheduler address runs
        read, decode and embed on that engine's workers, this process still the one writer (engine.py)."""
        from .engine import check_engine

        engine = check_engine(engine or self.settings.engine)
        roots_given = self.settings.allowed_roots if allowed_roots is None else allowed_roots
        within = resolve_roots(roots_given) if roots_given else None
        if within is not None:
            for raw in paths:
                resolve_within(os.path.abspath(os.path.expanduser(raw)), within)
        try:
            existing = self.store.collection(collection).model
        except LookalikeError:
            existing = None
        embedder = self.embedder(model or existing)
        from .jobs_db import CollectionLock

        lock = CollectionLock(self.home / "locks", collection) if exclusive else None
        if lock is not None and not lock.acquire():
            raise Busy(f"collection '{collection}' is being indexed by another process (a server job or another "
                       "`lookalike index`); run this again when that has finished", code="collection-busy",
                       retry_after=5)
        try:
            if regions is not None:
                self._check_regions_mode(regions)
            report = index_paths(self.store, embedder, [Path(p) for p in paths], collection,
                                 settings=self.settings, prune=prune, group_id=group_id, tags=tags,
                                 index_spec=index_spec, progress=progress, report_dir=self.home / "reports",
                                 refine_progress=refine_progress, allowed_roots=within, engine=engine,
                                 model_dir=self.model_dir, write_guard=self._write_lock)
            self._sync_regions(collection, create=regions is not None, progress=regions_progress)
            return report
        finally:
            if lock is not None:
                lock.release()

    def allowed_paths(self, paths: list[str], roots: list[str | os.PathLike[str]]) -> list[str]:
        """`paths` resolved, each checked to lie inside one of `roots` (what a server may index)."""
        return [str(resolve_within(raw, resolve_roots(roots))) for raw in paths]

    def add_image(self, data: bytes, collection: str = DEFAULT_COLLECTION, *, name: str | None = None,
                  group_id: str | None = None, tags: list[str] | None = None,
                  metadata: dict[str, Any] | None = None, model: str | None = None,
                  limits: Limits | None = None) -> ImageRecord:
        """Add (or replace, by name) one uploaded picture; `name` defaults to its content hash."""
        return self.add_images([Upload(data, name)], collection, group_id=group_id, tags=tags,
                               metadata=metadata, model=model, limits=limits)[0]

    def add_images(self, uploads: list[Upload], collection: str = DEFAULT_COLLECTION, *,
                   group_id: str | None = None, tags: list[str] | None = None,
                   metadata: dict[str, Any] | None = None, model: str | None = None,
                   limits: Limits | None = None) -> list[ImageRecord]:
        """Add uploaded pictures in one write: all or nothing. The collection is made if it doesn't exist;
        an upload whose name is already there replaces that image (keeping its id)."""
        embedder = self._write_embedder(collection, model)
        names = [u.name for u in uploads if u.name]
        if len(names) != len(set(names)):
            raise LookalikeError("the same id is given to more than one upload", code="duplicate-id")
        records: list[ImageRecord] = []
        images: list[Image.Image] = []
        for index, upload in enumerate(uploads):
            try:
                image = self._decode_bytes(upload.data, embedder, limits)
            except LookalikeError as exc:
                if len(uploads) > 1:
                    raise exc.reworded(f"upload #{index + 1}: ", "; nothing was added", index=index) from None
                raise
            digest = hashlib.sha256(upload.data).hexdigest()
            width, height = source_size(image)
            records.append(ImageRecord(path=upload_path(upload.name or digest[:16]), content_hash=digest,
                                       size=len(upload.data), width=width, height=height,
                                       group_id=group_id, tags=list(tags or []), metadata=dict(metadata or {})))
            images.append(image)
        vectors = embedder.embed_images(images)
        with self._write_lock:
            for upload, record in zip(uploads, records, strict=True):
                self.uploads.put(upload.data, record.content_hash)
            created = False
            try:
                self.store.collection(collection)
            except UnknownCollection:
                ensure_collection(self.store, collection, embedder, settings=self.settings)
                created = True
            try:
                ids = self.store.find_ids(collection, paths=[r.path for r in records])
                replaced = {r.content_hash for r in self.store.get(collection, ids)} if ids else set()
                self.store.upsert(collection, records, vectors)
                refine.refresh(self.store, collection)
            except BaseException:
                if created:
                    with suppress(LookalikeError):
                        self.store.drop_collection(collection)
                raise
        self._sync_regions(collection)
        self.store.flush()
        self._forget_uploads(replaced - {r.content_hash for r in records})
        return records

    def replace_image(self, collection: str, image_id: int, data: bytes, *, group_id: str | None = None,
                      tags: list[str] | None = None, metadata: dict[str, Any] | None = None,
                      limits: Limits | None = None) -> ImageRecord:
        """A new picture for an existing image, keeping its id; group and tags are kept unless given,
        metadata is merged."""
        old = self.get_image(collection, image_id)
        embedder = self.collection_embedder(collection)
        image = self._decode_bytes(data, embedder, limits)
        digest = hashlib.sha256(data).hexdigest()
        width, height = source_size(image)
        record = ImageRecord(path=old.path, content_hash=digest, size=len(data), mtime=0.0, width=width, height=height,
                             group_id=group_id if group_id is not None else old.group_id,
                             tags=list(tags) if tags is not None else old.tags,
                             metadata={**old.metadata, **(metadata or {})})
        vector = embedder.embed_images([image])
        with self._write_lock:
            self.uploads.put(data, digest)
            self.get_image(collection, image_id)  # still there (another request may have removed it)
            self.store.upsert(collection, [record], vector)
            refine.refresh(self.store, collection)
        self._sync_regions(collection)
        self.store.flush()
        if old.content_hash != digest:
            self._forget_uploads({old.content_hash})
        return self.get_image(collection, image_id)

    def update_image(self, collection: str, image_id: int, *, group_id: str | None = None,
                     tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> ImageRecord:
        """Change an image's group id, tags (replaced) or metadata (merged); its picture stays."""
        self.get_image(collection, image_id)
        self.store.update_metadata(collection, image_id, group_id=group_id, tags=tags, metadata=metadata)
        return self.get_image(collection, image_id)

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
        ids = sorted(set(ids))
        if bad := [i for i in ids if not valid_image_id(i)]:
            raise UnknownImage(f"no image with id {bad[0]} in collection '{collection}'")
        hashes = {r.content_hash for r in self.store.get(collection, ids)} if ids else set()
        with self._write_lock:
            removed = self.store.remove(collection, ids)
            refine.refresh(self.store, collection)
        self._sync_regions(collection)
        self.store.flush()
        self._forget_uploads(hashes)
        return removed

    def _hashes(self, collection: str) -> set[str]:
        return {v[3] for v in self.store.known_files(collection).values()}

    def _forget_uploads(self, hashes: set[str]) -> None:
        """Delete stored upload bytes that no image in any collection refers to any more."""
        def used() -> set[str]:
            found: set[str] = set()
            for info in self.collections():
                found |= self._hashes(info.name)
            return found

        with self._write_lock:
            self.uploads.forget_unused(hashes, used)

    # -- images -------------------------------------------------------------------------------
    def get_image(self, collection: str, image_id: int) -> ImageRecord:
        """One image's catalogue row; UnknownImage if the collection holds no such id."""
        self.store.collection_settings(collection)
        found = self.store.get(collection, [image_id]) if valid_image_id(image_id) else []
        if not found:
            raise UnknownImage(f"no image with id {image_id} in collection '{collection}'")
        return found[0]

    def image_bytes(self, collection: str, image_id: int) -> tuple[bytes, str | None]:
        """An image's bytes and their media type (None for formats browsers can't show): the stored
        upload, or the catalogued file (never any other path)."""
        data = self._source_bytes(self.get_image(collection, image_id))
        kind = sniff(data)
        return data, MEDIA_TYPES[kind] if kind else None

    def _source_bytes(self, record: ImageRecord) -> bytes:
        stored = self.uploads.get(record.content_hash)
        if stored is not None:
            return stored
        if is_upload(record.path) or not os.path.isabs(record.path):
            raise NotFound(f"the bytes of image {record.id} are not stored in this library", code="gone")
        path = Path(record.path)
        if not path.is_file():
            raise NotFound(f"image {record.id} was indexed from a file that no longer exists", code="gone")
        try:
            data, st = read_file(path, self.settings.max_file_bytes)
        except DecodeError as exc:
            raise NotFound(f"image {record.id} cannot be read: {exc}", code="gone") from exc
        self._check_unchanged(record, st)
        # the bytes are in memory anyway: hashing them (~1 GB/s) catches a swap that kept size and mtime
        if record.content_hash and hashlib.sha256(data).hexdigest() != record.content_hash:
            raise FileChanged(f"image {record.id}'s file {record.path} no longer holds the picture that was "
                              "indexed; re-index it to serve the new one")
        return data

    @staticmethod
    def _check_unchanged(record: ImageRecord, st: os.stat_result) -> None:
        """Refuse a catalogued file whose size or mtime differ from its row (it was replaced or edited)."""
        if st.st_size != record.size or st.st_mtime != record.mtime:
            raise FileChanged(f"image {record.id}'s file {record.path} changed since it was indexed (size or "
                              "modification time); re-index it to serve the new one")

    def thumbnail(self, collection: str, image_id: int, size: int) -> tuple[bytes, str]:
        """A JPEG of the image whose longest side is `size`, and the content hash it was made from."""
        record = self.get_image(collection, image_id)
        key = (collection, image_id, record.content_hash, size)
        if key in self._thumbs and not is_upload(record.path) and not self.uploads.has(record.content_hash):
            try:  # a cached thumbnail is served only while its file still matches the catalogue
                self._check_unchanged(record, os.stat(record.path))
            except OSError as exc:
                raise NotFound(f"image {record.id} was indexed from a file that no longer exists",
                               code="gone") from exc
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key], record.content_hash
        data = self._source_bytes(record)
        image = decode(data, max_pixels=self.settings.max_pixels, draft_size=size, suffix=Path(record.path).suffix,
                       wait=self.settings.decode_wait)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=82, optimize=True)
        thumb = out.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = thumb
            while len(self._thumbs) > THUMBNAIL_CACHE:
                self._thumbs.popitem(last=False)
        return thumb, record.content_hash

    # -- reading ------------------------------------------------------------------------------
    def _decode_bytes(self, data: bytes, embedder: Embedder, limits: Limits | None, suffix: str = "") -> Image.Image:
        wait = self.settings.decode_wait  # a request's decode waits this long for decode memory, then Busy
        if limits is not None:
            return decode_upload(data, max_bytes=limits.max_bytes, max_pixels=min(limits.max_pixels,
                                 self.settings.max_pixels), draft_size=embedder.draft_size, wait=wait)
        return decode(data, max_pixels=self.settings.max_pixels, draft_size=embedder.draft_size, suffix=suffix,
                      wait=wait)

    def _picture(self, query: str | os.PathLike[str] | bytes | Image.Image, embedder: Embedder,
                 limits: Limits | None) -> Image.Image:
        if isinstance(query, Image.Image):
            return to_rgb(query)
        if isinstance(query, bytes | bytearray):
            return self._decode_bytes(bytes(query), embedder, limits)
        path = Path(query).expanduser()
        return self._decode_bytes(read_bytes(path, self.settings.max_file_bytes), embedder, None, path.suffix)

    def query_vector(self, query: Query | None = None, *, collection: str = DEFAULT_COLLECTION,
                     text: str | None = None, model: str | None = None, rotation_invariant: bool = False,
                     limits: Limits | None = None, timings: dict[str, float] | None = None) -> np.ndarray:
        """The vector a query searches with. `rotation_invariant` embeds the picture at 0, 90, 180 and
        270 degrees and averages: it finds photos stored sideways with no EXIF tag (docs/benchmarks.md)."""
        embedder = self.collection_embedder(collection, model)
        if text is not None:
            return embedder.embed_text([text])[0]
        if isinstance(query, int):
            if not rotation_invariant:
                return self.store.vectors(collection, [query])[0]
            record = self.store.get(collection, [query])
            try:  # the catalogued bytes, checked as /file checks them; else the stored vector
                source = self._source_bytes(record[0]) if record else None
            except LookalikeError:
                source = None
            if source is None:
                return self.store.vectors(collection, [query])[0]  # raises for an unknown id
            query, limits = source, None  # a catalogued file: the library's limits, not the upload ones
        started = time.perf_counter()
        image = self._picture(query, embedder, limits)  # type: ignore[arg-type]
        if timings is not None:
            timings["decode"] = time.perf_counter() - started
        if not rotation_invariant:
            return embedder.embed_images([image])[0]
        views = [image, *(image.transpose(t) for t in (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                                         Image.Transpose.ROTATE_270))]
        mean = embedder.embed_images(views).mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    def search(self, query: Query | None = None, *, k: int = 10, collection: str = DEFAULT_COLLECTION,
               text: str | None = None, flt: Filter | None = None, min_score: float | None = None,
               model: str | None = None, expand: bool = True, rotation_invariant: bool = False,
               limits: Limits | None = None, timings: dict[str, float] | None = None,
               copies: bool = False, objects: bool = False, box: Any = None) -> list[Hit]:
        """Top-k images like `query` (a path, bytes, PIL image or stored id) or like `text`.
        `timings`, if given, receives the seconds spent decoding (picture queries), embedding and searching.
        `copies`: only the images verified as copies of the query picture (see `copies`).
        `objects`: also search with each region found in the query (objects.py), best region per image;
        `box` ("x0,y0,x1,y1" or four numbers, query pixels): search with exactly that crop. A collection
        indexed with regions is always searched region by region too; hits carry the `box` that matched."""
        if query is None and text is None:
            raise LookalikeError("give a query image, an image id, or --text", code="no-query")
        if copies:
            if text is not None:
                raise LookalikeError("copies of a text? give a query image or an image id", code="bad-request")
            started = time.perf_counter()
            found = self.copies(query, k=k, collection=collection, flt=flt, limits=limits)  # type: ignore[arg-type]
            if timings is not None:
                timings.update(embed=0.0, search=time.perf_counter() - started)
            return found  # type: ignore[return-value]
        if self.count(collection) == 0:
            raise EmptyLibrary(f"collection '{collection}' is empty; add images with "
                               f"`lookalike index PATH --collection {collection}`")
        if isinstance(query, int):
            self.get_image(collection, query)
        if text is None and (objects or box is not None or self._has_regions(collection)):
            return self._object_search(query, k=k, collection=collection, flt=flt, min_score=min_score, model=model,
                                       expand=expand, rotation_invariant=rotation_invariant, limits=limits,
                                       timings=timings, objects=objects, box=box)
        started = time.perf_counter()
        vector = self.query_vector(query, collection=collection, text=text, model=model,
                                   rotation_invariant=rotation_invariant, limits=limits, timings=timings)
        embedded = time.perf_counter()
        exclude = {query} if isinstance(query, int) else None
        hits = self.search_vector(vector, k=k, collection=collection, flt=flt, exclude_ids=exclude,
                                  min_score=min_score, expand=expand and text is None)
        if timings is not None:
            timings["embed"] = embedded - started - timings.get("decode", 0.0)
            timings["search"] = time.perf_counter() - embedded
        return hits

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

    def compare(self, a: Query, b: Query, *, collection: str | None = None, model: str | None = None,
                limits: Limits | None = None) -> PairVerdict:
        """Is one picture a copy of the other? `score` in [0, 1] is the copy confidence (local features,
        geometry and pixels: dupes/verify.py), `verdict` "duplicate" for copies, else "similar" or
        "different" by the plain cosine (`similarity`). Each of `a` and `b` is a path, bytes, a PIL
        image, or the id of an image in `collection` (whose model is then used; else `model` or the
        default)."""
        embedder = self.collection_embedder(collection, model) if collection else self.embedder(model)

        def vector(x: Query, label: str) -> np.ndarray:
            try:
                if isinstance(x, int):
                    if not collection:
                        raise LookalikeError(f"{label}_id needs a collection")
                    self.get_image(collection, x)
                    return self.store.vectors(collection, [x])[0]
                return embedder.embed_images([self._picture(x, embedder, limits)])[0]
            except LookalikeError as exc:
                raise exc.reworded(f"image {label}: ") from None

        def picture(x: Query, label: str) -> Image.Image:
            try:
                if isinstance(x, int):
                    return self._record_picture(self.get_image(collection, x))  # type: ignore[arg-type]
                return self._picture(x, embedder, limits)  # type: ignore[arg-type]
            except LookalikeError as exc:
                raise exc.reworded(f"image {label}: ") from None

        from .dupes import verify

        va, vb = vector(a, "a"), vector(b, "b")
        similarity = compare_vectors(va, vb, model=embedder.name, metric=embedder.metric, dim=embedder.dim,
                                     thresholds=self.settings.thresholds())
        pa, pb = picture(a, "a"), picture(b, "b")
        copy = verify.compare(pa, pb)
        copy.cosine = similarity.score
        return verify.PairVerdict(similarity, copy, similar_at=self.settings.thresholds().similar)

    # -- copies and near-duplicates (dupes/) ---------------------------------------------------
    def _record_picture(self, record: ImageRecord) -> Image.Image:
        """An indexed image's picture, for the copy check (the stored upload or the catalogued file)."""
        from .dupes.verify import WORK_SIDE

        return decode(self._source_bytes(record), max_pixels=self.settings.max_pixels, draft_size=WORK_SIDE,
                      suffix=Path(record.path).suffix)

    def dupes(self, collection: str = DEFAULT_COLLECTION, *, depth: int | None = None,
              min_cosine: float | None = None, progress: DupesProgress | None = None) -> DupesReport:
        """Every group of copies in a collection, with the evidence per pair (dupes/groups.py). Pairs
        marked "not duplicates" are never grouped; groups already resolved are left out."""
        from .dupes import Decisions, find_groups
        from .dupes.cache import TurnedVectors
        from .dupes.groups import DEPTH, MIN_COSINE

        metric, _ = self.store.collection_settings(collection)  # raises UnknownCollection
        with Decisions.of_library(self.home) as decisions, TurnedVectors.of_library(self.home) as turned:
            views = self._turned_views(collection, turned) if metric == "cosine" else None
            return find_groups(self.store, collection, self._record_picture, depth=depth or DEPTH,
                               min_cosine=MIN_COSINE if min_cosine is None else min_cosine,
                               decisions=decisions, progress=progress, extra_views=views)

    def _turned_views(self, collection: str, cache: Any) -> Any:
        """ids -> the vectors of their pictures turned by 90 and by 180 degrees, (ids, 2, dim)
        (dupes/cache.py), zeros where a picture can't be read; embedded once per content hash and
        model, then cached. Pictures are decoded and embedded 32 at a time (bounded memory)."""
        from .dupes.cache import TURNS

        embedder = self.collection_embedder(collection)
        keys = [embedder.name if degrees == 90 else f"{embedder.name}@{degrees}" for degrees, _ in TURNS]

        def views(ids: list[int]) -> np.ndarray:
            records = {r.id: r for r in self.store.get(collection, ids)}
            hashes = [records[i].content_hash if i in records else "" for i in ids]
            wanted = [h for h in hashes if h]
            known = [cache.get(key, wanted) for key in keys]
            todo = [(h, records[i]) for h, i in dict(zip(hashes, ids, strict=True)).items()
                    if h and any(h not in k for k in known)]
            for start in range(0, len(todo), 32):
                pictures: dict[str, Image.Image] = {}
                for h, r in todo[start:start + 32]:
                    with suppress(LookalikeError, OSError):
                        pictures[h] = self._record_picture(r)
                if not pictures:
                    continue
                batch = list(pictures)
                for key, (_, turn), got in zip(keys, TURNS, known, strict=True):
                    new = dict(zip(batch, embedder.embed_images([pictures[h].transpose(turn) for h in batch]),
                                   strict=True))
                    cache.put(key, new)
                    got.update(new)
            out = np.zeros((len(ids), len(keys), embedder.dim), np.float32)
            for row, h in enumerate(hashes):
                for col, got in enumerate(known):
                    if h in got:
                        out[row, col] = got[h]
            return out

        return views

    def dupes_plan(self, report: DupesReport, *, keep: str = "best", mode: str = "move",
                   target: str | os.PathLike[str] | None = None) -> Plan:
        """What acting on a report's groups would do; nothing changes (dupes/actions.py)."""
        from .dupes import plan_actions

        return plan_actions(report.groups, keep=keep, mode=mode, target=target, library_home=self.home)

    def dupes_apply(self, plan: Plan, collection: str = DEFAULT_COLLECTION) -> Plan:
        """Carry out a plan: files moved (or trashed, or replaced by links), a manifest written, the
        moved files forgotten by the catalogue and their groups remembered as resolved."""
        from .dupes import Decisions, apply_plan

        apply_plan(plan, self.home, collection=collection)
        done = [a.image_id for a in plan.actions if a.image_id is not None]
        if done:
            self.store.remove(collection, done)
            refine.refresh(self.store, collection)
            self._sync_regions(collection)
            self.store.flush()
        acted = {a.content_hash for a in plan.actions}
        with Decisions.of_library(self.home) as decisions:
            for g in plan.groups:
                if g.hashes & acted:
                    decisions.mark_resolved(g.hashes, action=plan.mode)
        return plan

    def dupes_undo(self, manifest: str | os.PathLike[str]) -> UndoReport:
        """Put back everything a manifest of this library records, re-index the restored files and
        forget the groups' resolution."""
        from .dupes import Decisions, undo

        result = undo(manifest, self.home)
        with Decisions.of_library(self.home) as decisions:
            decisions.forget_resolved(result.hashes)
        if result.restored and result.collection:
            with suppress(UnknownCollection):
                self.index(result.restored, collection=result.collection)
        return result

    def dupes_keep(self, collection: str, ids: list[int], keep: int, *, apply: bool = False,
                   allowed_roots: list[str | os.PathLike[str]] | None = None) -> Plan:
        """One reviewed group (the web page's "keep"): picture `keep` stays, the others among `ids` go to
        the library's trash, undoable with the manifest. A dry run (the plan) unless `apply`.
        `allowed_roots` (a server's): when given, files are acted on only inside those folders."""
        from .dupes import DupesReport, Group

        wanted = list(dict.fromkeys(ids))
        if len(wanted) < 2:
            raise LookalikeError("a group needs two or more images", code="bad-request")
        if keep not in wanted:
            raise LookalikeError(f"the kept image {keep} is not one of the group's ids", code="bad-request")
        records = [self.get_image(collection, i) for i in wanted]  # UnknownImage for a stranger
        plan = self.dupes_plan(DupesReport(collection, groups=[Group(records, [])]), keep=f"id:{keep}",
                               mode="delete")
        if not apply:
            return plan
        if allowed_roots is not None:
            roots = resolve_roots(allowed_roots)
            if not roots:
                raise NotPermitted("moving files from the server is off: list the folders it may change in "
                                   "LOOKALIKE_ALLOWED_ROOTS (or use `lookalike dupes` on the machine)",
                                   code="files-disabled")
            outside = [a.path for a in plan.actions if not is_within(Path(a.path).resolve(), roots)]
            if outside:
                raise NotPermitted(f"'{outside[0]}' is outside the folders this server may change: "
                                   + ", ".join(str(r) for r in roots), code="outside-allowed-roots")
        return self.dupes_apply(plan, collection)

    def not_duplicates(self, targets: list[Query], collection: str = DEFAULT_COLLECTION) -> int:
        """Remember that these pictures (paths, or ids in `collection`) are not copies of each other:
        no later `dupes` groups them. Returns the number of new pairs."""
        from .dupes import Decisions

        if len(targets) < 2:
            raise LookalikeError("--not-duplicates needs two or more images", code="bad-request")
        hashes = []
        for t in targets:
            if isinstance(t, int):
                hashes.append(self.get_image(collection, t).content_hash)
                continue
            if isinstance(t, bytes | bytearray):
                hashes.append(hashlib.sha256(t).hexdigest())
                continue
            path = Path(t).expanduser()  # type: ignore[arg-type]
            if not path.is_file():
                raise NotFound(f"image '{t}' does not exist or is not a file")
            hashes.append(hashlib.sha256(read_bytes(path, self.settings.max_file_bytes)).hexdigest())
        if len(set(hashes)) < 2:
            raise LookalikeError("these files have the same bytes: they are copies", code="bad-request")
        with Decisions.of_library(self.home) as decisions:
            return decisions.mark_not_duplicates(hashes)

    def copies(self, query: Query, *, k: int = 10, collection: str = DEFAULT_COLLECTION,
               flt: Filter | None = None, limits: Limits | None = None) -> list[CopyHit]:
        """Only the indexed images verified as copies of `query`, best first; `score` is the copy
        confidence in [0, 1]. Candidates: the query's nearest neighbours by plain cosine (searched
        with the picture as it is and turned by 90, 180 and 270 degrees, so turned copies are among them)."""
        from .dupes import FeatureCache, copies_of, verify
        from .dupes.groups import DEPTH, MIN_COSINE, CopyHit

        if self.count(collection) == 0:
            raise EmptyLibrary(f"collection '{collection}' is empty; add images with "
                               f"`lookalike index PATH --collection {collection}`")
        embedder = self.collection_embedder(collection)
        if isinstance(query, int):
            record = self.get_image(collection, query)
            picture, vector = self._record_picture(record), self.store.vectors(collection, [query])[0]
        else:
            picture = self._picture(query, embedder, limits)  # type: ignore[arg-type]
            vector = embedder.embed_images([picture])[0]
        depth = max(DEPTH, k)
        candidates: dict[int, float] = {}
        turned = embedder.embed_images([picture.transpose(t) for t in (
            Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)])
        for v in (vector, *turned):
            for hit in nearest(self.store, collection, v, depth, flt=flt,
                               exclude_ids={query} if isinstance(query, int) else None):
                candidates.setdefault(hit.id, 0.0)
        ids = sorted(candidates)
        plain = self.store.vectors(collection, ids) if ids else np.zeros((0, len(vector)), np.float32)
        metric, _ = self.store.collection_settings(collection)
        pairs = [(i, max(float(np.dot(plain[n], v)) for v in (vector, *turned)) if metric == "cosine" else 1.0)
                 for n, i in enumerate(ids)]
        pairs = [(i, c) for i, c in pairs if c >= MIN_COSINE or metric != "cosine"]
        records = {r.id: r for r in self.store.get(collection, [i for i, _ in pairs])}
        cache = FeatureCache(records.__getitem__, self._record_picture, size=len(pairs) + 1)
        found = copies_of(verify.extract(picture), pairs, cache)[:k]
        return [CopyHit(i, records[i].path, c.score, records[i], comparison=c) for i, c in found]

    # -- object-aware search (issue 17, objects.py) ---------------------------------------------
    def detector(self, name: str | None = None) -> Any:
        """The object detector (detect/): `name`, else $LOOKALIKE_DETECTOR (e.g. `yolo:/models/yolov8n.onnx`,
        `proposals`), else SSD; the class-agnostic proposals alone when the SSD's file is not at hand."""
        from .detect import get_detector

        name = name or os.environ.get("LOOKALIKE_DETECTOR") or "ssd"
        with self._embed_lock:
            key = f"detector:{name}"
            if key not in self._embedders:
                try:
                    self._embedders[key] = get_detector(name, self.model_dir, threads=self.settings.intra_op_threads)
                except LookalikeError:
                    if name != "ssd":
                        raise
                    self._embedders[key] = get_detector("proposals", self.model_dir)
            return self._embedders[key]

    def regions(self, query: Query, *, collection: str | None = None, limits: Limits | None = None) -> QueryRegions:
        """The regions `search(objects=True)` searches with (detect.Region: box, score, label, source), with
        the size of the picture their boxes are in (what a client needs to draw them over its preview)."""
        from .objects import QueryRegions, pick_regions

        embedder = self.collection_embedder(collection) if collection else self.embedder()
        picture = self._region_picture(query, collection, embedder, limits)
        return QueryRegions(picture.width, picture.height, pick_regions(picture, self._detect_fn()))

    def _detect_fn(self) -> Any:
        detector = self.detector()
        return None if detector.name == "proposals" else detector.detect

    def _has_regions(self, collection: str) -> bool:
        from .objects import has_regions

        return has_regions(self.store, collection)

    @staticmethod
    def _check_regions_mode(mode: str) -> None:
        from .objects import REGION_MODES

        if mode not in REGION_MODES:
            raise LookalikeError(f"unknown regions mode '{mode}': use {', '.join(REGION_MODES)}")

    def _sync_regions(self, collection: str, *, create: bool = False, progress: ProgressFn | None = None) -> None:
        """Keep the collection's region rows in step with its images (objects.sync_regions)."""
        from .objects import ensure_companion, has_regions, sync_regions

        if create:
            ensure_companion(self.store, collection)
        elif not has_regions(self.store, collection):
            return
        embedder = self.collection_embedder(collection)

        def picture(record: ImageRecord) -> Image.Image:
            return decode(self._source_bytes(record), max_pixels=self.settings.max_pixels,
                          draft_size=2 * (embedder.draft_size or 224), suffix=Path(record.path).suffix)

        sync_regions(self.store, collection, embedder, picture, self._detect_fn(),
                     progress=progress)  # type: ignore[arg-type]
        self.store.flush()

    def _region_picture(self, query: Query, collection: str | None, embedder: Embedder,
                        limits: Limits | None) -> Image.Image:
        """The query picture at full size (no DCT reduction), so boxes are in the picture's own pixels."""
        wait = self.settings.decode_wait
        if isinstance(query, Image.Image):
            return to_rgb(query)
        if isinstance(query, int):
            if collection is None:
                raise LookalikeError("an image id needs a collection")
            record = self.get_image(collection, query)
            return decode(self._source_bytes(record), max_pixels=self.settings.max_pixels,
                          suffix=Path(record.path).suffix, wait=wait)
        if isinstance(query, bytes | bytearray):
            if limits is not None:
                return decode_upload(bytes(query), max_bytes=limits.max_bytes, wait=wait,
                                     max_pixels=min(limits.max_pixels, self.settings.max_pixels))
            return decode(bytes(query), max_pixels=self.settings.max_pixels, wait=wait)
        path = Path(query).expanduser()
        return decode(read_bytes(path, self.settings.max_file_bytes), max_pixels=self.settings.max_pixels,
                      suffix=path.suffix, wait=wait)

    def _object_search(self, query: Query, *, k: int, collection: str, flt: Filter | None, min_score: float | None,
                       model: str | None, expand: bool, rotation_invariant: bool, limits: Limits | None,
                       timings: dict[str, float] | None, objects: bool, box: Any) -> list[Hit]:
        from .objects import check_box, merge, parse_box, pick_regions

        started = time.perf_counter()
        embedder = self.collection_embedder(collection, model)
        wanted = parse_box(box)
        searches: list[tuple[np.ndarray, list[int] | None]] = []
        if wanted is not None or objects:
            picture = self._region_picture(query, collection, embedder, limits)
            if wanted is not None:
                crop = check_box(wanted, *picture.size)
                searches.append((embedder.embed_images([picture.crop(crop)])[0], list(crop)))
            else:
                regions = pick_regions(picture, self._detect_fn())
                vectors = embedder.embed_images([picture] + [picture.crop(r.box) for r in regions])
                searches = [(vectors[0], None)] + [(v, list(r.box)) for v, r in zip(vectors[1:], regions, strict=True)]
        else:
            searches.append((self.query_vector(query, collection=collection, model=model,
                                               rotation_invariant=rotation_invariant, limits=limits), None))
        embedded = time.perf_counter()
        exclude = {query} if isinstance(query, int) else None

        params = refine.RefineParams.from_settings(*self.store.collection_settings(collection))

        def expanded(vector: np.ndarray) -> np.ndarray:
            return refine.expand_query(self.store, collection, vector, params, flt) if expand else vector

        matches = merge(self.store, collection, searches, k, expand=expanded, flt=flt, exclude_ids=exclude,
                        min_score=min_score)
        records = {r.id: r for r in self.store.get(collection, [m.id for m in matches])}
        hits = [Hit(m.id, records[m.id].path, m.score, records[m.id], box=m.box, query_box=m.query_box)
                for m in matches if m.id in records]
        if timings is not None:
            timings["embed"] = embedded - started
            timings["search"] = time.perf_counter() - embedded
        return hits

    # -- refinement ---------------------------------------------------------------------------
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

    # -- moving a collection between stores (issue 18) ------------------------------------------
    def migrate(self, collection: str, to: str, *, source: str | None = None, batch: int = 1000,
                progress: Any = None) -> Any:
        """Copy `collection` from this library's store (or the store URI `source`) to the store URI `to`:
        rows with their ids, vectors and refinement, in batches; run again to resume after a kill.
        Returns a migrate.MigrateReport (verified by counts and sampled vectors)."""
        from .migrate import migrate

        from_uri = source or self.settings.store
        if _same_store(from_uri, to):
            raise LookalikeError(f"--to {to} is the store the collection is in; name another store")
        options = {"exact_below": self.settings.exact_below}
        src = self.store if source is None else open_store(self.home, source, **options)
        try:
            dst = open_store(self.home, to, **options)
            try:
                return migrate(src, dst, collection, batch=batch, source_name=from_uri, target_name=to,
                               progress=progress)
            finally:
                dst.close()
        finally:
            if src is not self.store:
                src.close()

    # -- training (issue 16) ------------------------------------------------------------------
    def train(self, name: str, collection: str = DEFAULT_COLLECTION, *,
              labels: str | os.PathLike[str] | None = None, self_supervised: bool = False, force: bool = False,
              resume: bool = False, progress: Any = None, **params: Any) -> dict[str, Any]:
        """Train model `name` on `collection`'s pictures: with `labels` (CSV image,label or a folder per
        class) a metric-learning head, with `self_supervised` a contrastive one; the pretrained model
        stays frozen. Returns the model card; the model is then usable as `model=name` everywhere.
        `params`: see lookalike.train.fit.Config (dim, epochs, loss, views, ...). Needs the `train` extra."""
        from .train.run import train

        return train(self, name, collection, labels=labels, self_supervised=self_supervised, force=force,
                     resume=resume, progress=progress, **params)
