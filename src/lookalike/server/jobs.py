"""Index jobs: server-side folders indexed one at a time by a background thread, with progress.

Searches keep working while a job runs: the store commits each batch atomically, so a search sees
either the collection before a batch or after it, never half of one. Shutdown cancels the running job
between files (its committed batches stay; a re-run skips them).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


class JobManager:
    """A FIFO of index jobs run by one worker thread (indexing already uses every core)."""

    def __init__(self, runner: Runner, keep: int = 200) -> None:
        self._runner = runner
        self._jobs: dict[str, Job] = {}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._keep = keep
        self._thread: threading.Thread | None = None

    def submit(self, collection: str, paths: list[str], options: dict[str, Any]) -> Job:
        if self._cancel.is_set():
            raise RuntimeError("server is shutting down")
        job = Job(id=uuid.uuid4().hex[:12], collection=collection, paths=paths, options=options)
        with self._lock:
            self._jobs[job.id] = job
            self._trim()
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="index-jobs", daemon=True)
                self._thread.start()
        self._queue.put(job)
        log.info("index job queued", extra={"job": job.id, "collection": collection, "paths": paths})
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    @property
    def queued(self) -> int:
        return sum(j.state == "queued" for j in list(self._jobs.values()))

    @property
    def running(self) -> int:
        return sum(j.state == "running" for j in list(self._jobs.values()))

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished is not None]
        for job in sorted(finished, key=lambda j: j.created)[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[job.id]

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._cancel.is_set():
                job.state, job.finished = "cancelled", time.time()
                continue
            job.state, job.started = "running", time.time()

            def progress(done: int, total: int, job: Job = job) -> None:
                job.done, job.total = done, total
                if self._cancel.is_set():
                    raise JobCancelled()

            try:
                job.report = self._runner(job, progress)
                job.state = "done"
            except JobCancelled:
                job.state, job.error = "cancelled", "server shut down; re-run the job to finish (done files are kept)"
            except Exception as exc:  # noqa: BLE001 - a job's failure is reported, never kills the worker
                job.state, job.error = "failed", str(exc) or type(exc).__name__
                log.warning("index job failed", extra={"job": job.id, "error": job.error})
            job.finished = time.time()
            log.info("index job finished", extra={"job": job.id, "state": job.state, "done": job.done})

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel queued and running jobs and wait (bounded) for the worker to stop."""
        self._cancel.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
