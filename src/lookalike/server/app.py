"""The HTTP service: a thin FastAPI face over `Library`, plus the web page at `/`.

Blocking work (decoding, inference, the store) runs in FastAPI's thread pool; the store is thread-safe
and ONNX Runtime sessions may run concurrently. Index jobs run in one background thread (`jobs`).
Every error is a JSON body `{"error": "<code>", "message": "<one line>"}` with a 4xx/5xx status.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, Security, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import DEFAULT_COLLECTION
from ..decode import decode, read_bytes
from ..embed import Embedder, model_cards, resolve
from ..errors import DecodeError, EmptyLibrary, LookalikeError, ModelMismatch, UnknownCollection
from ..ingest import ensure_collection
from ..library import Library
from ..store import Filter, ImageRecord
from .jobs import Job, JobManager
from .metrics import Metrics
from .settings import ServerSettings

log = logging.getLogger("lookalike.server")
STATIC = Path(__file__).resolve().parent / "static"
UPLOAD_PREFIX = "upload:"
HEX64 = re.compile(r"[0-9a-f]{64}")

# Content sniffing: the first bytes decide, never the file name or the client's Content-Type.
_MAGIC: list[tuple[str, Callable[[bytes], bool]]] = [
    ("jpeg", lambda b: b[:3] == b"\xff\xd8\xff"),
    ("png", lambda b: b[:8] == b"\x89PNG\r\n\x1a\n"),
    ("gif", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
    ("webp", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("bmp", lambda b: b[:2] == b"BM"),
    ("tiff", lambda b: b[:4] in (b"II*\x00", b"MM\x00*")),
    ("heif", lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"mif1",
                                                          b"msf1", b"heim", b"heis", b"avif", b"avis")),
]
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
               "bmp": "image/bmp", "tiff": "image/tiff", "heif": "image/heif"}


def sniff(data: bytes) -> str | None:
    """The image format named by the content's magic bytes, or None."""
    return next((name for name, test in _MAGIC if test(data[:16])), None)


