"""Background jobs (index, dupes, train) shared by every process that serves one library:
`<library>/jobs.sqlite`, next to the store.

Each server process (uvicorn workers, or several `lookalike serve` on one library) reads and writes the
same rows, so any of them answers for any job. A running job holds its own lock file
(`<library>/locks/job-<id>.lock`, an exclusive `flock`) for as long as it runs; the kernel drops it when
the process dies, so a `running` row whose lock is free belongs to a dead process: whoever reads it next
marks it failed (an index job's committed batches stay; a re-run skips them).

A queued job is claimed in one transaction (queued -> running, with the claiming process named), and only
while the claimer also holds the job's exclusive lock when its kind has one: the collection's index lock
(`locks/index-<hash>.lock`, the one `Library.index` takes) for index jobs, one library-wide lock for
training (it uses every core). So one runner per collection (one trainer per library) across processes,
and a job is never run twice. A dupes job is not queued: it starts running where it was asked.

Big results (a dupes job's groups) go to a file, `<library>/job-results/<id>.json`, named in the row.
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
    kind TEXT NOT NULL DEFAULT 'index',
    collection TEXT NOT NULL,
    paths TEXT NOT NULL,
    options TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    detail TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    report TEXT,
    report_file TEXT,
    error TEXT,
    error_code TEXT,
    exclusive TEXT,
    submitter TEXT,
    runner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, created);
"""
# columns a jobs.sqlite written before dupes and train jobs moved here lacks (all its rows are index jobs)
ADDED_COLUMNS = {"kind": "TEXT NOT NULL DEFAULT 'index'", "stage": "TEXT", "detail": "TEXT", "report_file": "TEXT",
                 "error_code": "TEXT", "exclusive": "TEXT"}
ORPHANED = ("the server process running it stopped before it finished; start the job again "
            "(an index job keeps the files it had done)")
ORPHANED_CODE = "process-died"
INLINE_REPORT_BYTES = 64 * 1024  # a longer report goes to a file under job-results/
TRAIN_LOCK = "train"


def collection_lock_name(collection: str) -> str:
    return "index-" + hashlib.sha256(collection.encode()).hexdigest()[:16]


def exclusive_for(kind: str, collection: str) -> str | None:
    """The lock a job of `kind` must hold while it runs, besides its own: index jobs one collection at a
    time (with `lookalike index` too), training one run per library; dupes jobs only read."""
    if kind == "index":
        return collection_lock_name(collection)
    if kind == "train":
        return TRAIN_LOCK
    return None


class FileLock:
    """An exclusive, non-blocking `flock` on one file (released by the kernel when the process exits).
    Two opens in one process conflict too, so a thread can test a lock another thread holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, *, create: bool = True) -> bool:
        """Take the lock; False when someone holds it (or, with `create=False`, when the file is gone)."""
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
        except FileNotFoundError:
            return False
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

    def release(self, *, remove: bool = False) -> None:
        if self._fd is not None:
            if remove:
                self.path.unlink(missing_ok=True)
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class CollectionLock(FileLock):
    """A collection's index lock: one index run at a time per collection, across processes."""

    def __init__(self, folder: Path, collection: str) -> None:
        super().__init__(folder / f"{collection_lock_name(collection)}.lock")


class HeldLocks:
    """The locks a running job holds (its own, and its kind's exclusive one); released after `finish`."""

    def __init__(self, own: FileLock, exclusive: FileLock | None = None) -> None:
        self.own, self.exclusive = own, exclusive

    def release(self) -> None:
        self.own.release(remove=True)
        if self.exclusive is not None:
            self.exclusive.release()


