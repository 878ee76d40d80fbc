"""The Faiss side of the embedded store: one index per collection, only a derived, rebuildable cache of the
searchable vectors the catalogue holds.

Why it can't drift from the catalogue: every write is logged there, per generation, with the rows whose index
entries it changed. An index file is named after the generation it was built from; an older file (or another
process's index in memory) catches up by replaying the rows logged since, and a file too old for the log is
rebuilt from the stored vectors. Small writes therefore cost a few rows in SQLite, not a rewrite of the index
file: the file is rewritten only once the log holds more than LOG_LIMIT_FRACTION of the collection (`flush`).

Everything it reads or writes in SQLite goes through `Catalogue` methods.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import LookalikeError
from .catalogue import Catalogue, CollectionState, IndexChange

LOG_LIMIT_MIN = 1000  # an index file is rewritten once its log holds more rows than this...
LOG_LIMIT_FRACTION = 0.05  # ...and more than this fraction of the collection
EXACT_FILTER_LIMIT = 4096  # filters selecting fewer rows than this are searched exactly
LSH_SPEC_RE = re.compile(r"LSH(\d+)")  # `LSH<bits>`: binary codes, Hamming shortlist, exact re-rank
LSH_MIN_TRAIN = 1000  # vectors the codes are learned from; an LSH collection is exact until it has this many
LSH_TRAIN_MAX = 10_000  # at most this many (evenly spaced) train the projection
LSH_SEED = 1234
LSH_SHORTLIST_PER_RESULT = 20  # Hamming candidates re-ranked per result asked for...
LSH_SHORTLIST_MIN = 200  # ...and at least this many (measured in bench/stores.py)


class LshCodes:
    """`LSH<bits>`: each vector kept as `bits` sign bits, bits/8 bytes in memory, searched by Hamming distance.

    The bits: project onto the `bits` leading principal axes of a training sample, spin them by a random
    rotation (so every bit carries about the same variance), and threshold each at its median (so clustered,
    non-centred image features still split evenly). On 100k image-like 2304-d vectors that recovers the true
    top 10 from a shortlist far better than a random projection (bench/stores.py). The encoder is a Faiss
    IndexPreTransform(LinearTransform, IndexLSH) holding no vectors (IndexLSH with a random rotation where
    there are fewer dimensions or samples than bits); the codes live in a binary flat index with our ids,
    because IndexLSH takes no IDSelector (filters) while IndexBinaryFlat does. Hamming distances only pick a
    shortlist: FaissIndex re-ranks it by exact cosine from the stored vectors."""

    def __init__(self, encoder: Any, codes: Any) -> None:
        self.encoder = encoder  # trained, holding no vectors: projection, rotation and thresholds
        self.codes = codes  # IndexBinaryIDMap2(IndexBinaryFlat(bits))

    @classmethod
    def train(cls, dim: int, bits: int, sample: np.ndarray) -> LshCodes:
        step = max(1, len(sample) // LSH_TRAIN_MAX)
        sample = np.ascontiguousarray(sample[::step][:LSH_TRAIN_MAX], dtype=np.float32)
        if bits < min(dim, len(sample)):
            mean = sample.mean(axis=0, dtype=np.float64)
            centred = sample - mean.astype(np.float32)
            rng = np.random.default_rng(LSH_SEED)
            spin, _ = np.linalg.qr(rng.standard_normal((bits, bits)))
            matrix = (_leading_axes(centred, bits, rng) @ spin).T.astype(np.float32)  # bits x dim
            projection = faiss.LinearTransform(dim, bits, True)
            faiss.copy_array_to_vector(matrix.ravel(), projection.A)
            faiss.copy_array_to_vector((-(matrix @ mean)).astype(np.float32), projection.b)
            projection.is_trained = True
            encoder = faiss.IndexPreTransform(projection, faiss.IndexLSH(bits, bits, False, True))
        else:
            encoder = faiss.IndexLSH(dim, bits, True, True)  # random rotation, median thresholds
        encoder.train(sample)  # what is left to learn: the thresholds
        return cls(encoder, faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits)))

    @property
    def ntotal(self) -> int:
        return int(self.codes.ntotal)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return self.encoder.sa_encode(np.ascontiguousarray(vectors, dtype=np.float32))

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.codes.add_with_ids(self.encode(vectors), np.asarray(ids, dtype=np.int64))

    def remove_ids(self, ids: np.ndarray) -> int:
        return int(self.codes.remove_ids(np.asarray(ids, dtype=np.int64)))

    def search(self, queries: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(Hamming distances, ids) of the k nearest codes; `params` may carry an IDSelector."""
        return self.codes.search(self.encode(queries), k, params=params)

    def write(self, path: str) -> None:
        encoder = faiss.serialize_index(self.encoder)
        codes = faiss.serialize_index_binary(self.codes)
        with open(path, "wb") as out:
            out.write(len(encoder).to_bytes(8, "little"))
            out.write(encoder.tobytes())
            out.write(codes.tobytes())

    @classmethod
    def read(cls, path: str) -> LshCodes:
        data = np.fromfile(path, dtype=np.uint8)
        size = int.from_bytes(data[:8].tobytes(), "little")
        if not 0 < size < len(data) - 8:
            raise RuntimeError(f"{path}: not an LSH index file")
        return cls(faiss.deserialize_index(data[8:8 + size]), faiss.deserialize_index_binary(data[8 + size:]))


