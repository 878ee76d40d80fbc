"""Ingest: folders -> decoded pictures -> vectors -> committed batches.

Decoding and preprocessing run in a thread pool while the main thread runs batched inference, so the
model is never waiting on JPEG decoding. Rows are committed every `commit_every` images, each batch in
one transaction: a killed run loses at most the uncommitted batch, and the next run skips what is
already stored (same path, size and mtime), re-embeds what changed, and with `prune` forgets files
that are gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import refine
from .config import Settings
from .decode import decode, read_bytes, read_file, walk_images
from .embed import Embedder
from .errors import DecodeError, LookalikeError, ModelMismatch, UnknownCollection
from .refine import RefineParams
from .roots import is_within, outside_detail
from .store import ImageRecord, Store

ProgressFn = Callable[[int, int], None]  # (files done, files to do)


@dataclass
class Skipped:
    path: str
    reason: str
    detail: str = ""


@dataclass
class IndexReport:
    collection: str
    model: str
    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    count: int = 0
    report_path: str = ""

    @property
    def embedded(self) -> int:
        return self.added + self.updated

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def skipped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s.reason] = counts.get(s.reason, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["embedded"] = self.embedded
        data["images_per_second"] = round(self.images_per_second, 2)
        data["skipped_by_reason"] = self.skipped_by_reason()
        return data


@dataclass
class _Prepared:
    record: ImageRecord
    prepared: Any = None
    error: Skipped | None = None
    same_content_id: int | None = None  # file touched but bytes unchanged: only the row is refreshed


def ensure_collection(store: Store, name: str, embedder: Embedder, index_spec: str = "auto",
                      settings: Settings | None = None) -> None:
    """Create the collection for this model, or check that it was built with this model."""
    try:
        info = store.collection(name)
    except UnknownCollection:
        store.create_collection(name, embedder.name, embedder.dim, embedder.metric, index_spec,
                                settings=collection_settings(embedder, settings or Settings()))
        return
    check_model(info.name, info.model, info.dim, embedder)


def collection_settings(embedder: Embedder, settings: Settings) -> dict[str, Any]:
    """What a new collection records: the refinement it uses (vectors of hashes are not refined)."""
    if embedder.metric != "cosine" or (settings.dba_k <= 0 and settings.qe_k <= 0):
        return {}
    return RefineParams(dba_k=max(0, settings.dba_k), qe_k=max(0, settings.qe_k)).to_settings()


def check_model(collection: str, model: str, dim: int, embedder: Embedder) -> None:
    if model != embedder.name or dim != embedder.dim:
        raise ModelMismatch(
            f"collection '{collection}' holds {model} vectors ({dim}-d), not {embedder.name} "
            f"({embedder.dim}-d); use --model {model} with it, or another --collection for {embedder.name}")


def file_key(path: Path) -> str:
    """How a file is named in the catalogue: absolute, symlinks kept (the path the user sees)."""
    return os.path.abspath(path)


def index_paths(
    store: Store,
    embedder: Embedder,
    roots: Iterable[Path],
    collection: str,
    *,
    settings: Settings | None = None,
    prune: bool = False,
    group_id: str | None = None,
    tags: list[str] | None = None,
    index_spec: str = "auto",
    progress: ProgressFn | None = None,
    report_dir: Path | None = None,
    refine_progress: ProgressFn | None = None,
    allowed_roots: list[Path] | None = None,
) -> IndexReport:
    """Index `roots`. With `allowed_roots` (resolved folders), every walked file must resolve inside one
    of them (symlinks are followed only where they stay inside); the others are skipped as `outside-root`."""
    settings = settings or Settings()
    roots = [Path(r).expanduser() for r in roots]
    started = time.perf_counter()
    ensure_collection(store, collection, embedder, index_spec, settings)
    report = IndexReport(collection=collection, model=embedder.name)

    def on_walk_error(path: Path, reason: str, detail: str) -> None:
        report.skipped.append(Skipped(str(path), reason, detail))

    known = store.known_files(collection)
    todo: list[tuple[Path, os.stat_result, tuple[int, int, float, str] | None]] = []
    seen: set[str] = set()
    for path in walk_images(roots, on_walk_error, within=allowed_roots):
        key = file_key(path)
        if key in seen:
            continue
        seen.add(key)
        report.scanned += 1
        try:
            st = path.stat()
        except OSError as exc:
            report.skipped.append(Skipped(key, "unreadable", exc.strerror or str(exc)))
            continue
        previous = known.get(key)
        if previous is not None and previous[1] == st.st_size and previous[2] == st.st_mtime:
            report.unchanged += 1
            continue
        todo.append((path, st, previous))

    def prepare(item: tuple[Path, os.stat_result, tuple[int, int, float, str] | None]) -> _Prepared:
        path, st, previous = item
        record = ImageRecord(path=file_key(path), size=st.st_size, mtime=st.st_mtime,
                             group_id=group_id, tags=list(tags or []))
        try:
            source = path
            if allowed_roots is not None:  # again at read time: the path may have been swapped since the walk
                source = path.resolve()
                if not is_within(source, allowed_roots):
                    return _Prepared(record, error=Skipped(record.path, "outside-root",
                                                           outside_detail(path, source)))
            data, read_st = read_file(source, settings.max_file_bytes)
            record.size, record.mtime = read_st.st_size, read_st.st_mtime  # what /file compares against
            record.content_hash = hashlib.sha256(data).hexdigest()
            if previous is not None and previous[3] == record.content_hash:
                return _Prepared(record, same_content_id=previous[0])
            image = decode(data, max_pixels=settings.max_pixels, draft_size=embedder.draft_size,
                           suffix=path.suffix)
            record.width, record.height = image.size
            return _Prepared(record, embedder.prepare(image))
        except DecodeError as exc:
            return _Prepared(record, error=Skipped(record.path, exc.reason, exc.detail))
        except Exception as exc:  # noqa: BLE001 - one odd file must never stop the batch
            return _Prepared(record, error=Skipped(record.path, "error", f"{type(exc).__name__}: {exc}"))

    pending_records: list[ImageRecord] = []
    pending_vectors: list[np.ndarray] = []
    batch: list[_Prepared] = []
    done = 0
    total = len(todo)
    if progress:
        progress(0, total)

    def commit() -> None:
        if not pending_records:
            return
        store.upsert(collection, pending_records, np.concatenate(pending_vectors))
        pending_records.clear()
        pending_vectors.clear()

    def run_batch() -> None:
        if not batch:
            return
        vectors = embedder.embed_prepared([p.prepared for p in batch])
        for p in batch:
            if p.record.path in known:
                report.updated += 1
            else:
                report.added += 1
        pending_records.extend(p.record for p in batch)
        pending_vectors.append(vectors)
        batch.clear()
        if len(pending_records) >= settings.commit_every:
            commit()

    window = max(settings.batch_size * 2, settings.workers() * 4)
    with ThreadPoolExecutor(max_workers=settings.workers(), thread_name_prefix="decode") as pool:
        queue: deque[Future[_Prepared]] = deque()
        items = iter(todo)
        for item in items:
            queue.append(pool.submit(prepare, item))
            if len(queue) >= window:
                break
        try:
            while queue:
                result = queue.popleft().result()
                nxt = next(items, None)
                if nxt is not None:
                    queue.append(pool.submit(prepare, nxt))
                if result.error is not None:
                    report.skipped.append(result.error)
                elif result.same_content_id is not None:
                    _refresh_row(store, collection, result)
                    report.unchanged += 1
                else:
                    batch.append(result)
                    if len(batch) >= settings.batch_size:
                        run_batch()
                done += 1
                if progress:
                    progress(done, total)
            run_batch()
            commit()
        finally:
            for fut in queue:
                fut.cancel()

    if prune:
        report.removed = prune_missing(store, collection, roots)
    # also picks up rows a killed run committed but never refined
    refine.refresh(store, collection, progress=refine_progress)
    store.flush()
    report.seconds = time.perf_counter() - started
    report.count = store.count(collection)
    if report_dir is not None:
        report.report_path = str(write_report(report, report_dir))
    return report


def _refresh_row(store: Store, collection: str, item: _Prepared) -> None:
    """Same bytes under a new mtime (e.g. copied back from a backup): keep the vector, update the row."""
    assert item.same_content_id is not None
    vectors = store.vectors(collection, [item.same_content_id])
    old = store.get(collection, [item.same_content_id])[0]
    item.record.width, item.record.height = old.width, old.height
    item.record.group_id = item.record.group_id or old.group_id
    item.record.tags = item.record.tags or old.tags
    item.record.metadata = old.metadata
    store.upsert(collection, [item.record], vectors)


def prune_missing(store: Store, collection: str, roots: list[Path]) -> int:
    """Forget rows under `roots` whose files no longer exist."""
    prefixes = [file_key(r) for r in roots]
    gone = [row_id for path, (row_id, *_rest) in store.known_files(collection).items()
            if any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes)
            and not os.path.exists(path)]
    return store.remove(collection, gone)


def write_report(report: IndexReport, report_dir: Path) -> Path:
    """The machine-readable run report: counts plus every skipped file with its reason."""
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = report_dir / f"index-{report.collection}-{stamp}-{os.getpid()}.json"
    path.write_text(json.dumps(report.to_dict(), indent=2))
    return path


def embed_file(embedder: Embedder, path: Path, settings: Settings) -> np.ndarray:
    """One query picture from a file (raises DecodeError with the reason)."""
    data = read_bytes(path, settings.max_file_bytes)
    image = decode(data, max_pixels=settings.max_pixels, draft_size=embedder.draft_size, suffix=path.suffix)
    return embedder.embed_images([image])[0]


__all__ = ["IndexReport", "LookalikeError", "Skipped", "check_model", "ensure_collection", "index_paths"]
