"""Background jobs (index, dupes, train): run in background threads, with progress, shared by every
process serving the library (the table and the locks are in `lookalike.jobs_db`).

Searches keep working while an index job runs: the store commits each batch atomically, so a search sees
either the collection before a batch or after it, never half of one. Shutdown cancels a running job at
its next progress report (an index job's committed batches stay; a re-run skips them).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import LookalikeError
from ..jobs_db import HeldLocks, JobsDB

log = logging.getLogger("lookalike.server")


class JobCancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    collection: str
    paths: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "index"
    state: str = "queued"  # queued -> running -> done | failed | cancelled
    stage: str | None = None
    done: int = 0
    total: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. a training's epoch and loss
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    report: dict[str, Any] | None = None
    error: str | None = None
    error_code: str | None = None

    @property
    def progress(self) -> float:
        return round(self.done / self.total, 4) if self.total else (1.0 if self.state == "done" else 0.0)

    def to_dict(self) -> dict[str, Any]:
        """An index job as `/api/jobs` shows it."""
        elapsed = ((self.finished or time.time()) - self.started) if self.started else 0.0
        return {
            "id": self.id, "collection": self.collection, "paths": self.paths, "state": self.state,
            "done": self.done, "total": self.total, "progress": self.progress,
            "created": self.created, "started": self.started, "finished": self.finished,
            "seconds": round(elapsed, 3), "report": self.report, "error": self.error,
        }

    def task_view(self, **named: Any) -> dict[str, Any]:
        """A dupes or training job as its route shows it (`named` after its collection): stage, `result`,
        and `error` as `{"error": code, "message": ...}`; a job cancelled by a shutdown reads as failed."""
        failed = self.state in ("failed", "cancelled")
        return {"id": self.id, "collection": self.collection, **named, "state": "failed" if failed else self.state,
                "stage": self.stage, "done": self.done, "total": self.total, "progress": self.progress,
                **self.detail, "created": self.created, "finished": self.finished, "result": self.report,
                "error": {"error": self.error_code or "internal", "message": self.error or ""} if failed else None}


class Progress(Protocol):
    def __call__(self, done: int, total: int | None, stage: str | None = None,
                 detail: dict[str, Any] | None = None) -> None: ...


Runner = Callable[[Job, Progress], dict[str, Any]]
PROGRESS_EVERY = 0.25  # seconds between progress writes to the shared table
FIELDS = ("state", "stage", "done", "total", "detail", "created", "started", "finished", "report", "error",
          "error_code")


class JobManager:
    """Jobs of one kind in the library's shared table (`jobs_db.py`).

    Queued kinds (index, train) run on one worker thread per process, which also picks up the jobs
    other processes queued; `immediate` kinds (dupes) start at once on their own thread, where asked.
    `db`: the library's shared table (or `path`: its `jobs.sqlite`; neither: a private in-memory table).
    `context` is stored with every job this process submits (e.g. the allowed roots it was accepted
    under), so whichever process runs it applies the same rules. Job objects handed out here are updated
    in place while this process runs them; `get` and `list` read the shared table."""

    def __init__(self, runner: Runner, keep: int = 200, *, kind: str = "index", immediate: bool = False,
                 db: JobsDB | None = None, path: Path | None = None, context: dict[str, Any] | None = None,
                 poll: float = 0.25) -> None:
        self._runner = runner
        self._db = db or JobsDB(path)
        self.kind = kind
        self._immediate = immediate
        self.keep = keep
        self._context = dict(context or {})
        self._poll = poll
        self._me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._live: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []  # immediate jobs running here

    def start(self) -> None:
        """Start the worker (also picks up jobs other processes queued); submit starts it too."""
        with self._lock:
            if self._thread is None and not self._cancel.is_set() and not self._immediate:
                self._thread = threading.Thread(target=self._work, name=f"{self.kind}-jobs", daemon=True)
                self._thread.start()

    def submit(self, collection: str, paths: list[str], options: dict[str, Any], *,
               stage: str | None = None) -> Job:
        if self._cancel.is_set():
            raise RuntimeError("server is shutting down")
        job = Job(id=uuid.uuid4().hex[:12], collection=collection, paths=paths, kind=self.kind, stage=stage,
                  options={**self._context, **options})
        row = {"id": job.id, "kind": self.kind, "collection": collection, "paths": paths, "options": job.options,
               "stage": stage, "created": job.created, "submitter": self._me}
        if self._immediate:
            row, held = self._db.start(row, self._me, self.keep)
            job.state, job.started = "running", row["started"]
            with self._lock:
                self._live[job.id] = job
                self._trim()
                thread = threading.Thread(target=self._run_held, args=(row, held), name=f"{self.kind}-{job.id}",
                                          daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        else:
            row = self._db.submit(row, self.keep)
            if row["id"] != job.id:  # the same job is already queued: that one
                return self._job(row)
            with self._lock:
                self._live[job.id] = job
                self._trim()
            self.start()
            self._wake.set()
        log.info(f"{self.kind} job submitted", extra={"job": job.id, "collection": collection})
        return job

    def get(self, job_id: str) -> Job | None:
        row = self._db.get(job_id)
        return self._job(row) if row is not None and row["kind"] == self.kind else None

    def list(self) -> list[Job]:
        return [self._job(row) for row in self._db.list(self.keep, self.kind)]

    @property
    def queued(self) -> int:
        return self._db.count("queued", self.kind)

    @property
    def running(self) -> int:
        return self._db.count("running", self.kind)

    def _job(self, row: dict[str, Any]) -> Job:
        """The Job for a row: this process's live object (refreshed unless it runs here), else a new one."""
        with self._lock:
            job = self._live.get(row["id"])
        if job is None:
            job = Job(id=row["id"], collection=row["collection"], paths=row["paths"], options=row["options"],
                      kind=row["kind"])
        elif job.state == "running" and row["runner"] == self._me and row["state"] == "running":
            return job  # its progress here is newer than the throttled row
        for name in FIELDS:
            setattr(job, name, row[name])
        return job

    def _trim(self) -> None:
        finished = [j for j in self._live.values() if j.finished is not None]
        for job in sorted(finished, key=lambda j: j.created)[: max(0, len(self._live) - self.keep)]:
            del self._live[job.id]

    def _work(self) -> None:
        while not self._cancel.is_set():
            try:
                claimed = self._db.claim(self._me, self.kind)
            except Exception as exc:  # noqa: BLE001 - a locked or busy table: try again shortly
                log.warning(f"{self.kind} job claim failed", extra={"error": str(exc)})
                claimed = None
            if claimed is None:
                self._wake.wait(self._poll)
                self._wake.clear()
                continue
            self._run_held(*claimed)

    def _run_held(self, row: dict[str, Any], held: HeldLocks) -> None:
        try:
            self._run(row)
        finally:
            held.release()

    def _run(self, row: dict[str, Any]) -> None:
        with self._lock:
            job = self._live.get(row["id"])
            if job is None:
                job = self._live[row["id"]] = Job(id=row["id"], collection=row["collection"], paths=row["paths"],
                                                  options=row["options"], kind=row["kind"], stage=row["stage"],
                                                  created=row["created"])
        job.state, job.started = "running", row["started"]
        written = 0.0

        def progress(done: int, total: int | None, stage: str | None = None,
                     detail: dict[str, Any] | None = None) -> None:
            nonlocal written
            moved = stage is not None and stage != job.stage
            job.done, job.total = done, total
            if stage is not None:
                job.stage = stage
            if detail is not None:
                job.detail = detail
            now = time.monotonic()
            if now - written >= PROGRESS_EVERY or done == total or moved:
                written = now
                self._db.progress(job.id, done, total, job.stage, job.detail)
            if self._cancel.is_set():
                raise JobCancelled()

        state, report, error, code = "done", None, None, None
        try:
            report = self._runner(job, progress)
        except JobCancelled:
            state, code = "cancelled", "shutting-down"
            error = "server shut down; re-run the job to finish" + (" (done files are kept)" if self.kind == "index"
                                                                     else "")
        except Exception as exc:  # noqa: BLE001 - a job's failure is reported, never kills the worker
            state, error = "failed", str(exc) or type(exc).__name__
            code = exc.code if isinstance(exc, LookalikeError) else "internal"
            log.warning(f"{self.kind} job failed", exc_info=not isinstance(exc, LookalikeError),
                        extra={"job": job.id, "error": error})
        finished = self._db.finish(job.id, state, done=job.done, total=job.total, stage=job.stage, detail=job.detail,
                                   report=report, error=error, error_code=code)
        job.report, job.error, job.error_code, job.finished, job.state = report, error, code, finished, state
        log.info(f"{self.kind} job finished", extra={"job": job.id, "state": job.state, "done": job.done})

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel the running jobs (at their next progress report) and the queued jobs this process
        submitted, and wait (bounded) for them to stop."""
        deadline = time.monotonic() + timeout
        self._cancel.set()
        self._wake.set()
        with self._lock:
            threads = ([self._thread] if self._thread is not None else []) + self._threads
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        error = "server shut down before it started; submit it again"
        cancelled = self._db.cancel_queued(self._me, error, self.kind)
        finished = time.time()
        with self._lock:
            for job_id in cancelled:
                if job_id in self._live:
                    job = self._live[job_id]
                    job.state, job.finished, job.error, job.error_code = "cancelled", finished, error, "shutting-down"
