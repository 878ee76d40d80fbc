"""The SQLite catalogue of a library: collections, image rows with their vectors, the refinement rows
(augmented vectors, neighbour lists, pending), and the log of which rows' searchable vectors each write changed.

Why the catalogue keeps that log: a write commits its rows, bumps the collection's `generation` and logs the
index entries it changed (`index_log`) in one transaction, so a run killed at any instant leaves all of a batch
or none of it, log included. A derived vector index (faiss_index.py) replays the log to catch up and folds it
once it has saved itself; it reaches the catalogue only through the methods here, so another vector backend can
reuse the catalogue as it is. No Faiss in this file.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AlreadyExists, LookalikeError, StaleWrite, UnknownCollection, UnknownImage
from ..names import COLLECTION_NAME_RE, is_regions_name, valid_image_id
from .base import CollectionInfo, Filter, ImageRecord

SCHEMA_VERSION = 4
CATALOGUE_FILE = "catalog.sqlite"
NAME_RE = COLLECTION_NAME_RE  # the one definition: lookalike.names
SQL_CHUNK = 500  # ids bound in one statement: SQLite caps the number of parameters

MIGRATIONS: list[str] = [
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


@dataclass(frozen=True)
class CollectionState:
    """A collection's catalogue row as read at one moment: what a vector index is built and checked against."""

    name: str
    model: str
    dim: int
    metric: str
    index_spec: str
    created: float  # tells a collection from a dropped namesake
    generation: int  # bumped by every write
    log_floor: int  # the log holds no generation below this
    logged_generation: int  # < generation: a lookalike from before the log wrote since, the log has a gap
    settings: dict[str, Any]

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CollectionState:
        return cls(name=row["name"], model=row["model"], dim=row["dim"], metric=row["metric"],
                   index_spec=row["index_spec"], created=row["created"], generation=row["generation"],
                   log_floor=row["log_floor"], logged_generation=row["logged_generation"],
                   settings=json.loads(row["settings"]))

    @property
    def is_hamming(self) -> bool:
        return self.metric == "hamming"

    @property
    def vector_dtype(self) -> type[np.generic]:
        """Binary codes are packed bits (uint8); cosine vectors float32."""
        return np.uint8 if self.is_hamming else np.float32

    @property
    def vector_width(self) -> int:
        return self.dim // 8 if self.is_hamming else self.dim


@dataclass
class IndexChange:
    """What one committed write changed in the vectors a search index holds: drop `remove`, then add `add_ids`
    with `add_vectors` (their searchable vectors as committed). `everything`: too many rows to list, so an index
    older than `generation` must be rebuilt rather than updated."""

    collection: str
    generation: int  # the generation the write created: an index at generation - 1 can apply it in place
    remove: list[int]
    add_ids: np.ndarray
    add_vectors: np.ndarray
    everything: bool = False


def _row_to_record(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        id=row["id"], path=row["path"], content_hash=row["content_hash"], size=row["size"],
        mtime=row["mtime"], width=row["width"], height=row["height"], group_id=row["group_id"],
        tags=json.loads(row["tags"]), metadata=json.loads(row["metadata"]), added=row["added"],
    )


def _in_chunks(items: Iterable[Any]) -> Iterator[tuple[list[Any], str]]:
    """Slices of at most SQL_CHUNK items, each with its '?,?,...' placeholders, for `... IN (...)` statements."""
    items = list(items)
    for start in range(0, len(items), SQL_CHUNK):
        chunk = items[start:start + SQL_CHUNK]
        yield chunk, ",".join("?" * len(chunk))


