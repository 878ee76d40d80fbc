"""Ingest: folders -> decoded pictures -> vectors -> committed batches.

Decoding and preprocessing run in a thread pool while the main thread runs batched inference, so the
model is never waiting on JPEG decoding. Rows are committed every `commit_every` images, each batch in
one transaction: a killed run loses at most the uncommitted batch, and the next run skips what is
already stored (same path, size and mtime), re-embeds what changed, and with `prune` forgets files
that are gone.

With a distributed engine (`engine.py`) the same `prepare_file` and `embed_batch` run on its workers
(`prepare_and_embed`), while this process still walks, skips, and is the one `_Writer`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import refine
from .config import Settings
from .decode import decode, read_bytes, read_file, source_size, walk_images
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
    engine: str = "local"
    # where the time went, seconds: walk, engine_start, write, refine are wall time in the driver;
    # read_decode and embed are busy time summed over decode threads or engine workers
    stages: dict[str, float] = field(default_factory=dict)

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


TodoItem = tuple[Path, int, float, "tuple[int, int, float, str] | None"]  # path, size, mtime, stored row


@dataclass
class FileJob:
    """What preparing a file needs besides the file and the embedder: small and picklable, so the same
    `prepare_file` runs in a local decode thread and on an engine worker."""

    settings: Settings
    group_id: str | None = None
    tags: list[str] = field(default_factory=list)
    allowed_roots: list[Path] | None = None


@dataclass
class _Prepared:
    record: ImageRecord
    prepared: Any = None
    error: Skipped | None = None
    same_content_id: int | None = None  # file touched but bytes unchanged: only the row is refreshed
    vector: np.ndarray | None = None  # set by `embed_batch`
    seconds: float = 0.0  # read + decode + preprocess time of this file

    @property
    def to_embed(self) -> bool:
        return self.error is None and self.same_content_id is None


def prepare_file(item: TodoItem, embedder: Embedder, job: FileJob) -> _Prepared:
    """Read, hash, decode and preprocess one file; never raises (a bad file comes back as `error`)."""
    started = time.perf_counter()
    result = _prepare(item, embedder, job)
    result.seconds = time.perf_counter() - started
    return result


def _prepare(item: TodoItem, embedder: Embedder, job: FileJob) -> _Prepared:
    path, size, mtime, previous = item
    settings, allowed_roots = job.settings, job.allowed_roots
    record = ImageRecord(path=file_key(path), size=size, mtime=mtime, group_id=job.group_id, tags=list(job.tags))
    try:
        source = path
        if allowed_roots is not None:  # again at read time: the path may have been swapped since the walk
            source = path.resolve()
            if not is_within(source, allowed_roots):
                return _Prepared(record, error=Skipped(record.path, "outside-root", outside_detail(path, source)))
        data, read_st = read_file(source, settings.max_file_bytes)
        record.size, record.mtime = read_st.st_size, read_st.st_mtime  # what /file compares against
        record.content_hash = hashlib.sha256(data).hexdigest()
        if previous is not None and previous[3] == record.content_hash:
            return _Prepared(record, same_content_id=previous[0])
        image = decode(data, max_pixels=settings.max_pixels, draft_size=embedder.draft_size, suffix=path.suffix)
        record.width, record.height = source_size(image)  # not the reduced decode's size
        return _Prepared(record, embedder.prepare(image))
    except DecodeError as exc:
        return _Prepared(record, error=Skipped(record.path, exc.reason, exc.detail))
    except Exception as exc:  # noqa: BLE001 - one odd file must never stop the batch
        return _Prepared(record, error=Skipped(record.path, "error", f"{type(exc).__name__}: {exc}"))


def embed_batch(embedder: Embedder, batch: list[_Prepared]) -> float:
    """Batched inference over prepared files (sets each `vector`, drops the prepared input); returns seconds."""
    if not batch:
        return 0.0
    started = time.perf_counter()
    vectors = embedder.embed_prepared([p.prepared for p in batch])
    for p, vector in zip(batch, vectors, strict=True):
        p.vector, p.prepared = vector, None
    return time.perf_counter() - started


def prepare_and_embed(items: list[TodoItem], embedder: Embedder, job: FileJob) -> tuple[list[_Prepared], float]:
    """One engine task: `prepare_file` on each file, then one `embed_batch` over those to embed."""
    results = [prepare_file(item, embedder, job) for item in items]
    return results, embed_batch(embedder, [r for r in results if r.to_embed])


class _Writer:
    """The one writer: takes finished files in order, refreshes or queues rows, commits every `commit_every`
    images in one transaction, so a killed run loses at most the uncommitted batch."""

    def __init__(self, store: Store, collection: str, known: dict[str, Any], report: IndexReport,
                 commit_every: int, write_guard: AbstractContextManager[Any] | None = None) -> None:
        self.store, self.collection, self.known, self.report = store, collection, known, report
        self.commit_every = commit_every
        self.write_guard = write_guard or nullcontext()  # held around each write (the library's write lock)
        self.records: list[ImageRecord] = []
        self.vectors: list[np.ndarray] = []
        self.seconds = 0.0

    def take(self, item: _Prepared) -> None:
        if item.error is not None:
            self.report.skipped.append(item.error)
            return
        started = time.perf_counter()
        if item.same_content_id is not None:
            with self.write_guard:
                _refresh_row(self.store, self.collection, item)
            self.report.unchanged += 1
        else:
            assert item.vector is not None
            if item.record.path in self.known:
                self.report.updated += 1
            else:
                self.report.added += 1
            self.records.append(item.record)
            self.vectors.append(item.vector)
        self.seconds += time.perf_counter() - started
        if len(self.records) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        if not self.records:
            return
        started = time.perf_counter()
        with self.write_guard:
            self.store.upsert(self.collection, self.records, np.stack(self.vectors))
        self.records, self.vectors = [], []
        self.seconds += time.perf_counter() - started


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
    engine: str = "local",
    model_dir: Path | None = None,
    write_guard: AbstractContextManager[Any] | None = None,
) -> IndexReport:
    """Index `roots`. With `allowed_roots` (resolved folders), every walked file must resolve inside one
    of them (symlinks are followed only where they stay inside); the others are skipped as `outside-root`.

    `engine`: "local" (decode threads and batched inference in this process), or a distributed engine
    (`engine.py`: "local-cluster" or a Dask scheduler address) whose workers run the same `prepare_file`
    and `embed_batch` and build their embedder from `model_dir`; either way this process walks, skips
    what is stored, and is the one writer. `write_guard` (re-entered per batch) is held around every write,
    so batches take turns with uploads from other processes."""
    settings = settings or Settings()
    roots = [Path(r).expanduser() for r in roots]
    started = time.perf_counter()
    ensure_collection(store, collection, embedder, index_spec, settings)
    report = IndexReport(collection=collection, model=embedder.name, engine=engine)

    def on_walk_error(path: Path, reason: str, detail: str) -> None:
        report.skipped.append(Skipped(str(path), reason, detail))

    known = store.known_files(collection)
    todo: list[TodoItem] = []
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
        todo.append((path, st.st_size, st.st_mtime, previous))
    report.stages["walk"] = time.perf_counter() - started

    job = FileJob(settings, group_id, list(tags or []), allowed_roots)
    writer = _Writer(store, collection, known, report, settings.commit_every, write_guard)
    if progress:
        progress(0, len(todo))
    if engine == "local":
        _run_local(todo, embedder, job, writer, progress)
    else:
        from . import engine as engines

        engines.run(engine, todo, embedder, job, writer, progress, model_dir=model_dir)
    report.stages["write"] = writer.seconds

    if prune:
        report.removed = prune_missing(store, collection, roots)
    # also picks up rows a killed run committed but never refined
    refine_started = time.perf_counter()
    refine.refresh(store, collection, progress=refine_progress)
    store.flush()
    report.stages["refine"] = time.perf_counter() - refine_started
    report.seconds = time.perf_counter() - started
    report.count = store.count(collection)
    report.stages = {k: round(v, 3) for k, v in report.stages.items()}
    if report_dir is not None:
        report.report_path = str(write_report(report, report_dir))
    return report


def _run_local(todo: list[TodoItem], embedder: Embedder, job: FileJob, writer: _Writer,
               progress: ProgressFn | None) -> None:
    """Decode threads run `prepare_file` ahead while this thread runs `embed_batch` and writes, in order."""
    settings, stages = job.settings, writer.report.stages
    stages.setdefault("read_decode", 0.0)
    stages.setdefault("embed", 0.0)
    batch: list[_Prepared] = []
    done, total = 0, len(todo)

    def run_batch() -> None:
        stages["embed"] += embed_batch(embedder, batch)
        for p in batch:
            writer.take(p)
        batch.clear()

    window = max(settings.batch_size * 2, settings.workers() * 4)
    with ThreadPoolExecutor(max_workers=settings.workers(), thread_name_prefix="decode") as pool:
        queue: deque[Future[_Prepared]] = deque()
        items = iter(todo)
        for item in items:
            queue.append(pool.submit(prepare_file, item, embedder, job))
            if len(queue) >= window:
                break
        try:
            while queue:
                result = queue.popleft().result()
                nxt = next(items, None)
                if nxt is not None:
                    queue.append(pool.submit(prepare_file, nxt, embedder, job))
                stages["read_decode"] += result.seconds
                if result.to_embed:
                    batch.append(result)
                    if len(batch) >= settings.batch_size:
                        run_batch()
                else:
                    writer.take(result)
                done += 1
                if progress:
                    progress(done, total)
            run_batch()
            writer.commit()
        finally:
            for fut in queue:
                fut.cancel()


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


__all__ = ["FileJob", "IndexReport", "LookalikeError", "Skipped", "check_model", "embed_batch", "ensure_collection",
           "index_paths", "prepare_and_embed", "prepare_file"]
