"""Index jobs shared by every process that serves one library: `<library>/jobs.sqlite`, next to the store.

Each server process (uvicorn workers, or several `lookalike serve` on one library) reads and writes the
same rows, so any of them answers for any job. A job is claimed in one transaction (queued -> running,
with the claiming process named), and only while the claimer holds the collection's lock file
(`<library>/locks/index-<hash>.lock`, an exclusive `flock`): one runner per collection across processes,
and a job is never run twice. The kernel drops the lock when a process dies, so a `running` row whose
collection lock is free belongs to a dead process: the next claim marks it failed (its committed batches
stay; a re-run skips them).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock across processes
    fcntl = None  # type: ignore[assignment]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    paths TEXT NOT NULL,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    report TEXT,
    error TEXT,
    submitter TEXT,
    runner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, created);
"""
ORPHANED = "the server process running it stopped; re-run the job to finish (done files are kept)"


class CollectionLock:
    """An exclusive, non-blocking lock on one collection's index runs (released by the kernel on exit)."""

    def __init__(self, folder: Path, collection: str) -> None:
        digest = hashlib.sha256(collection.encode()).hexdigest()[:16]
        self.path = folder / f"index-{digest}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is None:
            self._fd = fd
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class JobsDB:
    """The jobs table. `path=None`: a private in-memory table (one process, e.g. tests)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.locks = path.parent / "locks"
            self.locks.mkdir(exist_ok=True)
        else:
            self.locks = Path(tempfile.mkdtemp(prefix="lookalike-job-locks-"))
        self._conn = sqlite3.connect(str(path) if path else ":memory:", timeout=30, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            if path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def lock_for(self, collection: str) -> CollectionLock:
        return CollectionLock(self.locks, collection)

    def submit(self, row: dict[str, Any], keep: int) -> dict[str, Any]:
        """Insert a queued job, or return the identical job already queued (same collection, paths and
        options): asking twice before it starts gets the same job, in whichever process it was asked."""
        paths, options = json.dumps(row["paths"]), json.dumps(row["options"], sort_keys=True)
        with self._write() as db:
            same = db.execute("SELECT * FROM jobs WHERE state='queued' AND collection=? AND paths=? AND options=? "
                              "ORDER BY created LIMIT 1", (row["collection"], paths, options)).fetchone()
            if same is not None:
                return to_dict(same)
            db.execute("INSERT INTO jobs(id, collection, paths, options, state, created, submitter) "
                       "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                       (row["id"], row["collection"], paths, options, row["created"], row["submitter"]))
            db.execute("DELETE FROM jobs WHERE finished IS NOT NULL AND id NOT IN "
                       "(SELECT id FROM jobs ORDER BY created DESC LIMIT ?)", (keep,))
        return {**row, "state": "queued"}

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM jobs WHERE id=?", (job_id,))
        return to_dict(rows[0]) if rows else None

    def list(self, limit: int = 200) -> list[dict[str, Any]]:
        return [to_dict(r) for r in self._read("SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?",
                                               (limit,))]

    def count(self, state: str) -> int:
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE state=?", (state,))[0][0])

    def claim(self, runner: str) -> tuple[dict[str, Any], CollectionLock] | None:
        """The oldest queued job whose collection no process is indexing, now running here, with its
        collection's lock held (the caller releases it after `finish`); None when there is none."""
        if not self._read("SELECT 1 FROM jobs WHERE state IN ('queued', 'running') LIMIT 1"):
            return None  # the idle poll: a read, no write lock
        with self._write() as db:
            now = time.time()
            for row in db.execute("SELECT id, collection FROM jobs WHERE state='running'").fetchall():
                lock = self.lock_for(row["collection"])
                if lock.acquire():  # nobody holds it: the runner died mid-job
                    db.execute("UPDATE jobs SET state='failed', error=?, finished=? WHERE id=?",
                               (ORPHANED, now, row["id"]))
                    lock.release()
            busy: set[str] = set()
            for row in db.execute("SELECT * FROM jobs WHERE state='queued' ORDER BY created, rowid").fetchall():
                if row["collection"] in busy:
                    continue
                lock = self.lock_for(row["collection"])
                if not lock.acquire():
                    busy.add(row["collection"])
                    continue
                db.execute("UPDATE jobs SET state='running', started=?, runner=? WHERE id=?", (now, runner, row["id"]))
                return {**to_dict(row), "state": "running", "started": now, "runner": runner}, lock
        return None

    def progress(self, job_id: str, done: int, total: int | None) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET done=?, total=? WHERE id=?", (done, total, job_id))

    def finish(self, job_id: str, state: str, done: int, total: int | None, report: dict[str, Any] | None,
               error: str | None) -> float:
        finished = time.time()
        with self._write() as db:
            db.execute("UPDATE jobs SET state=?, done=?, total=?, report=?, error=?, finished=? WHERE id=?",
                       (state, done, total, json.dumps(report) if report is not None else None, error, finished,
                        job_id))
        return finished

    def cancel_queued(self, submitter: str, error: str) -> list[str]:
        """Cancel the queued jobs `submitter` asked for; returns their ids."""
        with self._write() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE state='queued' AND submitter=?",
                                               (submitter,)).fetchall()]
            db.execute("UPDATE jobs SET state='cancelled', error=?, finished=? WHERE state='queued' AND submitter=?",
                       (error, time.time(), submitter))
        return ids


def to_dict(row: sqlite3.Row) -> dict[str, Any]:
    data = dict(row)
    data["paths"] = json.loads(data["paths"])
    data["options"] = json.loads(data["options"])
    data["report"] = json.loads(data["report"]) if data.get("report") else None
    return data
