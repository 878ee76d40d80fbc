"""One write at a time per library, across threads and processes (`serve --workers N`, a CLI next to a server).

SQLite already lets one transaction write at a time, but an upload is more than one transaction: check the
collection, store the bytes, upsert, refresh the refinement of the neighbours (index runs hold it per batch). Two
of those interleaved from two processes would redo each other's refinement, and a stale read between them could
replace the wrong row. So each such write holds `<library>/locks/writes.lock` (an exclusive `flock`, dropped by the
kernel if the process dies) and waits at most `wait` seconds for it; a writer that can't get it in time answers
Busy (HTTP 503 with Retry-After) instead of queueing without bound. Reads never take it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import TracebackType

from .errors import Busy

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the thread lock alone
    fcntl = None  # type: ignore[assignment]

POLL_SECONDS = 0.01


class LibraryWriteLock:
    """`with lock:` holds the library's write lock; raises Busy after `wait` seconds of waiting."""

    def __init__(self, folder: Path, *, wait: float = 30.0) -> None:
        self.path = Path(folder) / "writes.lock"
        self.wait = max(0.0, float(wait))
        self._thread_lock = threading.Lock()
        self._fd: int | None = None

    def __enter__(self) -> LibraryWriteLock:
        deadline = time.monotonic() + self.wait
        got = self._thread_lock.acquire(timeout=self.wait) if self.wait > 0 else self._thread_lock.acquire(False)
        if not got:
            raise self._busy()
        try:
            self._take_file(deadline)
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._thread_lock.release()

    def _take_file(self, deadline: float) -> None:
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return
            except OSError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise self._busy() from None
                time.sleep(POLL_SECONDS)

    def _busy(self) -> Busy:
        return Busy(f"another write to this library is still running after {self.wait:g} s (an index batch, upload, "
                    "replace or remove in another request or process); retry shortly", code="write-busy",
                    retry_after=max(1, round(self.wait) or 1))


__all__ = ["LibraryWriteLock"]
