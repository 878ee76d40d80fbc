"""The Milvus store: the same Store verbs on Milvus Lite (a local `.db` folder) or a Milvus server/cluster.

One Milvus collection per lookalike collection holds every catalogue field as a scalar or JSON field, the
plain model vector (`vector`) and the vector the index searches (`search`: the DBA-augmented vector where
one is set, else the plain one), the refinement state (`pending`, `knn` neighbour lists and `knn_ids` for
the reverse look-up), so refine.py gives the same results as on the embedded store. A small `lookalike_meta`
collection keeps what the catalogue's `collections` table keeps (model, dim, metric, settings, generation,
the next id: ids are assigned here, never reused, as SQLite's AUTOINCREMENT does).

Why no transactions: Milvus has none. Writes go row data first, generation last, and a run killed mid-batch
leaves at most that batch partly written, which re-running `index` (incremental by path) repairs. One writer
at a time per collection: `StaleWrite` (the generation check) is exact within one process; Milvus Lite
allows only one process per database anyway.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AlreadyExists, LookalikeError, StaleWrite, UnknownCollection, UnknownImage
from ..names import valid_image_id
from .base import CollectionInfo, Filter, ImageRecord, Store
from .catalogue import Catalogue

META = "lookalike_meta"  # the collections table
CHUNK = 1000  # ids per `id in [...]` expression, rows per insert/upsert request
SEARCH_CHUNK = 256  # query vectors per search request (keeps a request well under gRPC's message limit)
SCAN_BATCH = 1000  # rows per query-iterator page
SEAL_BEFORE_SEARCH = 100  # Milvus Lite: unsealed rows (searched one by one) a search first seals
MAX_PATH = 65_535  # Milvus's longest VARCHAR
# index types Milvus Lite 3.2 builds (measured: it answers IVF_PQ "reserved for a future phase", DISKANN
# "unknown index_type"); a server has all of them
LITE_INDEX_TYPES = {"FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "BRUTE_FORCE", "BIN_FLAT"}
NATIVE_TYPES = ("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN", "SCANN", "AUTOINDEX")
ROW_FIELDS = ["id", "path", "content_hash", "size", "mtime", "width", "height", "group_id", "tags", "metadata",
              "added"]


def literal(text: str) -> str:
    """A Milvus expression string literal. Milvus knows \\\\ \\" \\n \\t \\r but not \\u: other control
    characters can't be written, so such values are refused (ValueError) and callers fall back."""
    if any(ord(ch) < 32 and ch not in "\n\t\r" for ch in text):
        raise ValueError("control character in a filter value")
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
               .replace("\r", "\\r"))
    return f'"{escaped}"'