def _leading_axes(centred: np.ndarray, count: int, rng: np.random.Generator, rounds: int = 3) -> np.ndarray:
    """The `count` leading principal axes (dim x count) of centred rows, by subspace iteration: a few matrix
    products instead of a full eigendecomposition (seconds, not the half minute numpy's eigh takes at 2304-d
    on two busy cores). The codes spin the axes anyway, so the span is what matters."""
    basis = rng.standard_normal((centred.shape[1], count + 16)).astype(np.float32)
    for _ in range(rounds):
        basis, _ = np.linalg.qr(centred.T @ (centred @ basis))
    projected = centred @ basis
    _, vectors = np.linalg.eigh(projected.T @ projected)  # small: (count + 16) squared
    return basis @ vectors[:, ::-1][:, :count]


@dataclass
class _LoadedIndex:
    index: Any
    generation: int
    index_type: str
    created: float  # the collection's creation time: an index of a dropped namesake is never reused
    on_disk: bool  # read from a file (and caught up since): that file plus the log reproduce it


class FaissIndex:
    """The Faiss indexes of one library (`<home>/indexes/<collection>.<generation>.faiss` + `.json`), kept at the
    catalogue's current generation on use. Shares the catalogue's lock."""

    def __init__(self, catalogue: Catalogue, index_dir: Path, *, exact_below: int = 50_000) -> None:
        self.catalogue = catalogue
        self.index_dir = Path(index_dir)
        self.index_dir.mkdir(parents=True, exist_ok=True)
        self.exact_below = exact_below
        self._lock = catalogue.lock
        self._indexes: dict[str, _LoadedIndex] = {}
        self._written: set[str] = set()  # collections this process changed: flush saves their index

    # -- what the store asks of it ------------------------------------------------------------
    def index_for(self, collection: str) -> Any:
        """The current Faiss index of a collection (rebuilt if stale)."""
        with self._lock:
            return self._load(collection).index

    def describe(self, collection: str, count: int) -> tuple[str, int]:
        """(index type, bytes of its files on disk); an empty collection reports the type it would get."""
        with self._lock:
            if count:
                index_type = self._load(collection).index_type
            else:
                index_type = self._planned_type(self.catalogue.collection_state(collection), count)
            files = list(self.index_dir.glob(f"{collection}.*.faiss"))
            return index_type, sum(f.stat().st_size for f in files if f.exists())

    def apply(self, change: IndexChange | None) -> None:
        """Keep an in-memory index current after this process's own committed write, or leave it to catch up on
        next use; either way `flush` will look at the collection."""
        if change is None:
            return
        with self._lock:
            self._written.add(change.collection)
            if change.everything:
                self._indexes.pop(change.collection, None)
                return
            loaded = self._indexes.get(change.collection)
            if loaded is None or loaded.generation != change.generation - 1:
                return
            try:
                if change.remove:
                    loaded.index.remove_ids(np.asarray(change.remove, dtype=np.int64))
                if len(change.add_ids):
                    loaded.index.add_with_ids(change.add_vectors, change.add_ids)
            except RuntimeError:  # e.g. HNSW cannot remove: rebuild on next use
                self._indexes.pop(change.collection)
                return
            loaded.generation = change.generation

    def drop(self, collection: str) -> None:
        """Forget a dropped collection's index, in memory and on disk."""
        with self._lock:
            self._indexes.pop(collection, None)
            for path in [*self.index_dir.glob(f"{collection}.*.faiss"), *self.index_dir.glob(f"{collection}.*.json")]:
                path.unlink(missing_ok=True)

    def search(self, state: CollectionState, queries: np.ndarray, k: int, allowed: list[int] | None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query row, ids -1 where fewer matched; `allowed`: the only ids a filter
        lets through (None: every row). Few allowed rows are scored exactly, more through an IDSelector."""
        with self._lock:
            q = np.ascontiguousarray(queries, dtype=state.vector_dtype)
            if q.ndim == 1:
                q = q[None, :]
            k = max(1, int(k))
            with _omp_threads(1 if len(q) < 8 else 0):
                return self._search_locked(state, q, k, allowed)

    def flush(self) -> None:
        """Make what this process wrote cheap to open. A new index file is written (atomically, named
        after its generation; older files dropped, the log up to it folded) when there is no usable
        file, when the index was rebuilt, when the log since the file has grown past LOG_LIMIT_*, or
        when the index type must change (the exact/approximate threshold was crossed). Otherwise the
        file plus the log already are the index, and a small write costs nothing here."""
        with self._lock:
            candidates = sorted(self._written | set(self._indexes))
            self._written.clear()
            for collection in candidates:
                state = self.catalogue.find_collection(collection)
                if state is None:
                    continue
                loaded = self._indexes.get(collection)
                current = (loaded is not None and loaded.generation == state.generation
                           and loaded.created == state.created)
                if current and not loaded.on_disk:
                    pass  # rebuilt here: the disk has nothing this good
                elif not self._needs_file(state):
                    continue
                loaded = self._load(collection)
                if _must_retype(loaded.index_type, self._planned_type(state, loaded.index.ntotal), loaded.index.ntotal):
                    loaded = self._rebuild(collection)
                self._write_index_file(collection, loaded)

    # -- search -------------------------------------------------------------------------------
    def _search_locked(self, state: CollectionState, q: np.ndarray, k: int, allowed: list[int] | None
                       ) -> tuple[np.ndarray, np.ndarray]:
        if allowed is not None:
            if not allowed:
                return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
            if len(allowed) <= EXACT_FILTER_LIMIT:
                return _exact(state, q, k, *self.catalogue.searchable_vectors(state, allowed))
            loaded = self._load(state.name)
            lsh = isinstance(loaded.index, LshCodes)
            inner = _unwrap(loaded.index) if not (state.is_hamming or lsh) else None
            selector = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
            ivf = _as_ivf(inner) if inner is not None else None
            if lsh:
                return self._lsh_search(state, loaded.index, q, k, faiss.SearchParameters(sel=selector))
            if isinstance(inner, faiss.IndexHNSW):
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
            elif ivf is not None:
                params = faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)
            dist, ids = loaded.index.search(q, k, params=params)
        else:
            loaded = self._load(state.name)
            if isinstance(loaded.index, LshCodes):
                return self._lsh_search(state, loaded.index, q, k, None)
            dist, ids = loaded.index.search(q, k)
        return _to_scores(state, dist, ids), ids.astype(np.int64)

    def _lsh_search(self, state: CollectionState, codes: LshCodes, q: np.ndarray, k: int, params: Any
                    ) -> tuple[np.ndarray, np.ndarray]:
        """A Hamming shortlist per query, re-ranked by exact cosine against the stored searchable vectors
        (read from the catalogue, so only the codes need to fit in memory)."""
        shortlist = min(codes.ntotal, max(LSH_SHORTLIST_MIN, LSH_SHORTLIST_PER_RESULT * k))
        scores = np.full((len(q), k), -np.inf, np.float32)
        out_ids = np.full((len(q), k), -1, np.int64)
        if shortlist == 0:
            return scores, out_ids
        _, candidates = codes.search(q, shortlist, params)
        wanted = np.unique(candidates[candidates >= 0])
        present, vectors = self.catalogue.searchable_vectors(state, wanted.tolist())  # removed since: absent
        row_of = {int(i): row for row, i in enumerate(present)}
        for n, row_ids in enumerate(candidates):
            rows = [row_of[int(i)] for i in row_ids if int(i) in row_of]
            if not rows:
                continue
            sims = vectors[rows] @ q[n]
            order = np.argsort(-sims, kind="stable")[:k]
            scores[n, :len(order)] = sims[order]
            out_ids[n, :len(order)] = present[rows][order]
        return scores, out_ids

    # -- choosing and building an index --------------------------------------------------------
    def _planned_type(self, state: CollectionState, count: int) -> str:
        if state.index_spec != "auto":
            return state.index_spec
        if state.is_hamming:
            return "BFlat"
        if count < self.exact_below:
            return "Flat"
        # IVF, not HNSW: it removes and replaces vectors in place, which refinement and re-indexing
        # need, and it builds in seconds; nprobe (below) keeps recall high
        return f"IVF{_nlist(count)},Flat"

    @staticmethod
    def _new_index(state: CollectionState, spec: str, train: np.ndarray | None) -> tuple[Any, str]:
        dim = state.dim
        if state.is_hamming:
            return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(dim)), "BFlat"
        lsh = LSH_SPEC_RE.fullmatch(spec)
        if lsh:
            if train is None or len(train) < LSH_MIN_TRAIN:
                return faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), f"Flat (until {LSH_MIN_TRAIN} vectors for {spec})"
            return LshCodes.train(dim, int(lsh.group(1)), train), spec
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

    def _rebuild(self, collection: str) -> _LoadedIndex:
        with self.catalogue.snapshot():
            state = self.catalogue.collection_state(collection)
            ids, vecs = self.catalogue.all_vectors(collection, augmented=True)
        spec = self._planned_type(state, len(ids))
        index, index_type = self._new_index(state, spec, vecs)
        if len(ids):
            index.add_with_ids(vecs, ids)
        loaded = _LoadedIndex(index, state.generation, index_type, state.created, on_disk=False)
        self._indexes[collection] = loaded
        return loaded

    # -- keeping an index at the current generation --------------------------------------------
    def _load(self, collection: str) -> _LoadedIndex:
        """The collection's index at its current generation: kept in memory, caught up from the log,
        read from the newest file (and caught up), or rebuilt from the stored vectors, cheapest first."""
        state = self.catalogue.collection_state(collection)
        loaded = self._indexes.pop(collection, None)
        if loaded is not None and (loaded.generation == state.generation and loaded.created == state.created
                                   or self._catch_up(collection, loaded)):
            self._indexes[collection] = loaded
            return loaded
        saved = self._saved_generations(collection, state.generation)
        if saved and saved[0] >= state.log_floor:
            loaded = self._read_index_file(state, saved[0])
            if loaded is not None and (saved[0] == state.generation or self._catch_up(collection, loaded)):
                self._indexes[collection] = loaded
                return loaded
        return self._rebuild(collection)

    def _catch_up(self, collection: str, loaded: _LoadedIndex) -> bool:
        """Bring an older index up to the current generation by replaying the logged rows: each is
        removed and, if still stored, added back with its current vector. False if it can't be."""
        if not _can_remove(loaded.index_type):
            return False
        with self.catalogue.snapshot():
            now = self.catalogue.find_collection(collection)
            if (now is None or now.created != loaded.created or now.logged_generation != now.generation
                    or not now.log_floor <= loaded.generation <= now.generation):
                return False
            changed = self.catalogue.changed_since(collection, loaded.generation)
            present, vectors = self.catalogue.searchable_vectors(now, changed)
        try:
            if changed:
                loaded.index.remove_ids(np.asarray(changed, dtype=np.int64))
            if len(present):
                loaded.index.add_with_ids(vectors, present)
        except RuntimeError:
            return False
        loaded.generation = now.generation
        return True

    # -- files on disk ------------------------------------------------------------------------
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

    def _read_index_file(self, state: CollectionState, generation: int) -> _LoadedIndex | None:
        meta = self._index_meta(state.name, generation)
        if meta is None or meta.get("created", state.created) != state.created:
            return None  # no description, or left by a dropped collection of the same name
        try:
            if LSH_SPEC_RE.fullmatch(meta["index_type"]):
                reader: Any = LshCodes.read
            else:
                reader = faiss.read_index_binary if state.is_hamming else faiss.read_index
            index = reader(str(self._index_file(state.name, generation)))
        except (RuntimeError, OSError):
            return None  # damaged, or removed meanwhile by a newer flush: the caller falls back
        if isinstance(index, faiss.IndexIDMap) and _as_ivf(_unwrap(index)) is not None:
            return None  # id map over IVF (older lookalike): removals would misnumber it
        return _LoadedIndex(index, generation, meta["index_type"], state.created, on_disk=True)

    def _needs_file(self, state: CollectionState) -> bool:
        """Whether opening this collection would replay too much, or can't use its newest file as is."""
        collection = state.name
        saved = self._saved_generations(collection, state.generation)
        if not saved or saved[0] < state.log_floor or state.logged_generation != state.generation:
            return True
        meta = self._index_meta(collection, saved[0])
        if meta is None or meta.get("created", state.created) != state.created:
            return True
        count = self.catalogue.count(collection)
        if _must_retype(meta["index_type"], self._planned_type(state, count), count):
            return True
        logged = self.catalogue.log_length_since(collection, saved[0])
        if logged and not _can_remove(meta["index_type"]):
            return True
        return logged > max(LOG_LIMIT_MIN, LOG_LIMIT_FRACTION * count)

    def _write_index_file(self, collection: str, loaded: _LoadedIndex) -> None:
        path = self._index_file(collection, loaded.generation)
        tag = f"{os.getpid()}-{threading.get_ident()}"  # unique per writer: peers may write the same generation
        tmp = path.with_name(f"{path.name}.tmp{tag}")
        meta_tmp = path.with_name(f"{path.stem}.json.tmp{tag}")
        if isinstance(loaded.index, LshCodes):
            loaded.index.write(str(tmp))
        elif isinstance(loaded.index, faiss.IndexBinary):
            faiss.write_index_binary(loaded.index, str(tmp))
        else:
            faiss.write_index(loaded.index, str(tmp))
        meta_tmp.write_text(json.dumps({"index_type": loaded.index_type, "generation": loaded.generation,
                                        "created": loaded.created}))
        os.replace(tmp, path)
        os.replace(meta_tmp, path.with_suffix(".json"))
        loaded.on_disk = True
        self.catalogue.fold_log(collection, loaded.generation, loaded.created)
        for generation in self._saved_generations(collection, loaded.generation - 1):
            old = self._index_file(collection, generation)  # newer files are not ours to remove
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)