class ApiError(HTTPException):
    """An error with a stable machine code; rendered as {"error": code, "message": message}."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(status_code=status, detail=message)
        self.code = code
        self.extra = extra


def api_error_for(exc: LookalikeError) -> ApiError:
    message = str(exc)
    if isinstance(exc, UnknownCollection):
        return ApiError(404, "unknown-collection", message)
    if isinstance(exc, ModelMismatch):
        return ApiError(409, "model-mismatch", message)
    if isinstance(exc, EmptyLibrary):
        return ApiError(409, "empty-collection", message)
    if isinstance(exc, DecodeError):
        status = {"not-an-image": 415, "too-large": 413, "empty": 400}.get(exc.reason, 422)
        return ApiError(status, exc.reason, f"cannot read the image: {message}")
    if message.startswith("no image with id"):
        return ApiError(404, "unknown-image", message)
    if "already exists" in message:
        return ApiError(409, "exists", message)
    return ApiError(400, "bad-request", message)


# -- request/response models (for validation and the OpenAPI page) --------------------------------
class CollectionCreate(BaseModel):
    name: str = Field(description="1-64 letters, digits, '_', '-', '.'")
    model: str | None = Field(None, description="Embedder name (GET /api/models); default: the library's")
    index_spec: str = Field("auto", description="'auto' or a Faiss index_factory string, e.g. 'HNSW32'")


class MetadataUpdate(BaseModel):
    group_id: str | None = None
    tags: list[str] | None = Field(None, description="Replaces the image's tags")
    metadata: dict[str, Any] | None = Field(None, description="Merged into the image's metadata")


class IndexRequest(BaseModel):
    path: str | None = Field(None, description="A server-side folder or file under an allowed root")
    paths: list[str] = Field(default_factory=list)
    prune: bool = Field(False, description="Forget indexed files under the paths that no longer exist")
    group_id: str | None = None
    tags: list[str] = Field(default_factory=list)
    model: str | None = None
    index_spec: str = "auto"


SEARCH_OPENAPI: dict[str, Any] = {
    "parameters": [
        {"name": n, "in": "query", "required": False, "schema": s, "description": d} for n, s, d in [
            ("k", {"type": "integer", "default": 10}, "results to return"),
            ("collection", {"type": "string", "default": DEFAULT_COLLECTION}, "collection to search"),
            ("id", {"type": "integer"}, "more like this indexed image (instead of an upload)"),
            ("text", {"type": "string"}, "search by text (models with a text tower)"),
            ("min_score", {"type": "number"}, "drop results scoring below this"),
            ("expand", {"type": "boolean", "default": True},
             "query expansion on the collection's refined index (false: plain cosine ranking)"),
            ("rotation_invariant", {"type": "boolean", "default": False},
             "also find copies rotated by 90/180/270 degrees (embeds the query 4 times)"),
            ("group_id", {"type": "string"}, "only images with this group id"),
            ("tag", {"type": "array", "items": {"type": "string"}}, "only images carrying every tag"),
            ("where", {"type": "array", "items": {"type": "string"}}, "metadata KEY=VALUE (repeatable)"),
            ("under", {"type": "string"}, "only images under this folder"),
        ]],
    "requestBody": {"required": False, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}, "k": {"type": "integer"},
            "collection": {"type": "string"}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "image_base64": {"type": "string"}, "text": {"type": "string"}, "id": {"type": "integer"},
            "k": {"type": "integer"}, "collection": {"type": "string"}, "min_score": {"type": "number"},
            "expand": {"type": "boolean"}, "rotation_invariant": {"type": "boolean"}, "group_id": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "metadata": {"type": "object"}, "under": {"type": "string"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }},
}


# -- state ------------------------------------------------------------------------------------------
class ServiceState:
    def __init__(self, library: Library, settings: ServerSettings, owns_library: bool) -> None:
        self.lib = library
        self.settings = settings
        self.owns_library = owns_library
        self.uploads = library.home / "uploads"
        self.jobs = JobManager(self._run_job)
        self.metrics = Metrics(self._collections_safe, self.jobs)
        self.ready = False
        self.ready_error: str | None = None
        self.shutting_down = False
        self._embed_lock = threading.Lock()
        self._write_lock = threading.Lock()  # uploads: check-then-write of collection + upload files
        self._thumbs: OrderedDict[tuple[str, int, str, int], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()

    # -- models and collections
    def _collections_safe(self) -> list[Any]:
        return self.lib.collections()

    def embedder(self, model: str | None = None) -> Embedder:
        with self._embed_lock:
            return self.lib.embedder(model)

    def embedder_for(self, collection: str, model: str | None = None) -> Embedder:
        with self._embed_lock:
            return self.lib.collection_embedder(collection, model)

    def write_embedder(self, collection: str, model: str | None = None) -> Embedder:
        """The collection's model if it exists, else `model` or the default (collection made on write)."""
        try:
            return self.embedder_for(collection, model)
        except UnknownCollection:
            return self.embedder(model)

    def text_models(self) -> set[str]:
        return {c.name for c in model_cards() if c.text}

    def collection_out(self, name: str) -> dict[str, Any]:
        return self.info_out(self.lib.info(name))

    def info_out(self, info: Any) -> dict[str, Any]:
        data = info.to_dict()
        data["text"] = info.model in self.text_models()
        return data

    def warm_up(self) -> None:
        """Load the default model and every collection's model, and run each once."""
        try:
            models = {resolve(self.lib.settings.model, self.lib.model_dir)} | {c.model for c in self.lib.collections()}
            for name in sorted(models):
                with suppress(LookalikeError):
                    self.embedder(name).embed_images([Image.new("RGB", (64, 64), "gray")])
            self.ready = True
            log.info("ready", extra={"models": sorted(models)})
        except Exception as exc:  # noqa: BLE001 - reported by /readyz
            self.ready_error = str(exc) or type(exc).__name__
            log.error("warm-up failed", extra={"error": self.ready_error})

    # -- uploads
    def decode_upload(self, data: bytes, embedder: Embedder | None) -> Image.Image:
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise ApiError(413, "too-large", f"upload of {len(data)} bytes is over the {limit} byte limit")
        if not data:
            raise ApiError(400, "empty", "the upload is empty; send the image bytes in the `file` field")
        if sniff(data) is None:
            raise ApiError(415, "not-an-image", "the upload is not an image (JPEG, PNG, GIF, WebP, BMP, TIFF, "
                                                "HEIC or AVIF, judged by its content)")
        max_pixels = min(self.lib.settings.max_pixels, self.settings.max_upload_pixels)
        return decode(data, max_pixels=max_pixels, draft_size=embedder.draft_size if embedder else None)

    def store_upload(self, data: bytes, digest: str) -> None:
        self.uploads.mkdir(parents=True, exist_ok=True)
        target = self.uploads / digest
        if target.exists():
            return
        tmp = self.uploads / f".{digest}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)

    def gc_uploads(self, hashes: set[str]) -> None:
        """Delete stored upload bytes no image in any collection refers to any more."""
        hashes = {h for h in hashes if h and HEX64.fullmatch(h) and (self.uploads / h).exists()}
        if not hashes:
            return
        with self._write_lock:
            used: set[str] = set()
            for info in self.lib.collections():
                used |= {v[3] for v in self.lib.store.known_files(info.name).values()}
            for digest in hashes - used:
                (self.uploads / digest).unlink(missing_ok=True)

    def add_images(self, collection: str, items: list[tuple[bytes, str | None]], *, group_id: str | None,
                   tags: list[str], metadata: dict[str, Any], model: str | None = None) -> list[ImageRecord]:
        """Decode and embed every upload first, then write them in one transaction: all or nothing."""
        embedder = self.write_embedder(collection, model)
        names = [name for _, name in items if name]
        if len(names) != len(set(names)):
            raise ApiError(400, "duplicate-id", "the same id is given to more than one upload")
        records: list[ImageRecord] = []
        images: list[Image.Image] = []
        for index, (data, name) in enumerate(items):
            try:
                image = self.decode_upload(data, embedder)
            except (ApiError, DecodeError) as exc:
                err = api_error_for(exc) if isinstance(exc, DecodeError) else exc
                if len(items) > 1:
                    err.extra["index"] = index
                    err.detail = f"upload #{index + 1}: {err.detail}; nothing was added"
                raise err from None
            digest = hashlib.sha256(data).hexdigest()
            records.append(ImageRecord(path=UPLOAD_PREFIX + (name or digest[:16]), content_hash=digest,
                                       size=len(data), width=image.size[0], height=image.size[1],
                                       group_id=group_id, tags=list(tags), metadata=dict(metadata)))
            images.append(image)
        vectors = embedder.embed_images(images)
        with self._write_lock:
            for (data, _), rec in zip(items, records, strict=True):
                self.store_upload(data, rec.content_hash)
            created = False
            try:
                self.lib.store.collection(collection)
            except UnknownCollection:
                ensure_collection(self.lib.store, collection, embedder, settings=self.lib.settings)
                created = True
            try:
                old = {r.path: r.content_hash for r in self._records_by_path(collection, records)}
                self.lib.store.upsert(collection, records, vectors)
                self.lib.refresh(collection)
            except BaseException:
                if created:
                    with suppress(LookalikeError):
                        self.lib.store.drop_collection(collection)
                raise
        self.lib.store.flush()
        self.gc_uploads(set(old.values()) - {r.content_hash for r in records})
        return records

    def _records_by_path(self, collection: str, records: list[ImageRecord]) -> list[ImageRecord]:
        ids = self.lib.store.find_ids(collection, paths=[r.path for r in records])
        return self.lib.store.get(collection, ids) if ids else []

    def replace_image(self, collection: str, image_id: int, data: bytes, *, group_id: str | None,
                      tags: list[str] | None, metadata: dict[str, Any] | None) -> ImageRecord:
        old = self.get_record(collection, image_id)
        embedder = self.embedder_for(collection)
        image = self.decode_upload(data, embedder)
        digest = hashlib.sha256(data).hexdigest()
        record = ImageRecord(path=old.path, content_hash=digest, size=len(data), mtime=0.0,
                             width=image.size[0], height=image.size[1],
                             group_id=group_id if group_id is not None else old.group_id,
                             tags=list(tags) if tags is not None else old.tags,
                             metadata={**old.metadata, **(metadata or {})})
        vector = embedder.embed_images([image])
        with self._write_lock:
            self.store_upload(data, digest)
            if not self.lib.store.get(collection, [image_id]):
                raise ApiError(404, "unknown-image", f"no image with id {image_id} in collection '{collection}'")
            self.lib.store.upsert(collection, [record], vector)
            self.lib.refresh(collection)
        self.lib.store.flush()
        if old.content_hash != digest:
            self.gc_uploads({old.content_hash})
        return record

    # -- reads
    def get_record(self, collection: str, image_id: int) -> ImageRecord:
        self.lib.store.collection(collection)
        found = self.lib.store.get(collection, [image_id])
        if not found:
            raise ApiError(404, "unknown-image", f"no image with id {image_id} in collection '{collection}'")
        return found[0]

    def source_bytes(self, record: ImageRecord) -> bytes:
        """An image's bytes: the stored upload, or the catalogued file (never any other path)."""
        if record.content_hash and HEX64.fullmatch(record.content_hash):
            stored = self.uploads / record.content_hash
            if stored.is_file():
                return stored.read_bytes()
        if record.path.startswith(UPLOAD_PREFIX) or not os.path.isabs(record.path):
            raise ApiError(404, "gone", f"the bytes of image {record.id} are not stored on this server")
        path = Path(record.path)
        if not path.is_file():
            raise ApiError(404, "gone", f"image {record.id} was indexed from a file that no longer exists")
        try:
            return read_bytes(path, self.lib.settings.max_file_bytes)
        except DecodeError as exc:
            raise ApiError(404, "gone", f"image {record.id} cannot be read: {exc}") from exc

    def thumbnail(self, collection: str, image_id: int, size: int) -> tuple[bytes, str]:
        record = self.get_record(collection, image_id)
        key = (collection, image_id, record.content_hash, size)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key], record.content_hash
        data = self.source_bytes(record)
        image = decode(data, max_pixels=self.lib.settings.max_pixels, draft_size=size,
                       suffix=Path(record.path).suffix)
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, "JPEG", quality=82, optimize=True)
        thumb = out.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = thumb
            while len(self._thumbs) > 2048:
                self._thumbs.popitem(last=False)
        return thumb, record.content_hash

    def record_out(self, collection: str, record: ImageRecord, score: float | None = None,
                   rank: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if rank is not None:
            data["rank"] = rank
        data["id"] = record.id
        if score is not None:
            data["score"] = round(float(score), 6)
        data.update(record.to_dict())
        if record.path.startswith(UPLOAD_PREFIX):
            data["external_id"] = record.path[len(UPLOAD_PREFIX):]
        base = f"/api/collections/{collection}/images/{record.id}"
        data["thumbnail_url"] = base + "/thumbnail"
        data["image_url"] = base + "/file"
        return data

    def search(self, collection: str, *, image: bytes | None, text: str | None, image_id: int | None,
               k: int, flt: Filter | None, min_score: float | None, expand: bool = True,
               rotation_invariant: bool = False) -> dict[str, Any]:
        started = time.perf_counter()
        embedder = self.embedder_for(collection)
        query: Any = None
        if image is not None:
            query = self.decode_upload(image, embedder)
            self.metrics.search_steps.labels("decode").observe(time.perf_counter() - started)
        elif image_id is not None:
            self.get_record(collection, image_id)
            query = image_id
        step = time.perf_counter()
        hits = self.lib.search(query, k=k, collection=collection, text=text, flt=flt, min_score=min_score,
                               expand=expand, rotation_invariant=rotation_invariant)
        self.metrics.search_steps.labels("embed+nearest").observe(time.perf_counter() - step)
        return {
            "collection": collection, "model": embedder.name, "k": k, "expand": expand,
            "rotation_invariant": rotation_invariant,
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
            "results": [self.record_out(collection, h.record, h.score, rank)
                        for rank, h in enumerate(hits, 1)],
        }

    def compare(self, a: bytes | int, b: bytes | int, collection: str | None, model: str | None
                ) -> dict[str, Any]:
        if collection:
            embedder = self.embedder_for(collection, model)
        else:
            embedder = self.embedder(model)

        def vector(x: bytes | int, label: str) -> np.ndarray:
            if isinstance(x, int):
                if not collection:
                    raise ApiError(400, "bad-request", f"{label}_id needs a collection")
                self.get_record(collection, x)
                return self.lib.store.vectors(collection, [x])[0]
            try:
                return embedder.embed_images([self.decode_upload(x, embedder)])[0]
            except ApiError as exc:
                exc.detail = f"image {label}: {exc.detail}"
                raise
            except DecodeError as exc:
                err = api_error_for(exc)
                err.detail = f"image {label}: {err.detail}"
                raise err from None

        va, vb = vector(a, "a"), vector(b, "b")
        if embedder.metric == "hamming":
            bits = int(np.unpackbits(np.bitwise_xor(va.astype(np.uint8), vb.astype(np.uint8))).sum())
            raw = 1.0 - bits / embedder.dim
        else:
            raw = float(np.dot(va.astype(np.float32), vb.astype(np.float32)))
        similarity = min(1.0, max(0.0, raw))
        s = self.settings
        verdict = ("duplicate" if similarity >= s.duplicate_threshold
                   else "similar" if similarity >= s.similar_threshold else "different")
        return {"similarity": round(similarity, 6), "verdict": verdict, "model": embedder.name,
                "metric": embedder.metric, "raw_score": round(raw, 6),
                "thresholds": {"duplicate": s.duplicate_threshold, "similar": s.similar_threshold}}

    # -- index jobs
    def check_root(self, raw: str) -> str:
        roots = self.settings.resolved_roots()
        if not roots:
            raise ApiError(403, "indexing-disabled", "server-side indexing is off: list the folders it may read "
                                                     "in LOOKALIKE_ALLOWED_ROOTS (or allowed_roots in lookalike.toml)")
        if not raw or "\x00" in raw or not os.path.isabs(os.path.expanduser(raw)):
            raise ApiError(400, "bad-path", f"'{raw}' is not an absolute path")
        resolved = Path(os.path.expanduser(raw)).resolve()
        if not any(resolved == root or root in resolved.parents for root in roots):
            raise ApiError(403, "outside-allowed-roots",
                           f"'{raw}' is outside the folders this server may index: "
                           + ", ".join(str(r) for r in roots))
        if not resolved.exists():
            raise ApiError(404, "missing", f"'{raw}' does not exist on the server")
        return str(resolved)

    def _run_job(self, job: Job, progress: Callable[[int, int], None]) -> dict[str, Any]:
        opts = job.options
        report = self.lib.index(job.paths, job.collection, model=opts.get("model"), prune=opts.get("prune", False),
                                group_id=opts.get("group_id"), tags=opts.get("tags") or [],
                                index_spec=opts.get("index_spec", "auto"), progress=progress)
        data = report.to_dict()
        skipped = data.pop("skipped")
        data["skipped"] = skipped[:50]
        data["skipped_total"] = len(skipped)
        return data


# -- helpers ----------------------------------------------------------------------------------------
def _split_tags(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out += [t.strip() for t in str(value).split(",") if t.strip()]
    return out


def _metadata_json(raw: str | None) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "bad-metadata", f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "bad-metadata", "metadata must be a JSON object")
    return value


async def _read_upload(upload: StarletteUploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too-large", f"upload '{upload.filename}' is over the {limit} byte limit")
    return data


def _bool_param(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no", ""):
        raise ApiError(422, "bad-parameter", f"{name} must be true or false, not {value!r}")
    return text in ("true", "1", "yes") or (text == "" and default)


def _int_param(params: dict[str, Any], name: str, default: int | None = None, lo: int | None = None,
               hi: int | None = None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
        if isinstance(value, float | bool):
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "bad-parameter", f"{name} must be an integer, not {value!r}") from exc
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ApiError(422, "bad-parameter", f"{name} must be between {lo} and {hi}")
    return number


def _search_filter(params: dict[str, Any]) -> Filter | None:
    metadata: dict[str, Any] = {}
    raw_meta = params.get("metadata")
    if isinstance(raw_meta, dict):
        metadata.update(raw_meta)
    elif isinstance(raw_meta, str) and raw_meta:
        metadata.update(_metadata_json(raw_meta))
    for item in params.get("where") or []:
        if "=" not in str(item):
            raise ApiError(422, "bad-parameter", f"where '{item}' is not KEY=VALUE")
        key, value = str(item).split("=", 1)
        metadata[key] = value
    under = params.get("under")
    flt = Filter(group_id=params.get("group_id") or None, tags=_split_tags(params.get("tags")),
                 metadata=metadata, path_prefix=str(under) if under else None)
    return None if flt.is_empty() else flt


def _json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status, headers=headers)


# -- middleware -------------------------------------------------------------------------------------
DRAIN_CAP = 256 * 1024 * 1024  # bodies over the limit but under this are read and dropped before the 413


async def _drain(receive: Callable[[], Awaitable[dict[str, Any]]], *, more: bool, received: int = 0) -> None:
    while more and received <= DRAIN_CAP:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        received += len(msg.get("body", b""))
        more = msg.get("more_body", False)


class BodyLimit:
    """Refuse request bodies over the limit: by Content-Length up front, else while streaming."""

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app = app
        self.bulk = re.compile(r"^/api/collections/[^/]+/images/bulk/?$")
        self.settings = settings

    def limit_for(self, path: str) -> int:
        if self.bulk.match(path):
            return self.settings.max_bulk_bytes
        # room for base64 JSON (4/3) and multipart framing around one image
        return self.settings.max_upload_bytes * 4 // 3 + 1024 * 1024

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        message = (f"request body is over the {limit} byte limit for a bulk upload" if self.bulk.match(scope["path"])
                   else f"request body is too large: an image may be up to {self.settings.max_upload_bytes} bytes")
        if length is not None and length.isdigit() and int(length) > limit:
            if int(length) <= DRAIN_CAP:  # read and drop the body, so the client gets to read the answer
                await _drain(receive, more=True)
            await _json_error(413, "too-large", message, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def limited() -> dict[str, Any]:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    await _drain(receive, more=msg.get("more_body", False), received=received)
                    raise ApiError(413, "too-large", message)
            return msg

        await self.app(scope, limited, send)


class Observe:
    """Request id, Prometheus counts and latencies, and one structured log line per request."""

    def __init__(self, app: Any, state: ServiceState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")[:64] \
            or uuid.uuid4().hex[:16]
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched")
            self.state.metrics.observe(scope["method"], template, status, seconds)
            if template not in ("/healthz", "/readyz", "/metrics"):
                client = scope.get("client")
                log.info("request", extra={
                    "method": scope["method"], "path": scope["path"], "route": template, "status": status,
                    "ms": round(seconds * 1000, 2), "request_id": request_id,
                    "client": client[0] if client else None})


# -- the app ----------------------------------------------------------------------------------------
def create_app(library: Library | None = None, *, home: str | os.PathLike[str] | None = None,
               settings: ServerSettings | None = None, owns_library: bool | None = None) -> FastAPI:
    """The ASGI app. Given a `library`, the caller keeps ownership (it is not closed on shutdown)."""
    if owns_library is None:
        owns_library = library is None
    lib = library or Library.open(home)
    settings = settings or ServerSettings.load(lib.settings)
    state = ServiceState(lib, settings, owns_library)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        threading.Thread(target=state.warm_up, name="warm-up", daemon=True).start()
        yield
        state.shutting_down = True
        log.info("shutting down", extra={"running_jobs": state.jobs.running})
        await run_in_threadpool(state.jobs.shutdown, settings.shutdown_timeout)
        if state.owns_library:
            state.lib.close()

    from .. import __version__

    app = FastAPI(title="lookalike", version=__version__, lifespan=lifespan,
                  description="Self-hosted reverse image search. Errors are JSON: "
                              '`{"error": "<code>", "message": "<what is wrong and what to do>"}`. '
                              "Write endpoints need the `X-API-Key` header when the server has an API key.")
    app.state.service = state

    app.add_middleware(BodyLimit, settings=settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["X-Request-ID"])
    app.add_middleware(Observe, state=state)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or {404: "not-found", 405: "method-not-allowed"}.get(
            exc.status_code, "error")
        extra = getattr(exc, "extra", {})
        return _json_error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None), **extra)

    @app.exception_handler(LookalikeError)
    async def user_error(request: Request, exc: LookalikeError) -> JSONResponse:
        err = api_error_for(exc)
        return _json_error(err.status_code, err.code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid")
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
        return _json_error(422, "invalid-request", message, details=details)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return _json_error(500, "internal", f"internal error ({type(exc).__name__}); see the server log")

    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Needed for writes when "
                                  "the server has LOOKALIKE_API_KEY set")

    def require_key(request: Request, key: str | None = Security(api_key_header)) -> None:
        expected = settings.api_key
        if not expected:
            return
        auth = request.headers.get("authorization", "")
        given = key or (auth[7:].strip() if auth.lower().startswith("bearer ") else "")
        if not given:
            raise ApiError(401, "unauthorized", "this endpoint needs the server's API key in the X-API-Key header")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(403, "forbidden", "the API key is wrong")

    write = [Depends(require_key)]

    # -- page and operations
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: library open and models loaded")
    def readyz() -> JSONResponse:
        if state.shutting_down:
            return _json_error(503, "shutting-down", "the server is shutting down")
        if state.ready_error:
            return _json_error(503, "not-ready", f"model warm-up failed: {state.ready_error}")
        if not state.ready:
            return _json_error(503, "not-ready", "loading models; try again in a few seconds")
        return JSONResponse({"status": "ready", "collections": len(state.lib.collections())})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/models", tags=["collections"], summary="Embedders this server can use")
    def models() -> dict[str, Any]:
        return {"default": resolve(state.lib.settings.model, state.lib.model_dir),
                "models": [c.to_dict() for c in model_cards()]}

    # -- search and compare
    async def search(request: Request) -> JSONResponse:
        params: dict[str, Any] = {k: v for k, v in request.query_params.items()}
        params["tags"] = request.query_params.getlist("tag") + request.query_params.getlist("tags")
        params["where"] = request.query_params.getlist("where")
        image: bytes | None = None
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            form = await request.form()
            try:
                for key, value in form.multi_items():
                    if isinstance(value, StarletteUploadFile):
                        if key in ("file", "image"):
                            image = await _read_upload(value, settings.max_upload_bytes)
                    elif key in ("tag", "tags"):
                        params["tags"].append(value)
                    elif key == "where":
                        params["where"].append(value)
                    else:
                        params[key] = value
            finally:
                await form.close()
        elif ctype == "application/json" or ctype.endswith("+json"):
            try:
                body = await request.json()
            except ValueError as exc:
                raise ApiError(400, "bad-json", f"the body is not valid JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise ApiError(400, "bad-json", "the JSON body must be an object")
            filters = body.pop("filters", None)
            if isinstance(filters, dict):
                body.update(filters)
            encoded = body.pop("image_base64", None) or body.pop("image", None)
            if encoded is not None:
                if not isinstance(encoded, str):
                    raise ApiError(400, "bad-base64", "image_base64 must be a base64 string")
                encoded = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded
                if len(encoded) > settings.max_upload_bytes * 4 // 3 + 8:
                    raise ApiError(413, "too-large", f"image is over the {settings.max_upload_bytes} byte limit")
                try:
                    image = base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ApiError(400, "bad-base64", f"image_base64 is not valid base64: {exc}") from exc
            for key in ("tags", "tag", "where"):
                value = body.pop(key, None)
                if value is not None:
                    params["tags" if key == "tag" else key] += value if isinstance(value, list) else [value]
            params.update(body)
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            image = await request.body()
        elif ctype:
            raise ApiError(415, "unsupported-content-type",
                           f"send multipart/form-data (field `file`), an image body, or JSON, not {ctype}")
        if "group" in params and "group_id" not in params:
            params["group_id"] = params["group"]
        k = _int_param(params, "k", 10, 1, settings.max_k)
        image_id = _int_param(params, "id")
        text = params.get("text") or None
        if text is not None and not isinstance(text, str):
            raise ApiError(422, "bad-parameter", "text must be a string")
        given = sum(x is not None for x in (image, text, image_id))
        if given != 1:
            raise ApiError(400, "no-query" if given == 0 else "ambiguous-query",
                           "give exactly one query: an image (`file` upload, image body or image_base64), "
                           "`text`, or an indexed image `id`")
        min_score = params.get("min_score")
        try:
            min_score = float(min_score) if min_score not in (None, "") else None
        except (TypeError, ValueError) as exc:
            raise ApiError(422, "bad-parameter", f"min_score must be a number, not {min_score!r}") from exc
        collection = str(params.get("collection") or DEFAULT_COLLECTION)
        result = await run_in_threadpool(state.search, collection, image=image, text=text, image_id=image_id,
                                         k=k or 10, flt=_search_filter(params), min_score=min_score,
                                         expand=_bool_param(params, "expand", True),
                                         rotation_invariant=_bool_param(params, "rotation_invariant", False))
        return JSONResponse(result)

    app.add_api_route("/api/search", search, methods=["POST"], tags=["search"], openapi_extra=SEARCH_OPENAPI,
                      summary="Search by image upload, raw image body, base64 JSON, text or image id")
    app.add_api_route("/search", search, methods=["POST"], include_in_schema=False)

    @app.post("/api/compare", tags=["search"], summary="Similarity of two images in [0, 1] with a verdict")
    def compare(a: UploadFile | None = File(None, description="first image"),
                b: UploadFile | None = File(None, description="second image"),
                a_id: int | None = Form(None), b_id: int | None = Form(None),
                collection: str | None = Form(None, description="use this collection's model (and ids)"),
                model: str | None = Form(None)) -> dict[str, Any]:
        limit = settings.max_upload_bytes

        def pick(upload: UploadFile | None, image_id: int | None, label: str) -> bytes | int:
            if (upload is None) == (image_id is None):
                raise ApiError(400, "bad-request", f"give image {label} as a `{label}` upload or `{label}_id`")
            if upload is None:
                return int(image_id)  # type: ignore[arg-type]
            data = upload.file.read(limit + 1)
            if len(data) > limit:
                raise ApiError(413, "too-large", f"image {label} is over the {limit} byte limit")
            return data

        return state.compare(pick(a, a_id, "a"), pick(b, b_id, "b"), collection, model)

    # -- collections
    @app.get("/api/collections", tags=["collections"], summary="List collections")
    def list_collections() -> dict[str, Any]:
        items = [state.info_out(c) for c in state.lib.collections()]
        return {"collections": items, "count": sum(c["count"] for c in items)}

    @app.post("/api/collections", tags=["collections"], status_code=201, dependencies=write,
              summary="Create an empty collection")
    def create_collection(body: CollectionCreate) -> dict[str, Any]:
        with suppress(UnknownCollection):
            state.lib.info(body.name)
            raise ApiError(409, "exists", f"collection '{body.name}' already exists; drop it first or pick "
                                          "another name")
        with state._embed_lock:
            info = state.lib.create_collection(body.name, body.model, body.index_spec)
        return state.info_out(info)

    @app.get("/api/collections/{collection}", tags=["collections"],
             summary="Describe a collection: count, dim, model, index, size")
    def describe_collection(collection: str) -> dict[str, Any]:
        return state.collection_out(collection)

    @app.delete("/api/collections/{collection}", tags=["collections"], dependencies=write,
                summary="Drop a collection and everything in it")
    def drop_collection(collection: str) -> dict[str, Any]:
        info = state.lib.info(collection)
        hashes = {v[3] for v in state.lib.store.known_files(collection).values()}
        state.lib.drop_collection(collection)
        state.gc_uploads(hashes)
        return {"dropped": collection, "count": info.count}

    # -- images
    @app.post("/api/collections/{collection}/images", tags=["images"], status_code=201, dependencies=write,
              summary="Add one uploaded image (re-using an id replaces that image)")
    def add_image(collection: str, file: UploadFile = File(..., description="the image"),
                  id: str | None = Form(None, description="your id for it (default: content hash)"),
                  group_id: str | None = Form(None), tags: list[str] | None = Form(None),
                  metadata: str | None = Form(None, description="JSON object")) -> dict[str, Any]:
        data = file.file.read(settings.max_upload_bytes + 1)
        rec = state.add_images(collection, [(data, id or None)], group_id=group_id, tags=_split_tags(tags),
                               metadata=_metadata_json(metadata))[0]
        return state.record_out(collection, rec)

    @app.post("/api/collections/{collection}/images/bulk", tags=["images"], status_code=201, dependencies=write,
              summary="Add many uploaded images in one all-or-nothing write")
    def add_bulk(collection: str, files: list[UploadFile] = File(...),
                 ids: list[str] | None = Form(None, description="one per file, in order (optional)"),
                 group_id: str | None = Form(None), tags: list[str] | None = Form(None),
                 metadata: str | None = Form(None)) -> dict[str, Any]:
        if ids and len(ids) != len(files):
            raise ApiError(400, "bad-request", f"{len(ids)} ids for {len(files)} files; give one per file or none")
        limit = settings.max_upload_bytes
        items = []
        for index, upload in enumerate(files):
            data = upload.file.read(limit + 1)
            if len(data) > limit:
                raise ApiError(413, "too-large", f"upload #{index + 1} is over the {limit} byte limit; "
                                                 "nothing was added", index=index)
            items.append((data, (ids[index] or None) if ids else None))
        records = state.add_images(collection, items, group_id=group_id, tags=_split_tags(tags),
                                   metadata=_metadata_json(metadata))
        return {"collection": collection, "added": len(records),
                "images": [state.record_out(collection, r) for r in records]}

    @app.get("/api/collections/{collection}/images/count", tags=["images"], summary="Number of images")
    def count_images(collection: str) -> dict[str, Any]:
        return {"collection": collection, "count": state.lib.info(collection).count}

    @app.get("/api/collections/{collection}/images/{image_id}", tags=["images"], summary="One image's record")
    def get_image(collection: str, image_id: int) -> dict[str, Any]:
        return state.record_out(collection, state.get_record(collection, image_id))

    @app.patch("/api/collections/{collection}/images/{image_id}", tags=["images"], dependencies=write,
               summary="Update group id, tags (replaced) or metadata (merged)")
    def update_image(collection: str, image_id: int, body: MetadataUpdate) -> dict[str, Any]:
        state.get_record(collection, image_id)
        state.lib.store.update_metadata(collection, image_id, group_id=body.group_id, tags=body.tags,
                                        metadata=body.metadata)
        return state.record_out(collection, state.get_record(collection, image_id))

    @app.put("/api/collections/{collection}/images/{image_id}", tags=["images"], dependencies=write,
             summary="Replace an image's picture, keeping its id")
    def replace_image(collection: str, image_id: int, file: UploadFile = File(...),
                      group_id: str | None = Form(None), tags: list[str] | None = Form(None),
                      metadata: str | None = Form(None)) -> dict[str, Any]:
        data = file.file.read(settings.max_upload_bytes + 1)
        rec = state.replace_image(collection, image_id, data, group_id=group_id,
                                  tags=_split_tags(tags) if tags is not None else None,
                                  metadata=_metadata_json(metadata) if metadata else None)
        return state.record_out(collection, rec)

    @app.delete("/api/collections/{collection}/images/{image_id}", tags=["images"], dependencies=write,
                summary="Delete an image")
    def delete_image(collection: str, image_id: int) -> dict[str, Any]:
        record = state.get_record(collection, image_id)
        removed = state.lib.remove([image_id], collection)
        state.gc_uploads({record.content_hash})
        return {"collection": collection, "removed": removed, "id": image_id}

    @app.get("/api/collections/{collection}/images/{image_id}/thumbnail", tags=["images"],
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}},
             summary="A JPEG thumbnail (only of catalogued images)")
    def thumbnail(request: Request, collection: str, image_id: int,
                  size: int = Query(0, ge=0, le=1024, description="longest side; 0: server default")) -> Response:
        size = size or settings.thumbnail_size
        data, digest = state.thumbnail(collection, image_id, max(16, size))
        etag = f'"{digest[:20]}-{size}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/collections/{collection}/images/{image_id}/file", tags=["images"], response_class=Response,
             summary="The original image bytes (only of catalogued images)")
    def original(collection: str, image_id: int) -> Response:
        data = state.source_bytes(state.get_record(collection, image_id))
        kind = sniff(data)
        if kind is None:
            raise ApiError(415, "not-an-image", f"image {image_id} is stored in a format browsers cannot show; "
                                                "use its thumbnail")
        return Response(data, media_type=MEDIA_TYPES[kind], headers={"Cache-Control": "private, max-age=3600",
                                                                     "X-Content-Type-Options": "nosniff"})

    # -- index jobs
    @app.post("/api/collections/{collection}/index", tags=["jobs"], status_code=202, dependencies=write,
              summary="Index a server-side folder (under an allowed root) in the background")
    def start_index(collection: str, body: IndexRequest) -> dict[str, Any]:
        raw = ([body.path] if body.path else []) + list(body.paths)
        if not raw:
            raise ApiError(400, "bad-request", "give `path` (or `paths`): the server-side folder to index")
        paths = [state.check_root(p) for p in raw]
        if state.shutting_down:
            raise ApiError(503, "shutting-down", "the server is shutting down")
        job = state.jobs.submit(collection, paths, {"prune": body.prune, "group_id": body.group_id,
                                                    "tags": body.tags, "model": body.model,
                                                    "index_spec": body.index_spec})
        return {**job.to_dict(), "url": f"/api/jobs/{job.id}"}

    @app.get("/api/jobs", tags=["jobs"], summary="Index jobs, newest first")
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [j.to_dict() for j in state.jobs.list()], "queued": state.jobs.queued,
                "running": state.jobs.running}

    @app.get("/api/jobs/{job_id}", tags=["jobs"], summary="An index job's state and progress")
    def get_job(job_id: str) -> dict[str, Any]:
        job = state.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "unknown-job", f"no index job '{job_id}' (jobs are kept in memory until restart)")
        return job.to_dict()

    return app


