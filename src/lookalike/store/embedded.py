"""The embedded store: a SQLite catalogue that owns every row and vector, plus one Faiss index per
collection that is only a derived, rebuildable cache.

Why this shape: a batch of rows and their vectors is committed in one SQLite transaction, so a run
killed at any instant leaves either all of a batch or none of it. Every write bumps the collection's
`generation` and, in the same transaction, logs which rows' index entries it changed (`index_log`).
An index file is named after the generation it was built from; an older file (or another process's
index in memory) catches up by replaying the rows logged since, and a file too old for the log is
rebuilt from the stored vectors. Catalogue and index can't disagree.

Small writes therefore cost a few rows in SQLite, not a rewrite of the index file: the file is
rewritten only once the log holds more than LOG_LIMIT_FRACTION of the collection (see `flush`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import LookalikeError, StaleWrite, UnknownCollection
from .base import CollectionInfo, Filter, ImageRecord, Store

SCHEMA_VERSION = 4
LOG_LIMIT_MIN = 1000  # an index file is rewritten once its log holds more rows than this...
LOG_LIMIT_FRACTION = 0.05  # ...and more than this fraction of the collection
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
EXACT_FILTER_LIMIT = 4096  # filters selecting fewer rows than this are searched exactly

_MIGRATIONS: list[str] = [
    # 1: initial schema
    """
    CREATE TABLE collections (
        name TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        dim INTEGER NOT NULL,
        metric TEXT NOT NULL DEFAULT 'cosine',
        index_spec TEXT NOT NULL DEFAULT 'auto',
        created REAL NOT NULL,
        generation INTEGER NOT NULL DEFAULT 0,
        settings TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
        path TEXT NOT NULL,
        content_hash TEXT NOT NULL DEFAULT '',
        size INTEGER NOT NULL DEFAULT 0,
        mtime REAL NOT NULL DEFAULT 0,
        width INTEGER NOT NULL DEFAULT 0,
        height INTEGER NOT NULL DEFAULT 0,
        group_id TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        metadata TEXT NOT NULL DEFAULT '{}',
        added REAL NOT NULL,
        vector BLOB NOT NULL,
        UNIQUE (collection, path)
    );
    CREATE INDEX images_hash ON images (collection, content_hash);
    CREATE INDEX images_group ON images (collection, group_id);
    """,
    # 2: database-side augmentation (see refine.py): the vector the index searches, and the
    # neighbour lists it was computed from, so adding or removing an image updates only its neighbours
    """
    ALTER TABLE images ADD COLUMN augmented BLOB;
    CREATE TABLE knn (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        neighbour INTEGER NOT NULL,
        cos REAL NOT NULL,
        PRIMARY KEY (image_id, neighbour)
    ) WITHOUT ROWID;
    CREATE INDEX knn_neighbour ON knn (neighbour);
    """,
    # 3: find pending rows without scanning every row (a partial index holds only them)
    """
    CREATE INDEX images_pending ON images (collection, id) WHERE augmented IS NULL;
    """,
    # 4: which rows each generation changed in the index, so an older index catches up by replaying
    # them; generations below `log_floor` are no longer logged (libraries from before the log, pruned),
    # and `logged_generation` lags `generation` after a write by a lookalike that predates the log
    """
    CREATE TABLE index_log (
        collection TEXT NOT NULL REFERENCES collections(name) ON DELETE CASCADE,
        generation INTEGER NOT NULL,
        image_id INTEGER NOT NULL,
        PRIMARY KEY (collection, generation, image_id)
    ) WITHOUT ROWID;
    ALTER TABLE collections ADD COLUMN log_floor INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE collections ADD COLUMN logged_generation INTEGER NOT NULL DEFAULT 0;
    UPDATE collections SET log_floor = generation, logged_generation = generation;
    """,
]


@dataclass
class _LoadedIndex:
    index: Any
    generation: int
    index_type: str
    created: float  # the collection's creation time: an index of a dropped namesake is never reused
    on_disk: bool  # read from a file (and caught up since): that file plus the log reproduce it


def _row_to_record(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        id=row["id"], path=row["path"], content_hash=row["content_hash"], size=row["size"],
        mtime=row["mtime"], width=row["width"], height=row["height"], group_id=row["group_id"],
        tags=json.loads(row["tags"]), metadata=json.loads(row["metadata"]), added=row["added"],
    )


class EmbeddedStore(Store):
    """Faiss + SQLite in one library directory. Thread-safe; several processes may read while one writes."""

    def __init__(self, home: Path, *, exact_below: int = 50_000) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.index_dir = self.home / "indexes"
        self.index_dir.mkdir(exist_ok=True)
        self.exact_below = exact_below
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.home / "catalog.sqlite", check_same_thread=False,
                                   isolation_level=None, timeout=60)
        self._db.row_factory = sqlite3.Row
        self._open_catalogue()
        self._indexes: dict[str, _LoadedIndex] = {}
        self._written: set[str] = set()  # collections this process changed: flush saves their index

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction, taken before reading what it depends on (BEGIN IMMEDIATE)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # -- schema -------------------------------------------------------------------------------
    def _open_catalogue(self) -> None:
        """Switch to WAL and migrate, retrying while another process does the same to a brand-new file.

        Until the first process has switched a new catalogue to WAL it is in rollback-journal mode,
        where SQLite answers "database is locked" at once (no busy wait) to a reader that wants to
        write while another connection waits for the exclusive lock: a deadlock guard. Two processes
        opening a new library together (e.g. `index` and `info`) can hit that window; it is short."""
        for attempt in range(100):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                time.sleep(0.05)

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LookalikeError(
                    f"library at {self.home} was written by a newer lookalike (schema {version}); "
                    "upgrade lookalike to open it")
            for number in range(version, SCHEMA_VERSION):
                self._db.execute("BEGIN IMMEDIATE")
                if self._db.execute("PRAGMA user_version").fetchone()[0] > number:
                    self._db.execute("ROLLBACK")  # another process migrated while we waited for the lock
                    continue
                try:
                    for statement in _MIGRATIONS[number].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={number + 1}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    # -- collections --------------------------------------------------------------------------
    def _collection_row(self, name: str) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM collections WHERE name=?", (name,)).fetchone()
        if row is None:
            names = [r[0] for r in self._db.execute("SELECT name FROM collections ORDER BY name")]
            hint = f" (known: {', '.join(names)})" if names else " (the library is empty)"
            raise UnknownCollection(
                f"no collection named '{name}'{hint}; index a folder into it with "
                f"`lookalike index PATH --collection {name}` or create it with `lookalike collections create`")
        return row

    def create_collection(self, name: str, model: str, dim: int, metric: str = "cosine",
                          index_spec: str = "auto", settings: dict[str, Any] | None = None
                          ) -> CollectionInfo:
        if not NAME_RE.match(name):
            raise LookalikeError(f"invalid collection name '{name}': use 1-64 letters, digits, '_' or '-'")
        if metric not in ("cosine", "hamming"):
            raise LookalikeError(f"unknown metric '{metric}': use cosine or hamming")
        if index_spec != "auto":
            _check_factory(index_spec, dim, metric)
        with self._lock:
            exists = self._db.execute("SELECT 1 FROM collections WHERE name=?", (name,)).fetchone()
            if exists:
                raise LookalikeError(f"collection '{name}' already exists; drop it first or pick another name")
            self._db.execute(
                "INSERT INTO collections(name, model, dim, metric, index_spec, created, settings) "
                "VALUES (?,?,?,?,?,?,?)",
                (name, model, dim, metric, index_spec, time.time(), json.dumps(settings or {})))
        return self.collection(name)

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._collection_row(name)
            with self._transaction():
                self._db.execute("DELETE FROM images WHERE collection=?", (name,))
                self._db.execute("DELETE FROM collections WHERE name=?", (name,))
            self._indexes.pop(name, None)
            for path in [*self.index_dir.glob(f"{name}.*.faiss"), *self.index_dir.glob(f"{name}.*.json")]:
                path.unlink(missing_ok=True)

    def collections(self) -> list[CollectionInfo]:
        names = [r[0] for r in self._db.execute("SELECT name FROM collections ORDER BY name")]
        return [self.collection(n) for n in names]

    def collection(self, name: str) -> CollectionInfo:
        with self._lock:
            row = self._collection_row(name)
            count = self.count(name)
            index_type = self._load_index(name).index_type if count else self._planned_type(row, count)
            files = list(self.index_dir.glob(f"{name}.*.faiss"))
            augmented = count - len(self.pending(name))
            vector_bytes = (count + augmented) * (row["dim"] // 8 if row["metric"] == "hamming" else row["dim"] * 4)
            return CollectionInfo(
                name=name, model=row["model"], dim=row["dim"], metric=row["metric"],
                index_spec=row["index_spec"], created=row["created"], count=count,
                index_type=index_type,
                size_bytes=vector_bytes + sum(f.stat().st_size for f in files if f.exists()),
                settings=json.loads(row["settings"]))

    def collection_settings(self, name: str) -> tuple[str, dict[str, Any]]:
        row = self._collection_row(name)
        return row["metric"], json.loads(row["settings"])

    def set_collection_settings(self, name: str, settings: dict[str, Any]) -> None:
        with self._lock:
            self._collection_row(name)
            self._db.execute("UPDATE collections SET settings=? WHERE name=?", (json.dumps(settings), name))

    # -- rows ---------------------------------------------------------------------------------
    def count(self, collection: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images WHERE collection=?", (collection,)).fetchone()[0]

    def known_files(self, collection: str) -> dict[str, tuple[int, int, float, str]]:
        rows = self._db.execute(
            "SELECT id, path, size, mtime, content_hash FROM images WHERE collection=?", (collection,))
        return {r["path"]: (r["id"], r["size"], r["mtime"], r["content_hash"]) for r in rows}

    def _encode_vectors(self, row: sqlite3.Row, vectors: np.ndarray) -> list[bytes]:
        if row["metric"] == "hamming":
            want = (len(vectors), row["dim"] // 8)
            arr = np.ascontiguousarray(vectors, dtype=np.uint8)
        else:
            want = (len(vectors), row["dim"])
            arr = np.ascontiguousarray(vectors, dtype=np.float32)
        if arr.shape != want:
            raise LookalikeError(
                f"vectors of shape {arr.shape} do not fit collection '{row['name']}' "
                f"({row['model']}, {row['dim']}-d); use the collection's model or a new collection")
        if row["metric"] == "cosine" and not np.all(np.isfinite(arr)):
            raise LookalikeError("refusing to store vectors with NaN or infinite values")
        return [v.tobytes() for v in arr]

    def upsert(self, collection: str, records: list[ImageRecord], vectors: np.ndarray) -> list[int]:
        if len(records) != len(vectors):
            raise ValueError("records and vectors differ in length")
        if not records:
            return []
        with self._lock:
            row = self._collection_row(collection)
            blobs = self._encode_vectors(row, vectors)
            now = time.time()
            ids: list[int] = []
            replaced: list[int] = []
            with self._transaction():
                changed: list[int] = []
                untouched: list[int] = []  # rows whose vector is unchanged: the index keeps them as they are
                for rec, blob in zip(records, blobs, strict=True):
                    old = self._db.execute("SELECT id, vector FROM images WHERE collection=? AND path=?",
                                           (collection, rec.path)).fetchone()
                    values = (rec.content_hash, rec.size, rec.mtime, rec.width, rec.height, rec.group_id,
                              json.dumps(rec.tags), json.dumps(rec.metadata), blob)
                    if old is not None:
                        if old[1] == blob:  # same picture, new file facts: the vectors stay valid
                            self._db.execute(
                                "UPDATE images SET content_hash=?, size=?, mtime=?, width=?, height=?, "
                                "group_id=?, tags=?, metadata=?, vector=? WHERE id=?", (*values, old[0]))
                            ids.append(old[0])
                            untouched.append(old[0])
                            continue
                        self._db.execute(
                            "UPDATE images SET content_hash=?, size=?, mtime=?, width=?, height=?, "
                            "group_id=?, tags=?, metadata=?, vector=?, augmented=NULL WHERE id=?",
                            (*values, old[0]))
                        ids.append(old[0])
                        replaced.append(old[0])
                        changed.append(old[0])
                    else:
                        cur = self._db.execute(
                            "INSERT INTO images(collection, path, content_hash, size, mtime, width, height,"
                            " group_id, tags, metadata, vector, added) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (collection, rec.path, *values, now))
                        ids.append(int(cur.lastrowid))
                stale = self._invalidate_neighbours(collection, changed)
                add_ids = sorted((set(ids) - set(untouched)) | set(stale))
                new_gen = self._bump(collection, add_ids)
                add_vectors = self._index_vectors(collection, row, add_ids)  # before another writer can change them
            self._written.add(collection)
            for rec, new_id in zip(records, ids, strict=True):
                rec.id = new_id
            self._apply_to_index(collection, row, new_gen, remove=sorted(set(replaced) | set(stale)),
                                 add=(np.asarray(add_ids, dtype=np.int64), add_vectors))
            return ids

    def _invalidate_neighbours(self, collection: str, changed: list[int]) -> list[int]:
        """Rows whose augmented vector used a changed or removed row go back to pending (inside a transaction).

        Returns those still-present rows, so the caller can put their plain vectors back in the index."""
        if not changed:
            return []
        stale: set[int] = set()
        for chunk in _chunks(changed, 500):
            marks = ",".join("?" * len(chunk))
            stale.update(r[0] for r in self._db.execute(
                f"SELECT DISTINCT image_id FROM knn WHERE neighbour IN ({marks})", chunk))
            self._db.execute(f"DELETE FROM knn WHERE image_id IN ({marks})", chunk)
        stale -= set(changed)
        for chunk in _chunks(sorted(stale), 500):
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"UPDATE images SET augmented=NULL WHERE +collection=? AND id IN ({marks})",
                             (collection, *chunk))
            self._db.execute(f"DELETE FROM knn WHERE image_id IN ({marks})", chunk)
        return sorted(stale)

    def remove(self, collection: str, ids: list[int]) -> int:
        with self._lock:
            row = self._collection_row(collection)
            if not ids:
                return 0
            with self._transaction():
                removed = 0
                for chunk in _chunks(ids, 500):
                    marks = ",".join("?" * len(chunk))
                    removed += self._db.execute(
                        f"DELETE FROM images WHERE +collection=? AND id IN ({marks})",
                        (collection, *chunk)).rowcount
                stale = self._invalidate_neighbours(collection, list(ids)) if removed else []
                new_gen = self._bump(collection, set(ids) | set(stale)) if removed else None
                stale_vectors = self._index_vectors(collection, row, stale)
            if new_gen is not None:
                self._written.add(collection)
                self._apply_to_index(collection, row, new_gen, remove=sorted(set(ids) | set(stale)),
                                     add=(np.asarray(stale, dtype=np.int64), stale_vectors))
            return removed

    def update_metadata(self, collection: str, image_id: int, *, group_id: str | None = None,
                        tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> None:
        with self._lock:
            self._collection_row(collection)
            current = self.get(collection, [image_id])
            if not current:
                raise LookalikeError(f"no image with id {image_id} in collection '{collection}'")
            rec = current[0]
            self._db.execute(
                "UPDATE images SET group_id=?, tags=?, metadata=? WHERE id=?",
                (group_id if group_id is not None else rec.group_id,
                 json.dumps(tags if tags is not None else rec.tags),
                 json.dumps({**rec.metadata, **metadata} if metadata is not None else rec.metadata),
                 image_id))

    def get(self, collection: str, ids: list[int]) -> list[ImageRecord]:
        out: dict[int, ImageRecord] = {}
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                    "SELECT id, path, content_hash, size, mtime, width, height, group_id, tags, metadata, "
                    f"added FROM images WHERE +collection=? AND id IN ({marks})", (collection, *chunk)):
                out[row["id"]] = _row_to_record(row)
        return [out[i] for i in ids if i in out]

    def find_ids(self, collection: str, *, paths: list[str] | None = None,
                 flt: Filter | None = None) -> list[int]:
        where, args = ["collection=?"], [collection]
        if paths is not None:
            found: list[int] = []
            for chunk in _chunks(paths, 500):
                marks = ",".join("?" * len(chunk))
                found += [r[0] for r in self._db.execute(
                    f"SELECT id FROM images WHERE collection=? AND path IN ({marks})", (collection, *chunk))]
            return found
        if flt is not None:
            if flt.group_id is not None:
                where.append("group_id=?")
                args.append(flt.group_id)
            if flt.path_prefix is not None:
                where.append("substr(path, 1, ?)=?")
                args += [len(flt.path_prefix), flt.path_prefix]
            for tag in flt.tags:
                where.append("EXISTS (SELECT 1 FROM json_each(images.tags) WHERE value=?)")
                args.append(tag)
            for key, value in flt.metadata.items():
                where.append("json_extract(metadata, ?)=?")
                args += ["$." + json.dumps(str(key)), value]
            if flt.ids is not None:
                where.append(f"id IN ({','.join(str(int(i)) for i in flt.ids) or 'NULL'})")
        sql = f"SELECT id FROM images WHERE {' AND '.join(where)} ORDER BY id"
        return [r[0] for r in self._db.execute(sql, args)]

    def _blobs(self, collection: str, ids: list[int], column: str) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for chunk in _chunks([int(i) for i in ids], 500):
            marks = ",".join("?" * len(chunk))
            for r in self._db.execute(
                    f"SELECT id, {column} FROM images WHERE +collection=? AND id IN ({marks})", (collection, *chunk)):
                found[r[0]] = r[1]
        return found

    def vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        row = self._collection_row(collection)
        ids = [int(i) for i in ids]
        found = self._blobs(collection, ids, "vector")
        missing = [i for i in ids if i not in found]
        if missing:
            raise LookalikeError(f"no image with id {missing[0]} in collection '{collection}'")
        return self._decode_blobs(row, [found[i] for i in ids])

    def all_vectors(self, collection: str, *, augmented: bool = False) -> tuple[np.ndarray, np.ndarray]:
        row = self._collection_row(collection)
        ids, blobs = [], []
        column = "COALESCE(augmented, vector)" if augmented else "vector"
        for r in self._db.execute(f"SELECT id, {column} FROM images WHERE collection=? ORDER BY id",
                                  (collection,)):
            ids.append(r[0])
            blobs.append(r[1])
        return np.asarray(ids, dtype=np.int64), self._decode_blobs(row, blobs)

    def _index_vectors(self, collection: str, row: sqlite3.Row, ids: list[int]) -> np.ndarray:
        """What the index holds for these rows: the augmented vector where there is one, else the plain one."""
        ids = [int(i) for i in ids]
        found = self._blobs(collection, ids, "COALESCE(augmented, vector)")
        return self._decode_blobs(row, [found[i] for i in ids if i in found])

    def index_vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        with self._lock:
            row = self._collection_row(collection)
            vecs = self._index_vectors(collection, row, ids)
            if len(vecs) != len(ids):
                raise LookalikeError(f"some of ids {ids[:5]} are not in collection '{collection}'")
            return vecs

    def pending(self, collection: str) -> list[int]:
        return [r[0] for r in self._db.execute(
            "SELECT id FROM images WHERE collection=? AND augmented IS NULL ORDER BY id", (collection,))]

    def neighbour_lists(self, collection: str, ids: list[int]) -> dict[int, list[tuple[int, float]]]:
        out: dict[int, list[tuple[int, float]]] = {}
        for chunk in _chunks(list(ids), 500):
            marks = ",".join("?" * len(chunk))
            for r in self._db.execute(
                    f"SELECT image_id, neighbour, cos FROM knn WHERE image_id IN ({marks})", chunk):
                out.setdefault(r[0], []).append((r[1], r[2]))
        for lst in out.values():
            lst.sort(key=lambda pair: -pair[1])
        return out

    def generation(self, collection: str) -> int:
        return int(self._collection_row(collection)["generation"])

    def set_augmented(self, collection: str, ids: list[int], vectors: np.ndarray,
                      neighbours: list[list[tuple[int, float]]], *, if_generation: int | None = None) -> int:
        with self._lock:
            row = self._collection_row(collection)
            if not ids:
                return int(row["generation"])
            blobs = self._encode_vectors(row, vectors)
            with self._transaction():
                now = self._db.execute("SELECT generation FROM collections WHERE name=?", (collection,)).fetchone()[0]
                if if_generation is not None and now != if_generation:
                    raise StaleWrite(f"collection '{collection}' changed while its refinement was computed")
                kept: list[int] = []
                for image_id, blob, lst in zip(ids, blobs, neighbours, strict=True):
                    cur = self._db.execute("UPDATE images SET augmented=? WHERE +collection=? AND id=?",
                                           (blob, collection, image_id))
                    if cur.rowcount == 0:
                        continue  # removed meanwhile by another writer
                    kept.append(image_id)
                    self._db.execute("DELETE FROM knn WHERE image_id=?", (image_id,))
                    self._db.executemany("INSERT INTO knn(image_id, neighbour, cos) VALUES (?,?,?)",
                                         [(image_id, int(n), float(c)) for n, c in lst])
                new_gen = self._bump(collection, kept)
                kept_vectors = self._index_vectors(collection, row, kept)
            self._written.add(collection)
            self._apply_to_index(collection, row, new_gen, remove=kept,
                                 add=(np.asarray(kept, dtype=np.int64), kept_vectors))
            return int(new_gen)

    def clear_augmented(self, collection: str) -> None:
        with self._lock:
            self._collection_row(collection)
            with self._transaction():
                self._db.execute("DELETE FROM knn WHERE image_id IN (SELECT id FROM images WHERE collection=?)",
                                 (collection,))
                self._db.execute("UPDATE images SET augmented=NULL WHERE collection=?", (collection,))
                self._bump(collection, None)
            self._written.add(collection)
            self._indexes.pop(collection, None)

    @staticmethod
    def _decode_blobs(row: sqlite3.Row, blobs: list[bytes]) -> np.ndarray:
        if row["metric"] == "hamming":
            width, dtype = row["dim"] // 8, np.uint8
        else:
            width, dtype = row["dim"], np.float32
        if not blobs:
            return np.zeros((0, width), dtype=dtype)
        return np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), width).copy()

    def _bump(self, collection: str, changed: set[int] | list[int] | None) -> int:
        """Start the next generation (inside the write's transaction) and log the rows whose index entry
        it changes; None means too many to list (every row), so older indexes must be rebuilt."""
        self._db.execute("UPDATE collections SET generation=generation+1 WHERE name=?", (collection,))
        gen, logged = self._db.execute("SELECT generation, logged_generation FROM collections WHERE name=?",
                                       (collection,)).fetchone()
        self._db.execute("UPDATE collections SET logged_generation=? WHERE name=?", (gen, collection))
        if changed is None or logged != gen - 1:  # (an older lookalike wrote without logging: the log has a gap)
            self._db.execute("DELETE FROM index_log WHERE collection=?", (collection,))
            self._db.execute("UPDATE collections SET log_floor=? WHERE name=?", (gen, collection))
        else:
            self._db.executemany("INSERT OR IGNORE INTO index_log(collection, generation, image_id) VALUES (?,?,?)",
                                 [(collection, gen, int(i)) for i in sorted(changed)])
        return gen

    # -- the Faiss index (derived) ------------------------------------------------------------
    def _planned_type(self, row: sqlite3.Row, count: int) -> str:
        if row["index_spec"] != "auto":
            return row["index_spec"]
        if row["metric"] == "hamming":
            return "BFlat"
        if count < self.exact_below:
            return "Flat"
        # IVF, not HNSW: it removes and replaces vectors in place, which refinement and re-indexing
        # need, and it builds in seconds; nprobe (below) keeps recall high
        return f"IVF{_nlist(count)},Flat"

    def _new_index(self, row: sqlite3.Row, spec: str, train: np.ndarray | None) -> tuple[Any, str]:
        dim = row["dim"]
        if row["metric"] == "hamming":
            return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(dim)), "BFlat"
        inner = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        if not inner.is_trained:
            if train is None or len(train) < _min_train(spec):
                inner = faiss.IndexFlatIP(dim)  # too few vectors to train yet: exact until there are
                spec = f"Flat (until {_min_train(spec)} vectors for {spec})"
            else:
                inner.train(train)
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = 128
        ivf = _as_ivf(inner)
        if ivf is not None:
            ivf.nprobe = _nprobe(ivf.nlist)
            return inner, spec  # IVF stores our ids itself and removes them in place (an id map can't, over IVF)
        return faiss.IndexIDMap2(inner), spec

    def _index_file(self, collection: str, generation: int) -> Path:
        return self.index_dir / f"{collection}.{generation}.faiss"

    def _saved_generations(self, collection: str, upto: int) -> list[int]:
        """Generations of this collection's index files, newest first, none newer than `upto`."""
        found = []
        for path in self.index_dir.glob(f"{collection}.*.faiss"):
            generation = path.name[len(collection) + 1:-len(".faiss")]
            if generation.isdigit() and int(generation) <= upto:
                found.append(int(generation))
        return sorted(found, reverse=True)

    def _index_meta(self, collection: str, generation: int) -> dict[str, Any] | None:
        try:
            meta = json.loads(self._index_file(collection, generation).with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and "index_type" in meta else None

    def _read_index_file(self, collection: str, row: sqlite3.Row, generation: int) -> _LoadedIndex | None:
        meta = self._index_meta(collection, generation)
        if meta is None or meta.get("created", row["created"]) != row["created"]:
            return None  # no description, or left by a dropped collection of the same name
        try:
            reader = faiss.read_index_binary if row["metric"] == "hamming" else faiss.read_index
            index = reader(str(self._index_file(collection, generation)))
        except (RuntimeError, OSError):
            return None  # damaged, or removed meanwhile by a newer flush: the caller falls back
        if isinstance(index, faiss.IndexIDMap) and _as_ivf(_unwrap(index)) is not None:
            return None  # id map over IVF (older lookalike): removals would misnumber it
        return _LoadedIndex(index, generation, meta["index_type"], row["created"], on_disk=True)

    def _load_index(self, collection: str) -> _LoadedIndex:
        """The collection's index at its current generation: kept in memory, caught up from the log,
        read from the newest file (and caught up), or rebuilt from the stored vectors, cheapest first."""
        row = self._collection_row(collection)
        loaded = self._indexes.pop(collection, None)
        if loaded is not None and (loaded.generation == row["generation"] and loaded.created == row["created"]
                                   or self._catch_up(collection, loaded)):
            self._indexes[collection] = loaded
            return loaded
        saved = self._saved_generations(collection, row["generation"])
        if saved and saved[0] >= row["log_floor"]:
            loaded = self._read_index_file(collection, row, saved[0])
            if loaded is not None and (saved[0] == row["generation"] or self._catch_up(collection, loaded)):
                self._indexes[collection] = loaded
                return loaded
        return self._rebuild(collection)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Reads that must see one state of the catalogue (a read transaction; WAL keeps it consistent)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _catch_up(self, collection: str, loaded: _LoadedIndex) -> bool:
        """Bring an older index up to the current generation by replaying the logged rows: each is
        removed and, if still stored, added back with its current vector. False if it can't be."""
        if not _can_remove(loaded.index_type):
            return False
        with self._snapshot():
            now = self._db.execute("SELECT * FROM collections WHERE name=?", (collection,)).fetchone()
            if (now is None or now["created"] != loaded.created or now["logged_generation"] != now["generation"]
                    or not now["log_floor"] <= loaded.generation <= now["generation"]):
                return False
            ids = [r[0] for r in self._db.execute(
                "SELECT DISTINCT image_id FROM index_log WHERE collection=? AND generation>? ORDER BY image_id",
                (collection, loaded.generation))]
            present = self._blobs(collection, ids, "COALESCE(augmented, vector)")
        try:
            if ids:
                loaded.index.remove_ids(np.asarray(ids, dtype=np.int64))
            if present:
                keys = sorted(present)
                loaded.index.add_with_ids(self._decode_blobs(now, [present[i] for i in keys]),
                                          np.asarray(keys, dtype=np.int64))
        except RuntimeError:
            return False
        loaded.generation = now["generation"]
        return True

    def _rebuild(self, collection: str) -> _LoadedIndex:
        with self._snapshot():
            row = self._collection_row(collection)
            ids, vecs = self.all_vectors(collection, augmented=True)
        spec = self._planned_type(row, len(ids))
        index, index_type = self._new_index(row, spec, vecs)
        if len(ids):
            index.add_with_ids(vecs, ids)
        loaded = _LoadedIndex(index, row["generation"], index_type, row["created"], on_disk=False)
        self._indexes[collection] = loaded
        return loaded

    def _apply_to_index(self, collection: str, row: sqlite3.Row, new_gen: int, *,
                        remove: list[int], add: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Keep an in-memory index current after our own write, or leave it to catch up on next use."""
        loaded = self._indexes.get(collection)
        if loaded is None or loaded.generation != new_gen - 1:
            return
        try:
            if remove:
                loaded.index.remove_ids(np.asarray(remove, dtype=np.int64))
            if add is not None and len(add[0]):
                ids, vecs = add
                dtype = np.uint8 if row["metric"] == "hamming" else np.float32
                loaded.index.add_with_ids(np.ascontiguousarray(vecs, dtype=dtype), ids)
        except RuntimeError:  # e.g. HNSW cannot remove: rebuild on next use
            self._indexes.pop(collection)
            return
        loaded.generation = new_gen

    def index_for(self, collection: str) -> Any:
        """The current Faiss index of a collection (rebuilt if stale)."""
        with self._lock:
            return self._load_index(collection).index

    def search(self, collection: str, queries: np.ndarray, k: int, flt: Filter | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            row = self._collection_row(collection)
            hamming = row["metric"] == "hamming"
            q = np.ascontiguousarray(queries, dtype=np.uint8 if hamming else np.float32)
            if q.ndim == 1:
                q = q[None, :]
            k = max(1, int(k))
            with _omp_threads(1 if len(q) < 8 else 0):
                return self._search_locked(collection, row, q, k, flt)

    def _search_locked(self, collection: str, row: sqlite3.Row, q: np.ndarray, k: int, flt: Filter | None
                   ) -> tuple[np.ndarray, np.ndarray]:
        hamming = row["metric"] == "hamming"
        if flt is not None and not flt.is_empty():
            allowed = self.find_ids(collection, flt=flt)
            if not allowed:
                return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
            if len(allowed) <= EXACT_FILTER_LIMIT:
                return self._exact(row, q, k, allowed, self._index_vectors(collection, row, allowed))
            loaded = self._load_index(collection)
            inner = _unwrap(loaded.index) if not hamming else None
            selector = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            ivf = _as_ivf(inner) if inner is not None else None
            if isinstance(inner, faiss.IndexHNSW):
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
            elif ivf is not None:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)
            dist, ids = loaded.index.search(q, k, params=params)
        else:
            loaded = self._load_index(collection)
            dist, ids = loaded.index.search(q, k)
        return self._to_scores(row, dist, ids), ids.astype(np.int64)

    def _exact(self, row: sqlite3.Row, q: np.ndarray, k: int, ids: list[int], vecs: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        id_arr = np.asarray(ids, dtype=np.int64)
        if row["metric"] == "hamming":
            bits = np.unpackbits(q[:, None, :] ^ vecs[None, :, :], axis=2).sum(axis=2)
            sims = 1.0 - bits / row["dim"]
        else:
            sims = q @ vecs.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(sims, order, axis=1).astype(np.float32)
        out_ids = id_arr[order]
        if order.shape[1] < k:
            pad = k - order.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        return scores, out_ids

    @staticmethod
    def _to_scores(row: sqlite3.Row, dist: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if row["metric"] == "hamming":
            scores = 1.0 - dist.astype(np.float32) / row["dim"]
        else:
            scores = dist.astype(np.float32)
        return np.where(ids >= 0, scores, -np.inf).astype(np.float32)

    def flush(self) -> None:
        """Make what this process wrote cheap to open. A new index file is written (atomically, named
        after its generation; older files dropped, the log up to it pruned) when there is no usable
        file, when the index was rebuilt, when the log since the file has grown past LOG_LIMIT_*, or
        when the index type must change (the exact/approximate threshold was crossed). Otherwise the
        file plus the log already are the index, and a small write costs nothing here."""
        with self._lock:
            candidates = sorted(self._written | set(self._indexes))
            self._written.clear()
            for collection in candidates:
                row = self._db.execute("SELECT * FROM collections WHERE name=?", (collection,)).fetchone()
                if row is None:
                    continue
                loaded = self._indexes.get(collection)
                current = (loaded is not None and loaded.generation == row["generation"]
                           and loaded.created == row["created"])
                if current and not loaded.on_disk:
                    pass  # rebuilt here: the disk has nothing this good
                elif not self._needs_file(collection, row):
                    continue
                loaded = self._load_index(collection)
                if _must_retype(loaded.index_type, self._planned_type(row, loaded.index.ntotal), loaded.index.ntotal):
                    loaded = self._rebuild(collection)
                self._write_index_file(collection, loaded)

    def _needs_file(self, collection: str, row: sqlite3.Row) -> bool:
        """Whether opening this collection would replay too much, or can't use its newest file as is."""
        saved = self._saved_generations(collection, row["generation"])
        if not saved or saved[0] < row["log_floor"] or row["logged_generation"] != row["generation"]:
            return True
        meta = self._index_meta(collection, saved[0])
        if meta is None or meta.get("created", row["created"]) != row["created"]:
            return True
        count = self.count(collection)
        if _must_retype(meta["index_type"], self._planned_type(row, count), count):
            return True
        logged = self._db.execute("SELECT COUNT(*) FROM index_log WHERE collection=? AND generation>?",
                                  (collection, saved[0])).fetchone()[0]
        if logged and not _can_remove(meta["index_type"]):
            return True
        return logged > max(LOG_LIMIT_MIN, LOG_LIMIT_FRACTION * count)

    def _write_index_file(self, collection: str, loaded: _LoadedIndex) -> None:
        path = self._index_file(collection, loaded.generation)
        tag = f"{os.getpid()}-{threading.get_ident()}"  # unique per writer: peers may write the same generation
        tmp = path.with_name(f"{path.name}.tmp{tag}")
        meta_tmp = path.with_name(f"{path.stem}.json.tmp{tag}")
        binary = isinstance(loaded.index, faiss.IndexBinary)
        (faiss.write_index_binary if binary else faiss.write_index)(loaded.index, str(tmp))
        meta_tmp.write_text(json.dumps({"index_type": loaded.index_type, "generation": loaded.generation,
                                        "created": loaded.created}))
        os.replace(tmp, path)
        os.replace(meta_tmp, path.with_suffix(".json"))
        loaded.on_disk = True
        with self._transaction():  # the file now covers the log up to its generation
            self._db.execute(
                "UPDATE collections SET log_floor=MAX(log_floor, ?), logged_generation=CASE WHEN generation=? "
                "THEN generation ELSE logged_generation END WHERE name=? AND created=?",
                (loaded.generation, loaded.generation, collection, loaded.created))
            if self._db.execute("SELECT changes()").fetchone()[0]:  # not a namesake created meanwhile
                self._db.execute("DELETE FROM index_log WHERE collection=? AND generation<=?",
                                 (collection, loaded.generation))
        for generation in self._saved_generations(collection, loaded.generation - 1):
            old = self._index_file(collection, generation)  # newer files are not ours to remove
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()


@contextlib.contextmanager
def _omp_threads(n: int) -> Iterator[None]:
    """Single queries run on one thread: OpenMP fan-out costs more than it gains for them, and far more
    when other processes share the cores."""
    if n <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _unwrap(index: Any) -> Any:
    """The index inside an id map (or the index itself)."""
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.downcast_index(index.index)
    return faiss.downcast_index(index)


def _as_ivf(index: Any) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _nlist(count: int) -> int:
    """Inverted lists for `count` vectors: about 4*sqrt(N), a power of two, with >= 39 vectors per list."""
    by_size = 2 ** round(math.log2(4 * math.sqrt(max(count, 1))))
    by_training = 2 ** int(math.log2(max(count // 39, 1)))
    return int(max(4, min(by_size, by_training, 65536)))


def _family(spec: str) -> str:
    """'IVF1024,Flat' -> 'IVF': an index keeps its list count as the collection grows."""
    return re.sub(r"\d+", "", spec.split(",")[0])


def _can_remove(index_type: str) -> bool:
    """HNSW graphs can't drop vectors: such an index is rebuilt rather than caught up (a placeholder
    'Flat (until ... for HNSW...)' is a plain Flat index and can)."""
    return index_type.startswith("Flat") or "HNSW" not in index_type


def _must_retype(index_type: str, planned: str, count: int) -> bool:
    """The collection crossed the exact/approximate threshold, or a placeholder can now be trained."""
    if index_type.startswith("Flat (until"):
        return count >= _min_train(planned)
    return _family(planned) != _family(index_type)


def _nprobe(nlist: int) -> int:
    """Lists probed per query: about 3% of them, which keeps recall@10 near exact on clustered data."""
    return min(nlist, max(8, nlist // 32))


def _min_train(spec: str) -> int:
    """Vectors needed to train an index of this factory spec (IVF needs ~39 per list; PQ 256 per code)."""
    need = 1
    match = re.search(r"IVF(\d+)", spec)
    if match:
        need = max(need, 39 * int(match.group(1)))
    if re.search(r"PQ\d+", spec):
        need = max(need, 256 * 39 // 10)
    match = re.search(r"PCAW?R?(\d+)", spec)
    if match:  # a projection learned from fewer vectors than it keeps dimensions is noise
        need = max(need, int(match.group(1)))
    return need


def _check_factory(spec: str, dim: int, metric: str) -> None:
    if metric == "hamming":
        raise LookalikeError("binary (hamming) collections use exact search; leave --index-spec as auto")
    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise LookalikeError(f"invalid Faiss index_factory string '{spec}': {first[:120]}") from exc


__all__ = ["EmbeddedStore"]