def check_index_spec(spec: str, dim: int, metric: str) -> None:
    """Refuse an index_factory string Faiss can't build, before a collection is created with it."""
    if metric == "hamming":
        raise LookalikeError("binary (hamming) collections use exact search; leave --index-spec as auto")
    lsh = LSH_SPEC_RE.fullmatch(spec)
    if lsh:
        bits = int(lsh.group(1))
        if bits % 8 or not 8 <= bits <= 8192:
            raise LookalikeError(f"invalid index spec '{spec}': LSH bits must be a multiple of 8 from 8 to 8192 "
                                 "(e.g. LSH256)")
        return
    try:
        faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise LookalikeError(f"invalid Faiss index_factory string '{spec}': {first[:120]}") from exc


def _exact(state: CollectionState, q: np.ndarray, k: int, ids: np.ndarray, vecs: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k over a few rows (a narrow filter): exact, and cheaper than a selector on the index."""
    if state.is_hamming:
        bits = np.unpackbits(q[:, None, :] ^ vecs[None, :, :], axis=2).sum(axis=2)
        sims = 1.0 - bits / state.dim
    else:
        sims = q @ vecs.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(sims, order, axis=1).astype(np.float32)
    out_ids = ids[order]
    if order.shape[1] < k:
        pad = k - order.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores, out_ids


def _to_scores(state: CollectionState, dist: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Faiss distances as similarities (Hamming bits -> fraction alike), -inf where no row was found."""
    if state.is_hamming:
        scores = 1.0 - dist.astype(np.float32) / state.dim
    else:
        scores = dist.astype(np.float32)
    return np.where(ids >= 0, scores, -np.inf).astype(np.float32)


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
    if LSH_SPEC_RE.fullmatch(spec):
        return LSH_MIN_TRAIN
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


__all__ = ["EXACT_FILTER_LIMIT", "LOG_LIMIT_FRACTION", "LOG_LIMIT_MIN", "FaissIndex", "LshCodes", "check_index_spec"]