# -- running ----------------------------------------------------------------------------------------
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                "logger": record.name, "msg": record.getMessage()}
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(settings: ServerSettings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def check_port(host: str, port: int) -> None:
    """Fail with one clear line when the address can't be bound (before loading anything heavy)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise LookalikeError(f"cannot listen on '{host}': {exc.strerror}; use an IP address or a known host name"
                             ) from exc
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise LookalikeError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port "
                                 "(or stop what is using it)") from exc


def serve(home: str | os.PathLike[str] | None = None, **overrides: Any) -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests get `shutdown_timeout` seconds."""
    import uvicorn

    lib = Library.open(home)
    try:
        settings = ServerSettings.load(lib.settings, **overrides)
        check_port(settings.host, settings.port)
    except BaseException:
        lib.close()
        raise
    configure_logging(settings)
    app = create_app(lib, settings=settings, owns_library=True)
    log.info("serving", extra={"url": f"http://{settings.host}:{settings.port}/", "home": str(lib.home),
                               "api_key": bool(settings.api_key), "allowed_roots": settings.allowed_roots})
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=int(settings.shutdown_timeout) or None,
                            server_header=False, lifespan="on")
    if threading.current_thread() is threading.main_thread():
        # uvicorn drains requests on SIGTERM/SIGINT, then re-raises the signal: make that a clean exit (0)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: sys.exit(0))
    uvicorn.Server(config).run()