class JobsDB:
    """The jobs table. `path=None`: a private in-memory table (one process, e.g. tests)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.locks = path.parent / "locks"
            self.results = path.parent / "job-results"
        else:
            scratch = Path(tempfile.mkdtemp(prefix="lookalike-jobs-"))
            self.locks, self.results = scratch / "locks", scratch / "job-results"
        self.locks.mkdir(exist_ok=True)
        self._conn = sqlite3.connect(str(path) if path else ":memory:", timeout=30, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            if path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
            self._conn.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        with self._write() as db:
            have = {r["name"] for r in db.execute("PRAGMA table_info(jobs)").fetchall()}
            for name, kind in ADDED_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            for row in db.execute("SELECT id, collection FROM jobs WHERE kind='index' AND exclusive IS NULL "
                                  "AND state='queued'").fetchall():
                db.execute("UPDATE jobs SET exclusive=? WHERE id=?", (collection_lock_name(row["collection"]),
                                                                      row["id"]))

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

    def _lock_named(self, name: str) -> FileLock:
        return FileLock(self.locks / f"{name}.lock")

    def _own_lock(self, job_id: str) -> FileLock:
        return self._lock_named(f"job-{job_id}")

    def submit(self, row: dict[str, Any], keep: int) -> dict[str, Any]:
        """Insert a queued job, or return the identical job already queued (same kind, collection, paths
        and options): asking twice before it starts gets the same job, in whichever process it was asked.
        `keep`: how many finished jobs of this kind the table keeps."""
        kind = row.get("kind", "index")
        paths, options = json.dumps(row["paths"]), json.dumps(row["options"], sort_keys=True)
        with self._write() as db:
            same = db.execute("SELECT * FROM jobs WHERE state='queued' AND kind=? AND collection=? AND paths=? "
                              "AND options=? ORDER BY created LIMIT 1",
                              (kind, row["collection"], paths, options)).fetchone()
            if same is not None:
                return self._dict(same)
            self._insert(db, row, kind, "queued")
            self._trim(db, kind, keep)
        return {**row, "kind": kind, "state": "queued"}

    def start(self, row: dict[str, Any], runner: str, keep: int) -> tuple[dict[str, Any], HeldLocks]:
        """Insert a job already running here (a kind with no exclusive lock: it needs no queue), its own
        lock taken first so no reader ever sees it running unlocked."""
        kind = row["kind"]
        own = self._own_lock(row["id"])
        if not own.acquire():
            raise RuntimeError(f"job lock {own.path} is held")  # ids are random: never happens
        now = time.time()
        try:
            with self._write() as db:
                self._insert(db, {**row, "started": now, "runner": runner}, kind, "running")
                self._trim(db, kind, keep)
        except BaseException:
            own.release(remove=True)
            raise
        return {**row, "state": "running", "started": now, "runner": runner}, HeldLocks(own)

    @staticmethod
    def _insert(db: sqlite3.Connection, row: dict[str, Any], kind: str, state: str) -> None:
        exclusive = row.get("exclusive", exclusive_for(kind, row["collection"]))
        db.execute("INSERT INTO jobs(id, kind, collection, paths, options, state, stage, created, started, "
                   "submitter, runner, exclusive) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (row["id"], kind, row["collection"], json.dumps(row["paths"]),
                    json.dumps(row["options"], sort_keys=True), state, row.get("stage"), row["created"],
                    row.get("started"), row["submitter"], row.get("runner"), exclusive))

    def _trim(self, db: sqlite3.Connection, kind: str, keep: int) -> None:
        old = db.execute("SELECT id, report_file FROM jobs WHERE kind=? AND finished IS NOT NULL AND id NOT IN "
                         "(SELECT id FROM jobs WHERE kind=? ORDER BY created DESC LIMIT ?)",
                         (kind, kind, keep)).fetchall()
        for row in old:
            db.execute("DELETE FROM jobs WHERE id=?", (row["id"],))
            if row["report_file"]:
                (self.results / row["report_file"]).unlink(missing_ok=True)

    def get(self, job_id: str) -> dict[str, Any] | None:
        rows = self._read("SELECT * FROM jobs WHERE id=?", (job_id,))
        if rows and rows[0]["state"] == "running" and self._reap([job_id]):
            rows = self._read("SELECT * FROM jobs WHERE id=?", (job_id,))
        return self._dict(rows[0]) if rows else None

    def list(self, limit: int = 200, kind: str = "index") -> list[dict[str, Any]]:
        self._reap_running(kind)
        return [self._dict(r) for r in self._read("SELECT * FROM jobs WHERE kind=? ORDER BY created DESC, "
                                                  "rowid DESC LIMIT ?", (kind, limit))]

    def count(self, state: str, kind: str = "index") -> int:
        if state == "running":
            self._reap_running(kind)
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE state=? AND kind=?", (state, kind))[0][0])

    def _reap_running(self, kind: str) -> None:
        ids = [r["id"] for r in self._read("SELECT id FROM jobs WHERE state='running' AND kind=?", (kind,))]
        if ids:
            self._reap(ids)

    def _reap(self, ids: list[str]) -> bool:
        """Fail the jobs among `ids` still `running` whose own lock nobody holds (their process died);
        True when there was one. Does nothing to a job whose lock is held, in this process or another."""
        if fcntl is None:  # pragma: no cover - without flock a live job cannot be told from a dead one
            return False
        dead = []
        for job_id in ids:
            lock = self._own_lock(job_id)
            if lock.acquire(create=False):
                dead.append((job_id, lock))
            elif not lock.path.exists():
                dead.append((job_id, None))  # no lock file: finished just now, or a row from before locks
        if not dead:
            return False
        reaped = 0
        try:
            with self._write() as db:
                for job_id, _ in dead:  # a job that finished meanwhile is no longer 'running': left alone
                    reaped += db.execute("UPDATE jobs SET state='failed', error=?, error_code=?, finished=? "
                                         "WHERE id=? AND state='running'",
                                         (ORPHANED, ORPHANED_CODE, time.time(), job_id)).rowcount
        finally:
            for _, lock in dead:
                if lock is not None:
                    lock.release(remove=True)
        return reaped > 0

    def claim(self, runner: str, kind: str = "index") -> tuple[dict[str, Any], HeldLocks] | None:
        """The oldest queued job of `kind` whose exclusive lock is free, now running here with its locks
        held (the caller releases them after `finish`); None when there is none."""
        if not self._read("SELECT 1 FROM jobs WHERE state='queued' AND kind=? LIMIT 1", (kind,)):
            return None  # the idle poll: a read, no write lock
        self._reap_running(kind)
        with self._write() as db:
            busy: set[str] = set()
            for row in db.execute("SELECT * FROM jobs WHERE state='queued' AND kind=? ORDER BY created, rowid",
                                  (kind,)).fetchall():
                name = row["exclusive"]
                if name in busy:
                    continue
                exclusive = self._lock_named(name) if name else None
                if exclusive is not None and not exclusive.acquire():
                    busy.add(name)
                    continue
                own = self._own_lock(row["id"])
                if not own.acquire():  # pragma: no cover - a queued job's lock is never held
                    if exclusive is not None:
                        exclusive.release()
                    continue
                now = time.time()
                db.execute("UPDATE jobs SET state='running', started=?, runner=? WHERE id=?", (now, runner, row["id"]))
                return {**self._dict(row), "state": "running", "started": now, "runner": runner}, \
                    HeldLocks(own, exclusive)
        return None

    def progress(self, job_id: str, done: int, total: int | None, stage: str | None = None,
                 detail: dict[str, Any] | None = None) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET done=?, total=?, stage=?, detail=? WHERE id=?",
                       (done, total, stage, json.dumps(detail) if detail else None, job_id))

    def finish(self, job_id: str, state: str, *, done: int, total: int | None, stage: str | None = None,
               detail: dict[str, Any] | None = None, report: dict[str, Any] | None = None,
               error: str | None = None, error_code: str | None = None) -> float:
        """Record a job's outcome; a report over INLINE_REPORT_BYTES is written to a file the row names."""
        text = json.dumps(report) if report is not None else None
        report_file = None
        if text is not None and len(text) > INLINE_REPORT_BYTES:
            report_file = f"{job_id}.json"
            self.results.mkdir(exist_ok=True)
            partial = self.results / f".{job_id}.{os.getpid()}.tmp"
            partial.write_text(text)
            partial.replace(self.results / report_file)
            text = None
        finished = time.time()
        with self._write() as db:
            db.execute("UPDATE jobs SET state=?, done=?, total=?, stage=?, detail=?, report=?, report_file=?, "
                       "error=?, error_code=?, finished=? WHERE id=?",
                       (state, done, total, stage, json.dumps(detail) if detail else None, text, report_file,
                        error, error_code, finished, job_id))
        return finished

    def cancel_queued(self, submitter: str, error: str, kind: str = "index") -> list[str]:
        """Cancel the queued jobs of `kind` that `submitter` asked for; returns their ids."""
        with self._write() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM jobs WHERE state='queued' AND kind=? AND "
                                               "submitter=?", (kind, submitter)).fetchall()]
            db.execute("UPDATE jobs SET state='cancelled', error=?, error_code='shutting-down', finished=? "
                       "WHERE state='queued' AND kind=? AND submitter=?", (error, time.time(), kind, submitter))
        return ids

    def _dict(self, row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        data["paths"] = json.loads(data["paths"])
        data["options"] = json.loads(data["options"])
        data["detail"] = json.loads(data["detail"]) if data.get("detail") else {}
        if data.get("report_file"):
            try:
                data["report"] = json.loads((self.results / data["report_file"]).read_text())
            except FileNotFoundError:  # trimmed by another process just now
                data["report"] = None
        else:
            data["report"] = json.loads(data["report"]) if data.get("report") else None
        return data