def prefix_pattern(prefix: str) -> str:
    """A `like` pattern matching exactly the strings that start with `prefix` (% and _ are wildcards)."""
    return literal(prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")


def _value_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return literal(value)
    raise ValueError(f"can't filter on a {type(value).__name__} value")


def milvus_name(collection: str) -> str:
    """Milvus allows letters, digits and '_': encode '_' '-' '~' reversibly so no two names clash."""
    return "lk_" + collection.replace("_", "_0").replace("-", "_1").replace("~", "_2")


def _ids_expr(ids: list[int]) -> str:
    return f"id in [{','.join(str(int(i)) for i in ids)}]"


def _nlist(count: int) -> int:
    """As the embedded store picks it (faiss_index._nlist): about 4*sqrt(N), >= 39 vectors per list."""
    by_size = 2 ** round(math.log2(4 * math.sqrt(max(count, 1))))
    by_training = 2 ** int(math.log2(max(count // 39, 1)))
    return int(max(4, min(by_size, by_training, 65536)))


def _nprobe(nlist: int) -> int:
    return min(nlist, max(8, nlist // 32))


def milvus_index(spec: str, count: int, *, exact_below: int, metric: str) -> tuple[str, dict[str, Any]]:
    """(Milvus index type, build params) for a lookalike index spec: `auto` (FLAT below `exact_below` rows,
    IVF_FLAT above, as the embedded store), a Faiss factory string with a Milvus equivalent ('Flat',
    'HNSW32', 'IVF1024,Flat', 'IVF1024,SQ8', 'IVF1024,PQ32'), or a Milvus type name ('IVF_SQ8', 'DISKANN')."""
    if metric == "hamming":
        return "BIN_FLAT", {}
    raw = spec.strip()
    if raw == "auto":
        return ("FLAT", {}) if count < exact_below else ("IVF_FLAT", {"nlist": _nlist(count)})
    upper = raw.upper()
    if upper in NATIVE_TYPES:
        if upper.startswith("IVF"):
            params: dict[str, Any] = {"nlist": _nlist(count)}
            if upper == "IVF_PQ":
                params["m"] = 16
            return upper, params
        if upper.startswith("HNSW"):
            return upper, {"M": 32, "efConstruction": 200}
        return upper, {}
    if re.fullmatch(r"(IDMap2?,)?Flat", raw):
        return "FLAT", {}
    match = re.fullmatch(r"HNSW(\d+)(,Flat)?", raw)
    if match:
        return "HNSW", {"M": int(match.group(1)), "efConstruction": 200}
    match = re.fullmatch(r"IVF(\d+),(Flat|SQ8|PQ(\d+)(x8)?)", raw)
    if match:
        nlist = int(match.group(1))
        if match.group(2) == "Flat":
            return "IVF_FLAT", {"nlist": nlist}
        if match.group(2) == "SQ8":
            return "IVF_SQ8", {"nlist": nlist}
        return "IVF_PQ", {"nlist": nlist, "m": int(match.group(3)), "nbits": 8}
    raise LookalikeError(
        f"index spec '{spec}' has no Milvus equivalent; use auto, Flat, HNSW<M>, IVF<n>,Flat, IVF<n>,SQ8, "
        f"IVF<n>,PQ<m> or a Milvus type ({', '.join(NATIVE_TYPES)})")


def _search_params(index_type: str, params: dict[str, Any], k: int) -> dict[str, Any]:
    if index_type.startswith("IVF"):
        return {"nprobe": _nprobe(int(params.get("nlist", 128)))}
    if index_type.startswith("HNSW"):
        return {"ef": max(128, k)}
    if index_type == "DISKANN":
        return {"search_list": max(100, k)}
    return {}


def is_lite_uri(uri: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*://", uri)


class MilvusStore(Store):
    """Collections in Milvus through pymilvus' MilvusClient: `uri` a local path (Milvus Lite, one process per
    database) or http(s)://host:port (a server; `token` is "user:password" or an API key)."""

    def __init__(self, uri: str, *, token: str | None = None, exact_below: int = 50_000) -> None:
        from pymilvus import MilvusClient, MilvusException

        # pymilvus and milvus_lite log every refused call (and routine warnings) to stderr themselves; the
        # store reports each failure once, as a LookalikeError line
        for name in ("pymilvus", "pymilvus.milvus_client", "milvus_lite"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.uri = uri
        self.lite = is_lite_uri(uri)
        self.exact_below = exact_below
        self._lock = threading.RLock()
        self._written: set[str] = set()
        self._partial_update = True  # servers before Milvus 2.6 lack it: then whole rows are rewritten
        if self.lite:
            path = Path(uri).expanduser().resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            uri = str(path)
            self.uri = uri
        try:
            self.client = _Client(MilvusClient(uri=uri, token=token or ""), uri)
            if self.lite:
                with _LITE_LOCK:
                    _LITE_USERS[uri] = _LITE_USERS.get(uri, 0) + 1
        except MilvusException as exc:
            if self.lite and _lite_locked(Path(uri)):
                raise LookalikeError(
                    f"the Milvus Lite database {uri} is open in another process (Milvus Lite allows one "
                    "process per database); stop that process (e.g. `lookalike serve`) and retry, or use a "
                    "Milvus server: --store milvus:http://HOST:19530", code="store-locked") from None
            raise LookalikeError(f"can't open Milvus at {uri}: {exc.message or exc}; check the URI "
                                 "(and LOOKALIKE_MILVUS_TOKEN)", code="store-unavailable") from None
        self._meta_ready = False
        self._closed = False
        self._loaded: set[str] = set()
        self._unsealed: dict[str, int] = {}  # rows written here since the collection's segments were sealed

    # -- the collections table ----------------------------------------------------------------
    def _ensure_meta(self) -> None:
        if self._meta_ready:
            return
        from pymilvus import DataType

        if not self.client.has_collection(META):
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=256)
            schema.add_field("info", DataType.JSON)
            schema.add_field("dummy", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs one vector field
            index = self.client.prepare_index_params()
            index.add_index("dummy", index_type="FLAT", metric_type="L2")
            self.client.create_collection(META, schema=schema, index_params=index, consistency_level="Strong")
        self._load(META)
        self._meta_ready = True

    def _load(self, target: str) -> None:
        """Load a Milvus collection once per process: Milvus Lite reopens a database with every collection
        released, and a server may have released it."""
        if target in self._loaded:
            return
        state = self.client.get_load_state(target).get("state")
        if getattr(state, "name", str(state)) != "Loaded":
            self.client.load_collection(target)
        if self.lite and target != META:  # rows a killed process left unsealed (10 ms when there are none)
            self.client.flush(target)
        self._loaded.add(target)

    def _all_meta(self) -> dict[str, dict[str, Any]]:
        self._ensure_meta()
        rows = self.client.query(META, filter='name != ""', output_fields=["name", "info"], limit=16384)
        return {r["name"]: r["info"] for r in rows}

    def _find_meta(self, name: str) -> dict[str, Any] | None:
        self._ensure_meta()
        rows = self.client.query(META, ids=[name], output_fields=["info"])
        return rows[0]["info"] if rows else None

    def _meta(self, name: str) -> dict[str, Any]:
        info = self._find_meta(name)
        if info is not None:
            self._load(milvus_name(name))
        else:
            names = sorted(self._all_meta())
            hint = f" (known: {', '.join(names)})" if names else " (the library is empty)"
            raise UnknownCollection(
                f"no collection named '{name}'{hint}; index a folder into it with "
                f"`lookalike index PATH --collection {name}` or create it with `lookalike collections create`")
        return info

    def _put_meta(self, name: str, info: dict[str, Any]) -> None:
        self.client.upsert(META, [{"name": name, "info": info, "dummy": [0.0, 0.0]}])

    def _bump(self, name: str, info: dict[str, Any]) -> int:
        info["generation"] = int(info.get("generation", 0)) + 1
        self._put_meta(name, info)
        self._written.add(name)
        return info["generation"]

    # -- collections --------------------------------------------------------------------------
    def create_collection(self, name: str, model: str, dim: int, metric: str = "cosine",
                          index_spec: str = "auto", settings: dict[str, Any] | None = None,
                          *, created: float | None = None) -> CollectionInfo:
        from pymilvus import DataType

        Catalogue.check_new_collection(name, metric)
        index_type, params = milvus_index(index_spec, 0, exact_below=self.exact_below, metric=metric)
        self._check_supported(index_type)
        with self._lock:
            if self._find_meta(name) is not None:
                raise AlreadyExists(f"collection '{name}' already exists; drop it first or pick another name")
            target = milvus_name(name)
            if self.client.has_collection(target):  # left by a create killed before its meta row
                self.client.drop_collection(target)
            # Milvus Lite has no binary vectors: it keeps a code's bits as 0/1 floats, where squared L2 is
            # the Hamming distance
            bits_as_floats = metric == "hamming" and self.lite
            binary = metric == "hamming" and not bits_as_floats
            vector_type = DataType.BINARY_VECTOR if binary else DataType.FLOAT_VECTOR
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
            schema.add_field("content_hash", DataType.VARCHAR, max_length=256)
            schema.add_field("size", DataType.INT64)
            schema.add_field("mtime", DataType.DOUBLE)
            schema.add_field("width", DataType.INT64)
            schema.add_field("height", DataType.INT64)
            schema.add_field("group_id", DataType.VARCHAR, max_length=MAX_PATH, nullable=True)
            schema.add_field("tags", DataType.JSON)
            schema.add_field("metadata", DataType.JSON)
            schema.add_field("added", DataType.DOUBLE)
            schema.add_field("pending", DataType.BOOL)
            schema.add_field("knn", DataType.JSON)  # [[neighbour id, cosine], ...], best first
            schema.add_field("knn_ids", DataType.JSON)  # the neighbour ids alone: json_contains_any finds listers
            schema.add_field("vector", vector_type, dim=dim)
            schema.add_field("search", vector_type, dim=dim)
            index = self.client.prepare_index_params()
            flat, metric_type = ("BIN_FLAT", "HAMMING") if metric == "hamming" else ("FLAT", "IP")
            if bits_as_floats:
                flat, index_type, metric_type = "FLAT", "FLAT", "L2"
            index.add_index("vector", index_type=flat, metric_type=metric_type)
            index.add_index("search", index_type=index_type, metric_type=metric_type, params=params)
            self.client.create_collection(target, schema=schema, index_params=index, consistency_level="Strong")
            self._put_meta(name, {"model": model, "dim": int(dim), "metric": metric, "index_spec": index_spec,
                                  "created": created or time.time(), "generation": 0, "next_id": 1,
                                  "settings": settings or {}, "bits_as_floats": bits_as_floats,
                                  "index": {"type": index_type, "params": params}})
        return self.collection(name)

    def _check_supported(self, index_type: str) -> None:
        if self.lite and index_type not in LITE_INDEX_TYPES:
            raise LookalikeError(
                f"Milvus Lite can't build {index_type} indexes (it has {', '.join(sorted(LITE_INDEX_TYPES))}); "
                "pick one of those or use a Milvus server (--store milvus:http://HOST:19530)")

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._meta(name)
            target = milvus_name(name)
            if self.client.has_collection(target):
                self.client.drop_collection(target)
            self._loaded.discard(target)
            self._unsealed.pop(name, None)
            self.client.delete(META, ids=[name])
            self._written.discard(name)

    def collections(self) -> list[CollectionInfo]:
        return [self.collection(n) for n in sorted(self._all_meta())]

    def collection(self, name: str) -> CollectionInfo:
        with self._lock:
            info = self._meta(name)
            count = self.count(name)
            augmented = count - self._count(name, "pending == true") if count else 0
            width = info["dim"] // 8 if info["metric"] == "hamming" else info["dim"] * 4
            index_type = self._index_type(name)
            return CollectionInfo(
                name=name, model=info["model"], dim=info["dim"], metric=info["metric"],
                index_spec=info["index_spec"], created=info["created"], count=count,
                index_type=f"Milvus{' Lite' if self.lite else ''} {index_type}",
                size_bytes=(count + augmented) * width, settings=info["settings"])

    def _index_type(self, name: str) -> str:
        index_type, params = self._describe(name)
        extra = ",".join(f"{k}={v}" for k, v in params.items() if k in ("nlist", "M", "m"))
        return index_type + (f"({extra})" if extra else "")

    def collection_settings(self, name: str) -> tuple[str, dict[str, Any]]:
        info = self._meta(name)
        return info["metric"], info["settings"]

    def set_collection_settings(self, name: str, settings: dict[str, Any]) -> None:
        with self._lock:
            info = self._meta(name)
            info["settings"] = settings
            self._put_meta(name, info)

    def generation(self, collection: str) -> int:
        return int(self._meta(collection).get("generation", 0))

    # -- reading rows -------------------------------------------------------------------------
    def _scan(self, collection: str, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row matching `expr` (all rows: ""), through a query iterator (a plain query stops at 16384)."""
        iterator = self.client.query_iterator(milvus_name(collection), batch_size=SCAN_BATCH, filter=expr,
                                              output_fields=fields)
        rows: list[dict[str, Any]] = []
        try:
            while True:
                batch = iterator.next()
                if not batch:
                    break
                rows.extend(batch)
        finally:
            iterator.close()
        return rows

    def _rows(self, collection: str, ids: list[int], fields: list[str]) -> dict[int, dict[str, Any]]:
        wanted = sorted({int(i) for i in ids if valid_image_id(int(i))})
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start:start + CHUNK]
            for row in self.client.query(milvus_name(collection), filter=_ids_expr(chunk),
                                         output_fields=["id", *fields], limit=len(chunk)):
                out[int(row["id"])] = row
        return out

    def count(self, collection: str) -> int:
        self._meta(collection)
        return self._count(collection, "")

    def _count(self, collection: str, expr: str) -> int:
        rows = self.client.query(milvus_name(collection), filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def known_files(self, collection: str) -> dict[str, tuple[int, int, float, str]]:
        self._meta(collection)
        return {r["path"]: (int(r["id"]), int(r["size"]), float(r["mtime"]), r["content_hash"])
                for r in self._scan(collection, "", ["id", "path", "size", "mtime", "content_hash"])}

    def get(self, collection: str, ids: list[int]) -> list[ImageRecord]:
        self._meta(collection)
        found = self._rows(collection, ids, ROW_FIELDS[1:])
        return [_to_record(found[int(i)]) for i in ids if int(i) in found]

    def find_ids(self, collection: str, *, paths: list[str] | None = None,
                 flt: Filter | None = None) -> list[int]:
        self._meta(collection)
        if paths is not None:
            return self._ids_for_paths(collection, paths)
        expr, check = self._filter_expr(flt)
        if expr is None:
            return []
        if check is None:
            return sorted(int(r["id"]) for r in self._scan(collection, expr, ["id"]))
        rows = self._scan(collection, expr, ["id", "path", "metadata"])
        return sorted(int(r["id"]) for r in rows if check(r))

    def _ids_for_paths(self, collection: str, paths: list[str]) -> list[int]:
        found: list[int] = []
        try:
            exprs = [f"path in [{','.join(literal(p) for p in paths[s:s + CHUNK])}]"
                     for s in range(0, len(paths), CHUNK)]
        except ValueError:  # a path no expression can spell: compare in Python
            wanted = set(paths)
            return [int(r["id"]) for r in self._scan(collection, "", ["id", "path"]) if r["path"] in wanted]
        for expr, start in zip(exprs, range(0, len(paths), CHUNK), strict=True):
            rows = self.client.query(milvus_name(collection), filter=expr, output_fields=["id"],
                                     limit=len(paths[start:start + CHUNK]))
            found += [int(r["id"]) for r in rows]
        return found

    def _filter_expr(self, flt: Filter | None) -> tuple[str | None, Any]:
        """(Milvus expression, Python check for what it can't spell or None); expression None: nothing matches."""
        if flt is None or flt.is_empty():
            return "", None
        parts: list[str] = []
        leftovers: dict[str, Any] = {}
        prefix_left: str | None = None
        if flt.ids is not None:
            ids = [int(i) for i in flt.ids if valid_image_id(int(i))]
            if not ids:
                return None, None
            parts.append(_ids_expr(ids))
        try:
            if flt.group_id is not None:
                parts.append(f"group_id == {literal(flt.group_id)}")
            if flt.tags:
                parts.append(f"json_contains_all(tags, [{','.join(literal(t) for t in flt.tags)}])")
        except ValueError:
            return None, None  # a control character: no stored group or tag can hold one through the CLI
        if flt.path_prefix is not None:
            try:
                parts.append(f"path like {prefix_pattern(flt.path_prefix)}")
            except ValueError:
                prefix_left = flt.path_prefix
        for key, value in flt.metadata.items():
            try:
                parts.append(f"metadata[{literal(str(key))}] == {_value_literal(value)}")
            except ValueError:
                leftovers[str(key)] = value
        expr = " and ".join(parts)
        if not leftovers and prefix_left is None:
            return expr, None

        def check(row: dict[str, Any]) -> bool:
            meta = row.get("metadata") or {}
            return ((prefix_left is None or row["path"].startswith(prefix_left))
                    and all(k in meta and meta[k] == v for k, v in leftovers.items()))
        return expr, check

    def _decode(self, collection: str, info: dict[str, Any], rows: list[dict[str, Any]], field: str) -> np.ndarray:
        if info["metric"] == "hamming":
            width = info["dim"] // 8
            if not rows:
                return np.zeros((0, width), np.uint8)
            if info.get("bits_as_floats"):
                return np.packbits(np.asarray([r[field] for r in rows], dtype=np.float32) > 0.5, axis=1)
            return np.stack([np.frombuffer(_binary(r[field]), dtype=np.uint8) for r in rows])
        if not rows:
            return np.zeros((0, info["dim"]), np.float32)
        return np.asarray([r[field] for r in rows], dtype=np.float32)

    def vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        return self._vectors(collection, ids, "vector")

    def index_vectors(self, collection: str, ids: list[int]) -> np.ndarray:
        return self._vectors(collection, ids, "search")

    def _vectors(self, collection: str, ids: list[int], field: str) -> np.ndarray:
        info = self._meta(collection)
        ids = [int(i) for i in ids]
        found = self._rows(collection, ids, [field])
        missing = [i for i in ids if i not in found]
        if missing:
            raise UnknownImage(f"no image with id {missing[0]} in collection '{collection}'")
        return self._decode(collection, info, [found[i] for i in ids], field)

    def all_vectors(self, collection: str, *, augmented: bool = False) -> tuple[np.ndarray, np.ndarray]:
        info = self._meta(collection)
        field = "search" if augmented else "vector"
        rows = sorted(self._scan(collection, "", ["id", field]), key=lambda r: r["id"])
        return np.asarray([r["id"] for r in rows], dtype=np.int64), self._decode(collection, info, rows, field)

    def pending(self, collection: str) -> list[int]:
        self._meta(collection)
        return sorted(int(r["id"]) for r in self._scan(collection, "pending == true", ["id"]))

    def neighbour_lists(self, collection: str, ids: list[int]) -> dict[int, list[tuple[int, float]]]:
        self._meta(collection)
        out: dict[int, list[tuple[int, float]]] = {}
        for image_id, row in self._rows(collection, ids, ["knn"]).items():
            if row["knn"]:
                out[image_id] = sorted(((int(n), float(c)) for n, c in row["knn"]), key=lambda p: -p[1])
        return out

    # -- writes -------------------------------------------------------------------------------
    def _encode(self, collection: str, info: dict[str, Any], vectors: np.ndarray) -> list[Any]:
        hamming = info["metric"] == "hamming"
        want = (len(vectors), info["dim"] // 8 if hamming else info["dim"])
        arr = np.ascontiguousarray(vectors, dtype=np.uint8 if hamming else np.float32)
        if arr.shape != want:
            raise LookalikeError(
                f"vectors of shape {arr.shape} do not fit collection '{collection}' "
                f"({info['model']}, {info['dim']}-d); use the collection's model or a new collection")
        if not hamming and not np.all(np.isfinite(arr)):
            raise LookalikeError("refusing to store vectors with NaN or infinite values")
        if hamming and info.get("bits_as_floats"):
            return [v.tolist() for v in np.unpackbits(arr, axis=1).astype(np.float32)]
        return [v.tobytes() for v in arr] if hamming else [v.tolist() for v in arr]

    def _write(self, collection: str, rows: list[dict[str, Any]], *, partial: bool) -> None:
        """Insert whole rows, or change some fields of existing rows (a partial update where the server has
        it, else the rest of each row read back and the whole row rewritten)."""
        target = milvus_name(collection)
        self._unsealed[collection] = self._unsealed.get(collection, 0) + len(rows)
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            if not partial:
                self.client.upsert(target, chunk)
                continue
            if self._partial_update:
                try:
                    self.client.upsert(target, chunk, partial_update=True)
                    continue
                except Exception:  # noqa: BLE001 - an older server: rewrite whole rows from now on
                    self._partial_update = False
            current = self._rows(collection, [r["id"] for r in chunk], ["*"])
            self.client.upsert(target, [{**current[r["id"]], **r} for r in chunk if r["id"] in current])

    def upsert(self, collection: str, records: list[ImageRecord], vectors: np.ndarray) -> list[int]:
        if len(records) != len(vectors):
            raise ValueError("records and vectors differ in length")
        if not records:
            return []
        with self._lock:
            info = self._meta(collection)
            encoded = self._encode(collection, info, vectors)
            old_ids = self._ids_for_paths(collection, [r.path for r in records])
            current = self._rows(collection, old_ids, ["path", "vector", "added"])
            by_path = {row["path"]: row for row in current.values()}
            new_count = sum(r.path not in by_path for r in records)
            first_id = int(info.get("next_id", 1))
            if new_count:  # ids are taken (and saved) before any row uses them: never reused after a kill
                info["next_id"] = first_id + new_count
                self._put_meta(collection, info)
            now = time.time()
            ids: list[int] = []
            full: list[dict[str, Any]] = []
            kept: list[dict[str, Any]] = []
            replaced: list[int] = []
            seen: dict[str, int] = {}
            for rec, vec in zip(records, encoded, strict=True):
                fields = {"path": rec.path, "content_hash": rec.content_hash, "size": int(rec.size),
                          "mtime": float(rec.mtime), "width": int(rec.width), "height": int(rec.height),
                          "group_id": rec.group_id, "tags": list(rec.tags), "metadata": dict(rec.metadata)}
                prior = by_path.get(rec.path)
                if rec.path in seen:  # the same path twice in one batch: the last one wins
                    image_id = seen[rec.path]
                elif prior is None:
                    image_id = first_id
                    first_id += 1
                else:
                    image_id = int(prior["id"])
                seen[rec.path] = image_id
                ids.append(image_id)
                if prior is not None and _same_vector(prior["vector"], vec):
                    kept.append({"id": image_id, **fields})  # same picture: augmented vector stays valid
                    continue
                if prior is not None:
                    replaced.append(image_id)
                added = now if prior is None else float(prior["added"])
                full.append({"id": image_id, **fields, "added": added, "pending": True, "knn": [],
                             "knn_ids": [], "vector": vec, "search": vec})
            full = list({r["id"]: r for r in full}.values())
            self._write(collection, full, partial=False)
            self._write(collection, [r for r in kept if r["id"] not in {f["id"] for f in full}], partial=True)
            self._invalidate_neighbours(collection, info, replaced)
            self._bump(collection, info)
            for rec, image_id in zip(records, ids, strict=True):
                rec.id = image_id
            return ids

    def _invalidate_neighbours(self, collection: str, info: dict[str, Any], changed: list[int]) -> None:
        """Rows whose augmented vector used a changed or removed row go back to pending (plain vector searched)."""
        if not changed:
            return
        stale: set[int] = set()
        for start in range(0, len(changed), CHUNK):
            chunk = changed[start:start + CHUNK]
            expr = f"json_contains_any(knn_ids, [{','.join(str(int(i)) for i in chunk)}])"
            stale.update(int(r["id"]) for r in self._scan(collection, expr, ["id"]))
        stale -= set(changed)
        if not stale:
            return
        rows = self._rows(collection, sorted(stale), ["vector"])
        self._write(collection, [{"id": i, "pending": True, "knn": [], "knn_ids": [], "search": r["vector"]}
                                 for i, r in rows.items()], partial=True)

    def remove(self, collection: str, ids: list[int]) -> int:
        with self._lock:
            info = self._meta(collection)
            present = sorted(self._rows(collection, ids, []))
            if not present:
                return 0
            for start in range(0, len(present), CHUNK):
                self.client.delete(milvus_name(collection), ids=present[start:start + CHUNK])
            self._invalidate_neighbours(collection, info, present)
            self._bump(collection, info)
            return len(present)

    def update_metadata(self, collection: str, image_id: int, *, group_id: str | None = None,
                        tags: list[str] | None = None, metadata: dict[str, Any] | None = None) -> None:
        with self._lock:
            current = self.get(collection, [image_id])
            if not current:
                raise UnknownImage(f"no image with id {image_id} in collection '{collection}'")
            rec = current[0]
            self._write(collection, [{
                "id": int(image_id), "group_id": group_id if group_id is not None else rec.group_id,
                "tags": tags if tags is not None else rec.tags,
                "metadata": {**rec.metadata, **metadata} if metadata is not None else rec.metadata}], partial=True)

    def set_augmented(self, collection: str, ids: list[int], vectors: np.ndarray,
                      neighbours: list[list[tuple[int, float]]], *, if_generation: int | None = None) -> int:
        with self._lock:
            info = self._meta(collection)
            if not ids:
                return int(info.get("generation", 0))
            if if_generation is not None and int(info.get("generation", 0)) != if_generation:
                raise StaleWrite(f"collection '{collection}' changed while its refinement was computed")
            encoded = self._encode(collection, info, vectors)
            present = self._rows(collection, ids, [])  # rows removed meanwhile are skipped
            rows = [{"id": int(i), "search": vec, "pending": False,
                     "knn": [[int(n), float(c)] for n, c in lst], "knn_ids": [int(n) for n, _ in lst]}
                    for i, vec, lst in zip(ids, encoded, neighbours, strict=True) if int(i) in present]
            self._write(collection, rows, partial=True)
            return self._bump(collection, info)

    def clear_augmented(self, collection: str) -> None:
        with self._lock:
            info = self._meta(collection)
            rows = self._scan(collection, "pending == false", ["id", "vector"])
            self._write(collection, [{"id": int(r["id"]), "pending": True, "knn": [], "knn_ids": [],
                                      "search": r["vector"]} for r in rows], partial=True)
            self._bump(collection, info)

    def import_rows(self, collection: str, records: list[ImageRecord], vectors: np.ndarray,
                    augmented: list[np.ndarray | None], neighbours: list[list[tuple[int, float]]]) -> None:
        """Write rows exactly as another store holds them (ids, `added`, augmented vector and neighbour list
        kept): what `migrate` copies. Rewriting a row already there is harmless, so a resumed copy may."""
        if not records:
            return
        with self._lock:
            info = self._meta(collection)
            plain = self._encode(collection, info, vectors)
            existing = self._ids_for_paths(collection, [r.path for r in records])
            rows_by_path = {r["path"]: int(r["id"]) for r in self._rows(collection, existing, ["path"]).values()}
            rows = []
            for rec, vec, aug, lst in zip(records, plain, augmented, neighbours, strict=True):
                if rec.id is None or not valid_image_id(int(rec.id)):
                    raise LookalikeError(f"can't import {rec.path}: it has no valid id")
                other = rows_by_path.get(rec.path)
                if other is not None and other != rec.id:
                    raise AlreadyExists(f"collection '{collection}' already holds {rec.path} under id {other}; "
                                        "migrate into a new collection or drop this one first")
                search = vec if aug is None else self._encode(collection, info, aug[None, :])[0]
                rows.append({"id": int(rec.id), "path": rec.path, "content_hash": rec.content_hash,
                             "size": int(rec.size), "mtime": float(rec.mtime), "width": int(rec.width),
                             "height": int(rec.height), "group_id": rec.group_id, "tags": list(rec.tags),
                             "metadata": dict(rec.metadata), "added": float(rec.added), "pending": aug is None,
                             "knn": [[int(n), float(c)] for n, c in lst] if aug is not None else [],
                             "knn_ids": [int(n) for n, _ in lst] if aug is not None else [],
                             "vector": vec, "search": search})
            self._write(collection, rows, partial=False)
            top = max(int(r["id"]) for r in rows) + 1
            if top > int(info.get("next_id", 1)):
                info["next_id"] = top
            self._bump(collection, info)

    # -- search -------------------------------------------------------------------------------
    def search(self, collection: str, queries: np.ndarray, k: int, flt: Filter | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        info = self._meta(collection)
        hamming = info["metric"] == "hamming"
        q = np.ascontiguousarray(queries, dtype=np.uint8 if hamming else np.float32)
        if q.ndim == 1:
            q = q[None, :]
        k = max(1, int(k))
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        expr, check = self._filter_expr(flt)
        if expr is None:
            return scores, ids
        if check is not None:  # a condition no expression spells: search the rows that pass it
            allowed = self.find_ids(collection, flt=flt)
            if not allowed:
                return scores, ids
            expr = _ids_expr(allowed)
        index = info.get("index") or {"type": "FLAT", "params": {}}
        index_type, params = str(index["type"]), dict(index["params"])
        if self._unsealed.get(collection, 0) >= SEAL_BEFORE_SEARCH:
            self._seal(collection)
        as_floats = bool(info.get("bits_as_floats"))
        metric_type = ("L2" if as_floats else "HAMMING") if hamming else "IP"
        limit = min(k, 16384)
        for start in range(0, len(q), SEARCH_CHUNK):
            chunk = q[start:start + SEARCH_CHUNK]
            if as_floats:
                data = np.unpackbits(chunk, axis=1).astype(np.float32).tolist()
            else:
                data = [row.tobytes() for row in chunk] if hamming else chunk.tolist()
            hits = self.client.search(milvus_name(collection), data=data, anns_field="search", limit=limit,
                                      filter=expr, output_fields=[],
                                      search_params={"metric_type": metric_type,
                                                     "params": _search_params(index_type, params, k)})
            for row, found in enumerate(hits):
                for col, hit in enumerate(found[:k]):
                    ids[start + row, col] = int(hit["id"])
                    distance = float(hit["distance"])
                    scores[start + row, col] = 1.0 - distance / info["dim"] if hamming else distance
        return scores, ids

    def _describe(self, collection: str) -> tuple[str, dict[str, Any]]:
        """(type, build params) of the `search` index, as recorded when it was built (Milvus' describe_index
        leaves the params out)."""
        index = (self._find_meta(collection) or {}).get("index") or {"type": "FLAT", "params": {}}
        return str(index["type"]), dict(index["params"])

    # -- the index type follows the collection's size ----------------------------------------
    def flush(self) -> None:
        """Switch a collection written here to the index type its size calls for (auto: FLAT -> IVF_FLAT
        past `exact_below` rows), as the embedded store does at flush; Milvus persists rows by itself."""
        with self._lock:
            written, self._written = sorted(self._written), set()
            for name in written:
                info = self._find_meta(name)
                if info is not None:
                    self._seal(name)
                if info is None or info["metric"] == "hamming":  # binary codes: always exact
                    continue
                want, params = milvus_index(info["index_spec"], self.count(name), exact_below=self.exact_below,
                                            metric=info["metric"])
                have, have_params = self._describe(name)
                if want == have and (not want.startswith("IVF") or re.match(r"IVF\d+", info["index_spec"])
                                     or int(have_params.get("nlist", 0)) * 4 > params["nlist"]):
                    continue  # an inverted file keeps its lists until the collection has grown 4x
                self.reindex(name, want, params)

    def _seal(self, collection: str) -> None:
        """Seal the rows written since the last seal into indexed segments (Milvus Lite only: it searches
        unsealed rows row by row, ~1 ms each; a server indexes growing segments itself)."""
        if self.lite and self._unsealed.pop(collection, 0):
            self.client.flush(milvus_name(collection))

    def reindex(self, name: str, index_type: str, params: dict[str, Any]) -> None:
        """Replace the `search` index (release, drop, create, load: Milvus can't change one in place)."""
        self._check_supported(index_type)
        target = milvus_name(name)
        self.client.release_collection(target)
        self.client.drop_index(target, "search")
        index = self.client.prepare_index_params()
        index.add_index("search", index_type=index_type, metric_type="IP", params=params)
        self.client.create_index(target, index)
        self.client.load_collection(target)
        self._loaded.add(target)
        info = self._meta(name)
        info["index"] = {"type": index_type, "params": params}
        self._put_meta(name, info)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        finally:
            self.client.close()
            if self.lite:
                _release_lite(self.uri)


def _to_record(row: dict[str, Any]) -> ImageRecord:
    return ImageRecord(id=int(row["id"]), path=row["path"], content_hash=row["content_hash"], size=int(row["size"]),
                       mtime=float(row["mtime"]), width=int(row["width"]), height=int(row["height"]),
                       group_id=row.get("group_id"), tags=list(row.get("tags") or []),
                       metadata=dict(row.get("metadata") or {}), added=float(row["added"]))


def _binary(value: Any) -> bytes:
    """A binary vector as pymilvus returns it (bytes, or a one-element list of bytes)."""
    if isinstance(value, list | tuple):
        value = value[0] if len(value) == 1 and isinstance(value[0], bytes | bytearray) else bytes(value)
    return bytes(value)


def _same_vector(stored: Any, new: Any) -> bool:
    if isinstance(new, bytes):
        return _binary(stored) == new
    return bool(np.array_equal(np.asarray(stored, dtype=np.float32), np.asarray(new, dtype=np.float32)))


class _Client:
    """The MilvusClient with its errors as one LookalikeError line each (what failed, where), as the CLI
    and the server report every user-facing error."""

    def __init__(self, client: Any, uri: str) -> None:
        self._client = client
        self._uri = uri

    def __getattr__(self, name: str) -> Any:
        from pymilvus import MilvusException

        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except MilvusException as exc:
                raise LookalikeError(f"Milvus at {self._uri} refused {name}: {exc.message or exc}; check the "
                                     "server (docs/stores.md)", code="store-error") from None
        return call


_LITE_LOCK = threading.Lock()
_LITE_USERS: dict[str, int] = {}  # Lite database path -> stores of this process that have it open


def _release_lite(path: str) -> None:
    """Stop this process's Milvus Lite server for `path` once no store here uses it, so that its lock
    goes and another process may open the database (pymilvus' close leaves it running until exit)."""
    with _LITE_LOCK:
        _LITE_USERS[path] = _LITE_USERS.get(path, 1) - 1
        if _LITE_USERS[path] > 0:
            return
        del _LITE_USERS[path]
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(path)


def _lite_locked(path: Path) -> bool:
    """Whether another process holds a Milvus Lite database: pymilvus turns milvus_lite's DataDirLockedError
    into a ConnectionConfigException with no message, so ask the lock (an flock on <db>/LOCK) directly."""
    import fcntl

    lock = path / "LOCK"
    if not lock.exists():
        return False
    with lock.open("rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


__all__ = ["MilvusStore", "is_lite_uri", "milvus_index", "milvus_name"]