class Catalogue:
    """The SQLite catalogue file of one library directory. `lock` guards its one connection; a store holds it
    across a catalogue write and the index update that follows, so no reader sees one without the other."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._db = sqlite3.connect(self.home / CATALOGUE_FILE, check_same_thread=False,
                                   isolation_level=None, timeout=60)
        self._db.row_factory = sqlite3.Row
        self._open()

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

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads that must see one state of the catalogue (a read transaction; WAL keeps it consistent)."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self._db.close()

    # -- schema -------------------------------------------------------------------------------
    def _open(self) -> None:
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
        with self.lock:
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
                    for statement in MIGRATIONS[number].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={number + 1}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    # -- collections --------------------------------------------------------------------------
    def find_collection(self, name: str) -> CollectionState | None:
        row = self._db.execute("SELECT * FROM collections WHERE name=?", (name,)).fetchone()
        return None if row is None else CollectionState.from_row(row)

    def collection_state(self, name: str) -> CollectionState:
        """The collection's row; raises UnknownCollection with what to do instead."""
        state = self.find_collection(name)
        if state is None:
            names = self.collection_names()
            hint = f" (known: {', '.join(names)})" if names else " (the library is empty)"
            raise UnknownCollection(
                f"no collection named '{name}'{hint}; index a folder into it with "
                f"`lookalike index PATH --collection {name}` or create it with `lookalike collections create`")
        return state

    def collection_names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM collections ORDER BY name")]

    @staticmethod
    def check_new_collection(name: str, metric: str) -> None:
        """Refuse a name that can't be a file name, or an unknown metric (before the index checks its spec)."""
        if not NAME_RE.match(name) and not is_regions_name(name):
            raise LookalikeError(f"invalid collection name '{name}': use 1-64 letters, digits, '_' or '-'")
        if metric not in ("cosine", "hamming"):
            raise LookalikeError(f"unknown metric '{metric}': use cosine or hamming")

    def create_collection(self, name: str, model: str, dim: int, metric: str = "cosine",
                          index_spec: str = "auto", settings: dict[str, Any] | None = None) -> None:
        self.check_new_collection(name, metric)
        with self.lock:
            if self.find_collection(name) is not None:
                raise AlreadyExists(f"collection '{name}' already exists; drop it first or pick another name")
            self._db.execute(
                "INSERT INTO collections(name, model, dim, metric, index_spec, created, settings) "
                "VALUES (?,?,?,?,?,?,?)",
                (name, model, dim, metric, index_spec, time.time(), json.dumps(settings or {})))

    def drop_collection(self, name: str) -> None:
        with self.lock:
            self.collection_state(name)
            with self._transaction():
                self._db.execute("DELETE FROM images WHERE collection=?", (name,))
                self._db.execute("DELETE FROM collections WHERE name=?", (name,))

    def collection_info(self, name: str) -> CollectionInfo:
        """The catalogue's part of a description; the index fills in its type and adds its files' size."""
        state = self.collection_state(name)
        count = self.count(name)
        augmented = count - len(self.pending(name))
        vector_bytes = state.vector_width * np.dtype(state.vector_dtype).itemsize
        return CollectionInfo(
            name=name, model=state.model, dim=state.dim, metric=state.metric, index_spec=state.index_spec,
            created=state.created, count=count, size_bytes=(count + augmented) * vector_bytes,
            settings=state.settings)

    def collection_settings(self, name: str) -> tuple[str, dict[str, Any]]:
        state = self.collection_state(name)
        return state.metric, state.settings

    def set_collection_settings(self, name: str, settings: dict[str, Any]) -> None:
        with self.lock:
            self.collection_state(name)
            self._db.execute("UPDATE collections SET settings=? WHERE name=?", (json.dumps(settings), name))

    def generation(self, collection: str) -> int:
        return self.collection_state(collection).generation

    # -- rows ---------------------------------------------------------------------------------
    def count(self, collection: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM images WHERE collection=?", (collection,)).fetchone()[0]

    def known_files(self, collection: str) -> dict[str, tuple[int, int, float, str]]:
        rows = self._db.execute(
            "SELECT id, path, size, mtime, content_hash FROM images WHERE collection=?", (collection,))
        return {r["path"]: (r["id"], r["size"], r["mtime"], r["content_hash"]) for r in rows}

    @staticmethod
    def _encode(state: CollectionState, vectors: np.ndarray) -> list[bytes]:
        want = (len(vectors), state.vector_width)
        arr = np.ascontiguousarray(vectors, dtype=state.vector_dtype)
        if arr.shape != want:
            raise LookalikeError(
                f"vectors of shape {arr.shape} do not fit collection '{state.name}' "
                f"({state.model}, {state.dim}-d); use the collection's model or a new collection")
        if state.metric == "cosine" and not np.all(np.isfinite(arr)):
            raise LookalikeError("refusing to store vectors with NaN or infinite values")
        return [v.tobytes() for v in arr]

    @staticmethod
    def _decode(state: CollectionState, blobs: list[bytes]) -> np.ndarray:
        if not blobs:
            return np.zeros((0, state.vector_width), dtype=state.vector_dtype)
        return np.frombuffer(b"".join(blobs), dtype=state.vector_dtype).reshape(len(blobs), state.vector_width).copy()

    def upsert(self, collection: str, records: list[ImageRecord], vectors: np.ndarray
               ) -> tuple[list[int], IndexChange | None]:
        """Insert or replace (by path) rows with their vectors in one transaction; their ids (also set on the
        records), and what the write changed in the index (None: nothing was written)."""
        if len(records) != len(vectors):
            raise ValueError("records and vectors differ in length")
        if not records:
            return [], None
        with self.lock:
            state = self.collection_state(collection)
            blobs = self._encode(state, vectors)
            now = time.time()
            ids: list[int] = []
            replaced: list[int] = []  # rows whose vector changed: the index drops and re-adds them
            untouched: list[int] = []  # rows whose vector is unchanged: the index keeps them as they are
            with self._transaction():
                for rec, blob in zip(records, blobs, strict=True):
                    old = self._db.execute("SELECT id, vector FROM images WHERE collection=? AND path=?",
                                           (collection, rec.path)).fetchone()
                    values = (rec.content_hash, rec.size, rec.mtime, rec.width, rec.height, rec.group_id,
                              json.dumps(rec.tags), json.dumps(rec.metadata), blob)
                    if old is None:
                        cur = self._db.execute(
                            "INSERT INTO images(collection, path, content_hash, size, mtime, width, height,"
                            " group_id, tags, metadata, vector, added) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                            (collection, rec.path, *values, now))
                        ids.append(int(cur.lastrowid))
                    elif old[1] == blob:  # same picture, new file facts: the vectors stay valid
                        self._db.execute(
                            "UPDATE images SET content_hash=?, size=?, mtime=?, width=?, height=?, "
                            "group_id=?, tags=?, metadata=?, vector=? WHERE id=?", (*values, old[0]))
                        ids.append(old[0])
                        untouched.append(old[0])
                    else:
                        self._db.execute(
                            "UPDATE images SET content_hash=?, size=?, mtime=?, width=?, height=?, "
                            "group_id=?, tags=?, metadata=?, vector=?, augmented=NULL WHERE id=?",
                            (*values, old[0]))
                        ids.append(old[0])
                        replaced.append(old[0])
                stale = self._invalidate_neighbours(collection, replaced)
                change = self._commit_change(state, remove=sorted(set(replaced) | set(stale)),
                                             add=sorted((set(ids) - set(untouched)) | set(stale)))
            for rec, new_id in zip(records, ids, strict=True):
                rec.id = new_id
            return ids, change

    def import_rows(self, collection: str, records: list[ImageRecord], vectors: np.ndarray,
                    augmented: list[np.ndarray | None], neighbours: list[list[tuple[int, float]]]
                    ) -> IndexChange | None:
        """Rows as another store holds them, ids and refinement kept (see Store.import_rows), in one
        transaction; what that changed in the index."""
        if not records:
            return None
        with self.lock:
            state = self.collection_state(collection)
            blobs = self._encode(state, vectors)
            with self._transaction():
                for rec, blob, aug, lst in zip(records, blobs, augmented, neighbours, strict=True):
                    if rec.id is None or not valid_image_id(int(rec.id)):
                        raise LookalikeError(f"can't import {rec.path}: it has no valid id")
                    other = self._db.execute("SELECT id FROM images WHERE collection=? AND path=?",
                                             (collection, rec.path)).fetchone()
                    if other is not None and other[0] != rec.id:
                        raise AlreadyExists(f"collection '{collection}' already holds {rec.path} under id "
                                            f"{other[0]}; migrate into a new collection or drop this one first")
                    clash = self._db.execute("SELECT collection FROM images WHERE id=?", (int(rec.id),)).fetchone()
                    if clash is not None and clash[0] != collection:
                        raise AlreadyExists(f"id {rec.id} of {rec.path} is taken by collection '{clash[0]}' in "
                                            "this library (ids are unique per library); migrate into another one")
                    aug_blob = None if aug is None else self._encode(state, np.asarray(aug)[None, :])[0]
                    self._db.execute(
                        "INSERT OR REPLACE INTO images(id, collection, path, content_hash, size, mtime, width, height,"
                        " group_id, tags, metadata, vector, added, augmented) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (int(rec.id), collection, rec.path, rec.content_hash, rec.size, rec.mtime, rec.width,
                         rec.height, rec.group_id, json.dumps(rec.tags), json.dumps(rec.metadata), blob,
                         rec.added, aug_blob))
                    self._db.execute("DELETE FROM knn WHERE image_id=?", (int(rec.id),))
                    if aug is not None:
                        self._db.executemany("INSERT INTO knn(image_id, neighbour, cos) VALUES (?,?,?)",
                                             [(int(rec.id), int(n), float(c)) for n, c in lst])
                ids = [int(r.id) for r in records]  # type: ignore[arg-type]
                return self._commit_change(state, remove=ids, add=ids)

    def remove(self, collection: str, ids: list[int]) -> tuple[int, IndexChange | None]:
        """Delete rows; how many were there, and what that changed in the index (None: nothing)."""
        with self.lock:
            state = self.collection_state(collection)
            if not ids:
                return 0, None
            with self._transaction():
                removed = 0
                for chunk, marks in _in_chunks(i for i in ids if valid_image_id(i)):
                    removed += self._db.execute(
                        f"DELETE FROM images WHERE +collection=? AND id IN ({marks})", (collection, *chunk)).rowcount
                if not removed:
                    return 0, None
                stale = self._invalidate_neighbours(collection, list(ids))
                return removed, self._commit_change(state, remove=sorted(set(ids) | set(stale)), add=stale)

    def update_metadata(self, collection: str, image_id: int, *, group_id: str | None = None,
                        tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> None:
        with self.lock:
            self.collection_state(collection)
            current = self.get(collection, [image_id])
            if not current:
                raise UnknownImage(f"no image with id {image_id} in collection '{collection}'")
            rec = current[0]
            self._db.execute(
                "UPDATE images SET group_id=?, tags=?, metadata=? WHERE id=?",
                (group_id if group_id is not None else rec.group_id,
                 json.dumps(tags if tags is not None else rec.tags),
                 json.dumps({**rec.metadata, **metadata} if metadata is not None else rec.metadata),
                 image_id))

    def get(self, collection: str, ids: list[int]) -> list[ImageRecord]:
        """The rows with these ids, in the order asked; ids outside SQLite's range are no rows (not an error)."""
        out: dict[int, ImageRecord] = {}
        for chunk, marks in _in_chunks(i for i in ids if valid_image_id(i)):
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
            for chunk, marks in _in_chunks(paths):
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

    # -- vectors ------------------------------------------------------------------------------
    def _blobs(self, collection: str, ids: list[int], column: str) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for chunk, marks in _in_chunks(int(i) for i in ids if valid_image_id(int(i))):
            for r in self._db.execute(
                    f"SELECT id, {column} FROM images WHERE +collection=? AND id IN ({marks})", (collection, *chunk)):
                found[r[0]] = r[1]
        return found

    def vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        """The plain (model) vectors of these rows, in the order asked; raises if one is missing."""
        state = self.collection_state(collection)
        ids = [int(i) for i in ids]
        found = self._blobs(collection, ids, "vector")
        missing = [i for i in ids if i not in found]
        if missing:
            raise UnknownImage(f"no image with id {missing[0]} in collection '{collection}'")
        return self._decode(state, [found[i] for i in ids])

    def all_vectors(self, collection: str, *, augmented: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of every row in id order: plain vectors, or with `augmented` the searchable ones."""
        state = self.collection_state(collection)
        ids, blobs = [], []
        column = "COALESCE(augmented, vector)" if augmented else "vector"
        for r in self._db.execute(f"SELECT id, {column} FROM images WHERE collection=? ORDER BY id",
                                  (collection,)):
            ids.append(r[0])
            blobs.append(r[1])
        return np.asarray(ids, dtype=np.int64), self._decode(state, blobs)

    def searchable_vectors(self, state: CollectionState, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids still stored, their searchable vectors: augmented where set, else plain), in the order asked;
        what an index must hold for them. Takes the state the caller already read, to decode without a query."""
        ids = [int(i) for i in ids]
        found = self._blobs(state.name, ids, "COALESCE(augmented, vector)")
        present = [i for i in ids if i in found]
        return np.asarray(present, dtype=np.int64), self._decode(state, [found[i] for i in present])

    def index_vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        """The searchable vectors of these rows; raises if one is missing."""
        with self.lock:
            found, vecs = self.searchable_vectors(self.collection_state(collection), ids)
            if len(found) != len(ids):
                raise LookalikeError(f"some of ids {ids[:5]} are not in collection '{collection}'")
            return vecs

    # -- refinement rows: augmented vectors and the neighbour lists they came from --------------
    def pending(self, collection: str) -> list[int]:
        return [r[0] for r in self._db.execute(
            "SELECT id FROM images WHERE collection=? AND augmented IS NULL ORDER BY id", (collection,))]

    def neighbour_lists(self, collection: str, ids: list[int]) -> dict[int, list[tuple[int, float]]]:
        out: dict[int, list[tuple[int, float]]] = {}
        for chunk, marks in _in_chunks(ids):
            for r in self._db.execute(
                    f"SELECT image_id, neighbour, cos FROM knn WHERE image_id IN ({marks})", chunk):
                out.setdefault(r[0], []).append((r[1], r[2]))
        for lst in out.values():
            lst.sort(key=lambda pair: -pair[1])
        return out

    def set_augmented(self, collection: str, ids: list[int], vectors: np.ndarray,
                      neighbours: list[list[tuple[int, float]]], *, if_generation: int | None = None
                      ) -> tuple[int, IndexChange | None]:
        """Store augmented vectors with their neighbour lists in one transaction; the generation after it, and
        what it changed in the index. Raises StaleWrite if another write happened since `if_generation`."""
        with self.lock:
            state = self.collection_state(collection)
            if not ids:
                return state.generation, None
            blobs = self._encode(state, vectors)
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
                change = self._commit_change(state, remove=kept, add=kept)
            return change.generation, change

    def clear_augmented(self, collection: str) -> IndexChange:
        """Make every row pending; every index entry changes, too many to log one by one."""
        with self.lock:
            state = self.collection_state(collection)
            with self._transaction():
                self._db.execute("DELETE FROM knn WHERE image_id IN (SELECT id FROM images WHERE collection=?)",
                                 (collection,))
                self._db.execute("UPDATE images SET augmented=NULL WHERE collection=?", (collection,))
                generation = self._bump(collection, None)
            return IndexChange(collection, generation, remove=[], add_ids=np.zeros(0, dtype=np.int64),
                               add_vectors=self._decode(state, []), everything=True)

    def _invalidate_neighbours(self, collection: str, changed: list[int]) -> list[int]:
        """Rows whose augmented vector used a changed or removed row go back to pending (inside a transaction).

        Returns those still-present rows, so the caller can put their plain vectors back in the index."""
        if not changed:
            return []
        stale: set[int] = set()
        for chunk, marks in _in_chunks(changed):
            stale.update(r[0] for r in self._db.execute(
                f"SELECT DISTINCT image_id FROM knn WHERE neighbour IN ({marks})", chunk))
            self._db.execute(f"DELETE FROM knn WHERE image_id IN ({marks})", chunk)
        stale -= set(changed)
        for chunk, marks in _in_chunks(sorted(stale)):
            self._db.execute(f"UPDATE images SET augmented=NULL WHERE +collection=? AND id IN ({marks})",
                             (collection, *chunk))
            self._db.execute(f"DELETE FROM knn WHERE image_id IN ({marks})", chunk)
        return sorted(stale)

    # -- the index log: which rows each generation changed --------------------------------------
    def _commit_change(self, state: CollectionState, *, remove: list[int], add: list[int]) -> IndexChange:
        """Finish a row write (inside its transaction): start the next generation, log every row it touched
        in the index, and read back the vectors the index must now hold for `add`."""
        generation = self._bump(state.name, set(remove) | set(add))
        add_ids, add_vectors = self.searchable_vectors(state, add)  # before another writer can change them
        return IndexChange(state.name, generation, remove, add_ids, add_vectors)

    def _bump(self, collection: str, changed: set[int] | None) -> int:
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

    def changed_since(self, collection: str, generation: int) -> list[int]:
        """Ids logged as changed after `generation`, ascending (meaningful only where the log reaches back
        that far: `log_floor <= generation` and `logged_generation == generation` of the current state)."""
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT image_id FROM index_log WHERE collection=? AND generation>? ORDER BY image_id",
            (collection, generation))]

    def log_length_since(self, collection: str, generation: int) -> int:
        """Log entries after `generation`: what replaying from it would cost."""
        return self._db.execute("SELECT COUNT(*) FROM index_log WHERE collection=? AND generation>?",
                                (collection, generation)).fetchone()[0]

    def fold_log(self, collection: str, generation: int, created: float) -> None:
        """An index saved at `generation` now covers the log up to it: drop those entries and raise the
        floor, unless the collection was dropped and re-created (another `created`) meanwhile."""
        with self.lock, self._transaction():
            self._db.execute(
                "UPDATE collections SET log_floor=MAX(log_floor, ?), logged_generation=CASE WHEN generation=? "
                "THEN generation ELSE logged_generation END WHERE name=? AND created=?",
                (generation, generation, collection, created))
            if self._db.execute("SELECT changes()").fetchone()[0]:
                self._db.execute("DELETE FROM index_log WHERE collection=? AND generation<=?",
                                 (collection, generation))


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Catalogue", "CollectionState", "IndexChange"]
