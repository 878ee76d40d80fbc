"""Index jobs: server-side folders indexed in the background, with progress, shared by every process
serving the library (the table and the per-collection locks are in `lookalike.jobs_db`).

Searches keep working while a job runs: the store commits each batch atomically, so a search sees
either the collection before a batch or after it, never half of one. Shutdown cancels the running job
between files (its committed batches stay; a re-run skips them).
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
from typing import Any

from ..jobs_db import JobsDB

log = logging.getLogger("lookalike.server")


class JobCancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    collection: str
    paths: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    state: str = "queued"  # queued -> running -> done | failed | cancelled
    done: int = 0
    total: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    report: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        elapsed = ((self.finished or time.time()) - self.started) if self.started else 0.0
        return {
            "id": self.id, "collection": self.collection, "paths": self.paths, "state": self.state,
            "done": self.done, "total": self.total,
            "progress": round(self.done / self.total, 4) if self.total else (1.0 if self.state == "done" else 0.0),
            "created": self.created, "started": self.started, "finished": self.finished,
            "seconds": round(elapsed, 3), "report": self.report, "error": self.error,
        }


Runner = Callable[[Job, Callable[[int, int], None]], dict[str, Any]]
PROGRESS_EVERY = 0.25  # seconds between progress writes to the shared table


class JobManager:
    """Index jobs in the library's shared table (`jobs_db.py`), run by one worker thread per process
    (indexing already uses every core) and by one process at a time per collection.

    `path`: the library's `jobs.sqlite` (None: a private in-memory table). `context` is stored with every
    job this process submits (e.g. the allowed roots it was accepted under), so whichever process runs it
    applies the same rules. Job objects handed out here are updated in place while this process runs them;
    `get` and `list` read the shared table."""

    def __init__(self, runner: Runner, keep: int = 200, *, path: Path | None = None,
                 context: dict[str, Any] | None = None, poll: float = 0.25) -> None:
        self._runner = runner
        self._db = JobsDB(path)
        self._keep = keep
        self._context = dict(context or {})
        self._poll = poll
        self._me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._live: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker (also picks up jobs other processes queued); submit starts it too."""
        with self._lock:
            if self._thread is None and not self._cancel.is_set():
                self._thread = threading.Thread(target=self._work, name="index-jobs", daemon=True)
                self._thread.start()

    def submit(self, collection: str, paths: list[str], options: dict[str, Any]) -> Job:
        if self._cancel.is_set():
            raise RuntimeError("server is shutting down")
        job = Job(id=uuid.uuid4().hex[:12], collection=collection, paths=paths,
                  options={**self._context, **options})
        row = self._db.submit({"id": job.id, "collection": collection, "paths": paths, "options": job.options,
                               "created": job.created, "submitter": self._me}, self._keep)
        if row["id"] != job.id:  # the same job is already queued: that one
            return self._job(row)
        with self._lock:
            self._live[job.id] = job
            self._trim()
        self.start()
        self._wake.set()
        log.info("index job queued", extra={"job": job.id, "collection": collection, "paths": paths})
        return job

    def get(self, job_id: str) -> Job | None:
        row = self._db.get(job_id)
        return self._job(row) if row is not None else None

    def list(self) -> list[Job]:
        return [self._job(row) for row in self._db.list(self._keep)]

    @property
    def queued(self) -> int:
        return self._db.count("queued")

    @property
    def running(self) -> int:
        return self._db.count("running")

    def _job(self, row: dict[str, Any]) -> Job:
        """The Job for a row: this process's live object (refreshed unless it runs here), else a new one."""
        with self._lock:
            job = self._live.get(row["id"])
        if job is None:
            job = Job(id=row["id"], collection=row["collection"], paths=row["paths"], options=row["options"])
        elif job.state == "running" and row["runner"] == self._me:
            return job  # its progress here is newer than the throttled row
        for name in ("state", "done", "total", "created", "started", "finished", "report", "error"):
            setattr(job, name, row[name])
        return job

    def _trim(self) -> None:
        finished = [j for j in self._live.values() if j.finished is not None]
        for job in sorted(finished, key=lambda j: j.created)[: max(0, len(self._live) - self._keep)]:
            del self._live[job.id]

    def _work(self) -> None:
        while not self._cancel.is_set():
            try:
                claimed = self._db.claim(self._me)
            except Exception as exc:  # noqa: BLE001 - a locked or busy table: try again shortly
                log.warning("index job claim failed", extra={"error": str(exc)})
                claimed = None
            if claimed is None:
                self._wake.wait(self._poll)
                self._wake.clear()
                continue
            row, lock = claimed
            try:
                self._run(row)
            finally:
                lock.release()

    def _run(self, row: dict[str, Any]) -> None:
        with self._lock:
            job = self._live.get(row["id"])
            if job is None:
                job = self._live[row["id"]] = Job(id=row["id"], collection=row["collection"], paths=row["paths"],
                                                  options=row["options"], created=row["created"])
        job.state, job.started = "running", row["started"]
        written = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal written
            job.done, job.total = done, total
            now = time.monotonic()
            if now - written >= PROGRESS_EVERY or done == total:
                written = now
                self._db.progress(job.id, done, total)
            if self._cancel.is_set():
                raise JobCancelled()

        state, report, error = "done", None, None
        try:
            report = self._runner(job, progress)
        except JobCancelled:
            state, error = "cancelled", "server shut down; re-run the job to finish (done files are kept)"
        except Exception as exc:  # noqa: BLE001 - a job's failure is reported, never kills the worker
            state, error = "failed", str(exc) or type(exc).__name__
            log.warning("index job failed", extra={"job": job.id, "error": error})
        finished = self._db.finish(job.id, state, job.done, job.total, report, error)
        job.report, job.error, job.finished, job.state = report, error, finished, state
        log.info("index job finished", extra={"job": job.id, "state": job.state, "done": job.done})

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel the running job (between files) and the queued jobs this process submitted, and wait
        (bounded) for the worker to stop."""
        self._cancel.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        cancelled = self._db.cancel_queued(self._me, "server shut down before it started; submit it again")
        finished = time.time()
        with self._lock:
            for job_id in cancelled:
                if job_id in self._live:
                    job = self._live[job_id]
                    job.state, job.finished = "cancelled", finished
