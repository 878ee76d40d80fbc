"""The Store interface behaves the same on every backend: embedded (Faiss + SQLite), Milvus Lite, and a
Milvus server when LOOKALIKE_TEST_MILVUS_URI is set (e.g. http://127.0.0.1:19530).

Milvus Lite takes seconds to start, so each backend's store is opened once per module and every test
works in a collection of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lookalike import refine
from lookalike.errors import AlreadyExists, LookalikeError, StaleWrite, UnknownCollection, UnknownImage
from lookalike.store import Filter, ImageRecord, Store, open_store

BACKENDS = ["embedded", "milvus-lite"] + (["milvus-server"] if os.environ.get("LOOKALIKE_TEST_MILVUS_URI") else [])
_names = itertools.count()
RUN = uuid.uuid4().hex[:6]  # a server outlives a run: collection names of this run can't clash with a killed one's


def store_uri(backend: str, folder: Path) -> str:
    if backend == "embedded":
        return "embedded"
    if backend == "milvus-lite":
        return f"milvus:{folder}/lite.db"
    return "milvus:" + os.environ["LOOKALIKE_TEST_MILVUS_URI"]


@pytest.fixture(scope="module", params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    folder = tmp_path_factory.mktemp(request.param)
    s = open_store(folder, store_uri(request.param, folder), exact_below=50_000)
    yield s
    s.close()


@pytest.fixture
def coll(store: Store) -> Iterator[str]:
    """A new 16-d cosine collection, dropped afterwards (a server outlives the test)."""
    name = f"t{RUN}{next(_names)}-x_y"
    store.create_collection(name, "m", 16)
    yield name
    with contextlib.suppress(UnknownCollection):
        store.drop_collection(name)


def unit(rows: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rows: int, dim: int = 16, per: int = 4, seed: int = 0) -> np.ndarray:
    """Groups of `per` nearby vectors: refinement has neighbours to pull together."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(rows // per + 1, dim))
    x = (np.repeat(centres, per, axis=0)[:rows] + 0.35 * rng.normal(size=(rows, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(n: int, prefix: str = "/img") -> list[ImageRecord]:
    return [ImageRecord(path=f"{prefix}/{i}.jpg", size=i, mtime=float(i), content_hash=f"h{i}") for i in range(n)]


def test_search_finds_each_vector_first(store: Store, coll: str) -> None:
    vecs = unit(50)
    ids = store.upsert(coll, records(50), vecs)
    assert len(set(ids)) == 50 and store.count(coll) == 50
    scores, found = store.search(coll, vecs, 3)
    assert list(found[:, 0]) == ids
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)
    exact = np.sort(vecs @ vecs.T, axis=1)[:, ::-1][:, :3]
    assert np.allclose(scores, exact, atol=1e-5)  # FLAT below exact_below: exact scores
    scores, found = store.search(coll, vecs[:1], 60)  # more than there are
    assert (found[0, 50:] == -1).all() and np.isneginf(scores[0, 50:]).all()


def test_upsert_by_path_replaces_and_keeps_id(store: Store, coll: str) -> None:
    ids = store.upsert(coll, records(5), unit(5))
    new = unit(1, seed=9)
    again = store.upsert(coll, [ImageRecord(path="/img/2.jpg", size=99)], new)
    assert again == [ids[2]] and store.count(coll) == 5
    _, found = store.search(coll, new, 1)
    assert found[0, 0] == ids[2]
    assert np.array_equal(store.vectors(coll, [ids[2]]), new)
    assert store.get(coll, [ids[2]])[0].size == 99
    assert store.known_files(coll)["/img/2.jpg"] == (ids[2], 99, 0.0, "")
    more = store.upsert(coll, records(2, "/more"), unit(2, seed=4))
    assert min(more) > max(ids)  # new ids, never reused


def test_remove_updates_search_and_counts(store: Store, coll: str) -> None:
    vecs = unit(10)
    ids = store.upsert(coll, records(10), vecs)
    assert store.remove(coll, [*ids[:3], 10**9]) == 3
    assert store.remove(coll, ids[:3]) == 0
    _, found = store.search(coll, vecs, 10)
    assert not set(ids[:3]) & set(found.ravel().tolist())
    assert store.count(coll) == 7 and store.get(coll, ids[:4]) == store.get(coll, ids[3:4])
    with pytest.raises(UnknownImage):
        store.vectors(coll, ids[:1])
    all_ids, all_vecs = store.all_vectors(coll)
    assert all_ids.tolist() == ids[3:] and np.array_equal(all_vecs, vecs[3:])


def test_filters(store: Store, coll: str) -> None:
    recs = records(12, "/a_b")  # '_' and '%' are wildcards in Milvus' like: a prefix must match them literally
    recs += [ImageRecord(path=f"/aXb/{i}.jpg") for i in range(3)] + [ImageRecord(path='/q"uo\\te%/1.jpg')]
    for i, r in enumerate(recs):
        r.group_id = "even" if i % 2 == 0 else None
        r.tags = ["red", "big"] if i < 4 else (["red"] if i < 8 else [])
        r.metadata = {"camera": "x100", "n": i} if i < 6 else {}
    vecs = unit(len(recs))
    ids = store.upsert(coll, recs, vecs)
    by = dict(zip(range(len(recs)), ids, strict=True))
    assert store.find_ids(coll, flt=Filter(group_id="even")) == [by[i] for i in range(0, 16, 2)]
    assert store.find_ids(coll, flt=Filter(tags=["red", "big"])) == [by[i] for i in range(4)]
    assert store.find_ids(coll, flt=Filter(tags=["red"])) == [by[i] for i in range(8)]
    assert store.find_ids(coll, flt=Filter(path_prefix="/a_b/")) == [by[i] for i in range(12)]
    assert store.find_ids(coll, flt=Filter(path_prefix="/a_b/1")) == [by[1], by[10], by[11]]
    assert store.find_ids(coll, flt=Filter(path_prefix='/q"uo\\te%')) == [by[15]]
    assert store.find_ids(coll, flt=Filter(metadata={"camera": "x100"})) == [by[i] for i in range(6)]
    assert store.find_ids(coll, flt=Filter(metadata={"n": 3})) == [by[3]]
    assert store.find_ids(coll, flt=Filter(group_id="even", tags=["red"], ids=[by[2], by[3], by[4]])) == [by[2], by[4]]
    assert store.find_ids(coll, flt=Filter(ids=[])) == []
    assert store.find_ids(coll, paths=["/a_b/3.jpg", "/nope.jpg"]) == [by[3]]
    scores, found = store.search(coll, vecs[5:6], 4, Filter(tags=["red"], group_id="even"))
    assert set(found[0].tolist()) == {by[0], by[2], by[4], by[6]}
    assert np.all(np.diff(scores[0]) <= 0)
    _, none = store.search(coll, vecs[:1], 3, Filter(group_id="nobody"))
    assert (none == -1).all()


def test_update_metadata_and_get(store: Store, coll: str) -> None:
    [image_id] = store.upsert(coll, [ImageRecord(path="/p.jpg", metadata={"a": "1"})], unit(1))
    store.update_metadata(coll, image_id, group_id="g", tags=["t"], metadata={"b": "2"})
    rec = store.get(coll, [image_id])[0]
    assert (rec.group_id, rec.tags, rec.metadata, rec.path) == ("g", ["t"], {"a": "1", "b": "2"}, "/p.jpg")
    assert store.find_ids(coll, flt=Filter(metadata={"b": "2"}, tags=["t"])) == [image_id]
    with pytest.raises(UnknownImage):
        store.update_metadata(coll, 10**9, tags=["x"])


def test_collections_and_errors(store: Store, coll: str) -> None:
    assert coll in [c.name for c in store.collections()]
    info = store.collection(coll)
    assert (info.model, info.dim, info.metric, info.count) == ("m", 16, "cosine", 0)
    store.set_collection_settings(coll, {"refine": {"dba_k": 3}})
    assert store.collection_settings(coll) == ("cosine", {"refine": {"dba_k": 3}})
    with pytest.raises(AlreadyExists):
        store.create_collection(coll, "m", 16)
    with pytest.raises(UnknownCollection):
        store.collection("no-such")
    with pytest.raises(LookalikeError, match="do not fit"):
        store.upsert(coll, records(1), unit(1, dim=8))
    with pytest.raises(LookalikeError, match="NaN"):
        store.upsert(coll, records(1), np.full((1, 16), np.nan, np.float32))
    with pytest.raises(LookalikeError, match="invalid collection name"):
        store.create_collection("bad name", "m", 16)
    store.drop_collection(coll)
    assert coll not in [c.name for c in store.collections()]
    store.create_collection(coll, "m2", 16)  # a namesake starts empty
    assert store.count(coll) == 0 and store.collection(coll).model == "m2"


def test_refinement_rows(store: Store, coll: str) -> None:
    ids = store.upsert(coll, records(4), unit(4))
    assert store.pending(coll) == ids
    gen = store.generation(coll)
    aug = unit(2, seed=7)
    lists = [[(ids[0], 1.0), (ids[1], 0.5)], [(ids[1], 1.0), (ids[2], 0.25)]]
    new_gen = store.set_augmented(coll, ids[:2], aug, lists, if_generation=gen)
    assert new_gen > gen and store.generation(coll) == new_gen
    assert store.pending(coll) == ids[2:]
    assert store.neighbour_lists(coll, ids) == {ids[0]: lists[0], ids[1]: lists[1]}
    assert np.array_equal(store.index_vectors(coll, ids[:2]), aug)
    assert np.array_equal(store.index_vectors(coll, ids[2:]), store.vectors(coll, ids[2:]))
    _, found = store.search(coll, aug[:1], 1)
    assert found[0, 0] == ids[0]  # the index searches the augmented vector
    with pytest.raises(StaleWrite):
        store.set_augmented(coll, ids[:1], aug[:1], lists[:1], if_generation=gen)
    store.upsert(coll, [ImageRecord(path="/img/2.jpg")], unit(1, seed=11))  # row 2 changes: row 1 listed it
    assert store.pending(coll) == ids[1:]
    assert list(store.neighbour_lists(coll, ids)) == [ids[0]]
    store.remove(coll, [ids[1]])  # row 0 listed row 1
    assert store.pending(coll) == [ids[0], ids[2], ids[3]]
    store.set_augmented(coll, ids[2:3], aug[:1], [[(ids[2], 1.0)]])
    store.clear_augmented(coll)
    assert store.pending(coll) == [ids[0], ids[2], ids[3]] and store.neighbour_lists(coll, ids) == {}


def test_rewriting_the_same_vector_keeps_the_augmented_vector(store: Store, coll: str) -> None:
    vecs = unit(3)
    ids = store.upsert(coll, records(3), vecs)
    store.set_augmented(coll, ids[:1], unit(1, seed=5), [[(ids[0], 1.0)]])
    store.upsert(coll, [ImageRecord(path="/img/0.jpg", size=42)], vecs[:1])
    assert store.pending(coll) == ids[1:] and store.get(coll, ids[:1])[0].size == 42


def test_import_rows_keeps_ids_and_refinement(store: Store, coll: str) -> None:
    vecs = unit(3)
    recs = [ImageRecord(path=f"/i/{i}.jpg", id=1000 + i, added=123.5 + i, tags=["t"]) for i in range(3)]
    aug = unit(1, seed=3)[0]
    store.import_rows(coll, recs, vecs, [aug, None, None], [[(1000, 1.0), (1001, 0.5)], [], []])
    store.import_rows(coll, recs[:1], vecs[:1], [aug], [[(1000, 1.0), (1001, 0.5)]])  # a resumed copy: harmless
    assert store.find_ids(coll) == [1000, 1001, 1002] and store.count(coll) == 3
    assert [r.added for r in store.get(coll, [1000, 1002])] == [123.5, 125.5]
    assert store.pending(coll) == [1001, 1002]
    assert np.array_equal(store.index_vectors(coll, [1000]), aug[None, :])
    assert store.neighbour_lists(coll, [1000, 1001]) == {1000: [(1000, 1.0), (1001, 0.5)]}
    [new] = store.upsert(coll, records(1, "/new"), unit(1, seed=8))
    assert new > 1002  # ids go on from the imported ones
    with pytest.raises(AlreadyExists):
        store.import_rows(coll, [ImageRecord(path="/i/0.jpg", id=5000)], vecs[:1], [None], [[]])


def test_hamming_collection(store: Store) -> None:
    name = f"h{RUN}{next(_names)}"
    store.create_collection(name, "phash", 64, metric="hamming")
    codes = np.random.default_rng(1).integers(0, 256, size=(20, 8), dtype=np.uint8)
    ids = store.upsert(name, records(20), codes)
    scores, found = store.search(name, codes[:3], 2)
    assert list(found[:, 0]) == ids[:3] and np.allclose(scores[:, 0], 1.0)
    position = {image_id: n for n, image_id in enumerate(ids)}
    bits = np.unpackbits(codes[:3, None, :] ^ codes[[[position[i] for i in row] for row in found]], axis=2).sum(axis=2)
    assert np.allclose(scores, 1.0 - bits / 64)  # similarity = share of equal bits
    assert np.array_equal(store.vectors(name, ids[:2]), codes[:2])
    store.drop_collection(name)


def test_refinement_gives_the_same_vectors_and_results_on_every_backend(tmp_path: Path) -> None:
    """refine.py over the store verbs: DBA vectors, neighbour lists and expanded queries agree across backends."""
    vecs = clustered(120)
    results = {}
    for backend in BACKENDS:
        s = open_store(tmp_path / backend, store_uri(backend, tmp_path / backend))
        name = f"r{RUN}{next(_names)}"
        s.create_collection(name, "m", 16, settings=refine.RefineParams().to_settings())
        ids = s.upsert(name, records(120), vecs)
        refine.refresh(s, name)
        more = s.upsert(name, records(10, "/more"), clustered(10, seed=5))  # incremental: joins stored rows' lists
        s.remove(name, ids[:5])
        refine.refresh(s, name)
        params = refine.RefineParams.from_settings(*s.collection_settings(name))
        queries = [refine.expand_query(s, name, v, params) for v in vecs[5:25]]
        hits = [s.search(name, q[None, :], 5)[1][0].tolist() for q in queries]
        all_ids = s.find_ids(name)
        results[backend] = (ids + more, s.pending(name), s.index_vectors(name, all_ids),
                            s.neighbour_lists(name, all_ids), np.stack(queries), hits)
        s.drop_collection(name)
        s.close()
    base = results["embedded"]
    for backend in BACKENDS[1:]:
        other = results[backend]
        assert other[0] == base[0] and other[1] == base[1] == []
        assert np.allclose(other[2], base[2], atol=1e-6)
        listed = [{i: [n for n, _ in lst] for i, lst in lists.items()} for lists in (other[3], base[3])]
        assert listed[0] == listed[1]
        assert np.allclose(other[4], base[4], atol=1e-6) and other[5] == base[5]
