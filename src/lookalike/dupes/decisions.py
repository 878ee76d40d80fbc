"""The user's decisions about copies, kept across runs: "not duplicates" pairs and resolved groups.

A small SQLite file under the library home (`dupes.sqlite`), keyed by content hash (sha256 of the
file's bytes), not by id or path: re-indexing, renaming or moving a file does not bring a decided
pair back, and a decision covers the same picture in every collection of the library.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

SCHEMA_VERSION = 1


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


class Decisions:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version < 1:
            with self._db:
                self._db.execute("CREATE TABLE IF NOT EXISTS not_duplicates (hash_a TEXT NOT NULL, "
                                 "hash_b TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (hash_a, hash_b))")
                self._db.execute("CREATE TABLE IF NOT EXISTS resolved (id INTEGER PRIMARY KEY, hashes TEXT NOT NULL,"
                                 " action TEXT NOT NULL, created REAL NOT NULL)")
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def of_library(cls, home: str | Path) -> Decisions:
        return cls(Path(home) / "dupes.sqlite")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Decisions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- "not duplicates" ----------------------------------------------------------------------
    def mark_not_duplicates(self, hashes: Iterable[str]) -> int:
        """Every pair among `hashes` is never grouped again; returns the number of new pairs."""
        hs = sorted({h for h in hashes if h})
        pairs = [_key(a, b) for i, a in enumerate(hs) for b in hs[i + 1:]]
        now = time.time()
        before = self._db.total_changes
        with self._db:
            self._db.executemany("INSERT OR IGNORE INTO not_duplicates VALUES (?, ?, ?)",
                                 [(a, b, now) for a, b in pairs])
        return self._db.total_changes - before

    def forget_not_duplicates(self, hashes: Iterable[str]) -> int:
        hs = sorted(set(hashes))
        pairs = [_key(a, b) for i, a in enumerate(hs) for b in hs[i + 1:]]
        before = self._db.total_changes
        with self._db:
            self._db.executemany("DELETE FROM not_duplicates WHERE hash_a = ? AND hash_b = ?", pairs)
        return self._db.total_changes - before

    def not_duplicates(self) -> dict[str, set[str]]:
        """hash -> the hashes it must never be grouped with."""
        out: dict[str, set[str]] = {}
        for a, b in self._db.execute("SELECT hash_a, hash_b FROM not_duplicates"):
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
        return out

    # -- resolved groups -----------------------------------------------------------------------
    def mark_resolved(self, hashes: Iterable[str], action: str = "resolved") -> None:
        """A group the user dealt with: no later run reports a group made only of these pictures."""
        hs = sorted({h for h in hashes if h})
        if len(hs) < 1:
            return
        with self._db:
            self._db.execute("INSERT INTO resolved (hashes, action, created) VALUES (?, ?, ?)",
                             (json.dumps(hs), action, time.time()))

    def forget_resolved(self, hashes: Iterable[str]) -> int:
        """Drop every resolved group that holds one of `hashes` (an undo does this)."""
        wanted = set(hashes)
        drop = [rid for rid, hs in self._db.execute("SELECT id, hashes FROM resolved")
                if wanted & set(json.loads(hs))]
        with self._db:
            self._db.executemany("DELETE FROM resolved WHERE id = ?", [(r,) for r in drop])
        return len(drop)

    def resolved(self) -> list[frozenset[str]]:
        return [frozenset(json.loads(hs)) for (hs,) in self._db.execute("SELECT hashes FROM resolved")]

    def is_resolved(self, hashes: Iterable[str], resolved: list[frozenset[str]] | None = None) -> bool:
        hs = set(hashes)
        return any(hs <= r for r in (self.resolved() if resolved is None else resolved))
