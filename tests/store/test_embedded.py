"""The embedded store keeps catalogue and Faiss index in step, across writes, processes and crashes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lookalike.errors import LookalikeError, UnknownCollection
from lookalike.store import EmbeddedStore, Filter, ImageRecord


def unit(rows: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(n: int, prefix: str = "/img") -> list[ImageRecord]:
    return [ImageRecord(path=f"{prefix}/{i}.jpg", size=i, mtime=float(i)) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path) -> EmbeddedStore:
    s = EmbeddedStore(tmp_path)
    s.create_collection("c", "m", 16)
    return s


def test_search_finds_each_vector_first(store: EmbeddedStore) -> None:
    vecs = unit(50)
    ids = store.upsert("c", records(50), vecs)
    scores, found = store.search("c", vecs, 3)
    assert list(found[:, 0]) == ids
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_upsert_by_path_replaces_and_keeps_id(store: EmbeddedStore) -> None:
    vecs = unit(5)
    ids = store.upsert("c", records(5), vecs)
    new = unit(1, seed=9)
    again = store.upsert("c", [ImageRecord(path="/img/2.jpg", size=99)], new)
    assert again == [ids[2]] and store.count("c") == 5
    _, found = store.search("c", new, 1)
    assert found[0, 0] == ids[2]
    assert np.allclose(store.vectors("c", [ids[2]]), new)


def test_remove_updates_search(store: EmbeddedStore) -> None:
    vecs = unit(10)
    ids = store.upsert("c", records(10), vecs)
    assert store.remove("c", ids[:3]) == 3
    _, found = store.search("c", vecs, 10)
    assert not set(ids[:3]) & set(found.ravel().tolist())
    assert store.count("c") == 7


def test_index_file_is_reused_and_stale_file_rebuilt(tmp_path: Path) -> None:
    s1 = EmbeddedStore(tmp_path)
    s1.create_collection("c", "m", 16)
    vecs = unit(20)
    s1.upsert("c", records(20), vecs)
    s1.flush()
    files = list((tmp_path / "indexes").glob("c.*.faiss"))
    assert len(files) == 1
    # a second process writes without flushing (as if killed): the file is now stale
    s2 = EmbeddedStore(tmp_path)
    extra = unit(5, seed=3)
    s2.upsert("c", records(5, "/more"), extra)
    s3 = EmbeddedStore(tmp_path)
    _, found = s3.search("c", extra, 1)
    assert set(found[:, 0]) <= set(s3.find_ids("c", paths=[f"/more/{i}.jpg" for i in range(5)]))
    assert s3.index_for("c").ntotal == 25


def test_damaged_index_file_is_rebuilt(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path)
    s.create_collection("c", "m", 16)
    vecs = unit(8)
    s.upsert("c", records(8), vecs)
    s.close()
    for f in (tmp_path / "indexes").glob("*.faiss"):
        f.write_bytes(b"garbage")
    repaired = EmbeddedStore(tmp_path)
    _, found = repaired.search("c", vecs, 1)
    assert found[:, 0].tolist() == list(range(1, 9))
    repaired.close()  # writes the rebuilt index back, so later opens don't rebuild again
    third = EmbeddedStore(tmp_path)
    third.faiss_index._rebuild = None  # type: ignore[assignment]  (calling it would fail the test)
    assert third.search("c", vecs[:1], 1)[1][0, 0] == 1


def test_filters(store: EmbeddedStore) -> None:
    recs = records(6)
    for i, r in enumerate(recs):
        r.group_id = "even" if i % 2 == 0 else "odd"
        r.tags = ["cat"] if i < 3 else ["dog"]
        r.metadata = {"camera": "x100" if i == 5 else "phone"}
    vecs = unit(6)
    ids = store.upsert("c", recs, vecs)
    _, found = store.search("c", vecs[:1], 6, Filter(group_id="odd"))
    assert set(found[0][found[0] >= 0]) == {ids[1], ids[3], ids[5]}
    _, found = store.search("c", vecs[:1], 6, Filter(tags=["cat"], group_id="even"))
    assert set(found[0][found[0] >= 0]) == {ids[0], ids[2]}
    _, found = store.search("c", vecs[:1], 6, Filter(metadata={"camera": "x100"}))
    assert found[0][0] == ids[5] and (found[0][1:] == -1).all()
    _, found = store.search("c", vecs[:1], 3, Filter(path_prefix="/nowhere"))
    assert (found == -1).all()


def test_factory_index_and_approximate_threshold(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path, exact_below=100)
    s.create_collection("h", "m", 16)
    vecs = unit(300)
    ids = s.upsert("h", records(300), vecs)
    s.flush()
    assert s.collection("h").index_type == "IVF4,Flat"  # about 4*sqrt(N) lists, >= 39 vectors each
    _, found = s.search("h", vecs[:20], 1)
    assert (found[:, 0] == np.asarray(ids[:20])).mean() >= 0.95
    # IVF updates in place: replacing and removing vectors keeps the loaded index (no rebuild), and
    # every later search still maps to the right rows (an id map over IVF would misnumber them)
    index = s.index_for("h")
    for start in (0, 100, 200):  # several removals, each followed by an unfiltered search
        s.remove("h", ids[start:start + 5])
        _, found = s.search("h", vecs[start + 20:start + 40], 1)
        assert (found[:, 0] == np.asarray(ids[start + 20:start + 40])).mean() >= 0.95
    s.upsert("h", records(300)[10:11], -vecs[10:11])
    assert s.index_for("h") is index and index.ntotal == 285
    _, found = s.search("h", -vecs[10:11], 1)
    assert found[0][0] == ids[10]
    _, found = s.search("h", -vecs[10:11], 1, Filter(ids=ids[5:50]))
    assert found[0][0] == ids[10]
    s.flush()
    reopened = EmbeddedStore(tmp_path, exact_below=100)
    _, found = reopened.search("h", vecs[250:260], 1)
    assert (found[:, 0] == np.asarray(ids[250:260])).all()
    s.create_collection("ivf", "m", 16, index_spec="IVF4,Flat")
    s.upsert("ivf", records(10), vecs[:10])
    assert s.collection("ivf").index_type.startswith("Flat (until")  # too few to train yet
    with pytest.raises(LookalikeError, match="index_factory"):
        s.create_collection("bad", "m", 16, index_spec="NoSuchIndex")


def test_hamming_collection(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path)
    s.create_collection("h", "phash", 64, metric="hamming")
    codes = np.random.default_rng(0).integers(0, 256, size=(10, 8), dtype=np.uint8)
    ids = s.upsert("h", records(10), codes)
    scores, found = s.search("h", codes[:2], 2)
    assert found[:, 0].tolist() == ids[:2] and np.allclose(scores[:, 0], 1.0)


def test_errors_are_clear(store: EmbeddedStore) -> None:
    with pytest.raises(UnknownCollection, match="no collection named 'nope'"):
        store.search("nope", unit(1), 1)
    with pytest.raises(LookalikeError, match="do not fit collection"):
        store.upsert("c", records(1), unit(1, dim=8))
    with pytest.raises(LookalikeError, match="invalid collection name"):
        store.create_collection("../etc", "m", 16)
    assert store.count("c") == 0  # the refused write stored nothing


def test_drop_collection_removes_rows_and_files(store: EmbeddedStore, tmp_path: Path) -> None:
    store.upsert("c", records(3), unit(3))
    store.flush()
    store.drop_collection("c")
    assert not list((tmp_path / "indexes").glob("c.*"))
    with pytest.raises(UnknownCollection):
        store.collection("c")


def test_rewriting_a_row_with_the_same_vector_keeps_one_index_entry(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path)
    s.create_collection("c", "m", 16)
    vecs = unit(5)
    ids = s.upsert("c", records(5), vecs)
    index = s.index_for("c")
    again = records(5)[:2]
    again[0].mtime = 123.0  # same bytes, new file facts (e.g. restored from a backup)
    assert s.upsert("c", again, vecs[:2]) == ids[:2]
    assert s.index_for("c") is index and index.ntotal == 5
    _, found = s.search("c", vecs[:1], 5)
    assert sorted(found[0].tolist()) == sorted(ids)
    assert s.get("c", [ids[0]])[0].mtime == 123.0


def test_filtered_search_through_the_ivf_selector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike.store import faiss_index

    monkeypatch.setattr(faiss_index, "EXACT_FILTER_LIMIT", 0)  # force the Faiss IDSelector path
    s = EmbeddedStore(tmp_path, exact_below=100)
    s.create_collection("h", "m", 16)
    vecs = unit(400)
    ids = s.upsert("h", records(400), vecs)
    s.remove("h", ids[:10])
    assert s.collection("h").index_type.startswith("IVF")
    allowed = ids[100:200]
    _, found = s.search("h", vecs[150:151], 5, Filter(ids=allowed))
    assert found[0][0] == ids[150] and set(found[0].tolist()) <= set(allowed)


def test_processes_opening_a_new_library_together_all_succeed(tmp_path: Path) -> None:
    """`index` and `info` started at once on a library that does not exist yet: neither may fail."""
    import subprocess
    import sys

    code = ("import sys; from lookalike.store import EmbeddedStore; s = EmbeddedStore(sys.argv[1]); "
            "s.collections(); s.close()")
    for round_ in range(12):  # before the fix, about 1 open in 75 failed with "database is locked"
        home = tmp_path / f"lib{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(home)], stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err.strip().splitlines()[-1] if err.strip() else proc.returncode


def exact_top(store: EmbeddedStore, collection: str, queries: np.ndarray, k: int) -> np.ndarray:
    """Ground truth from the stored index vectors, independent of any Faiss index."""
    ids, vecs = store.all_vectors(collection, augmented=True)
    return ids[np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :k]]


def index_files(home: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (home / "indexes").glob("*.faiss")}


def test_small_writes_leave_the_index_file_alone_and_a_new_process_sees_them(
        store: EmbeddedStore, tmp_path: Path) -> None:
    s = store
    vecs = unit(60)
    ids = s.upsert("c", records(60), vecs)
    s.flush()
    files = index_files(tmp_path)
    assert len(files) == 1
    new = unit(3, seed=5)
    new_ids = s.upsert("c", records(3, "/new"), new)  # add
    s.remove("c", ids[:4])  # remove
    moved = unit(1, seed=6)
    s.upsert("c", records(60)[10:11], moved)  # replace a vector
    s.flush()
    s.close()
    assert index_files(tmp_path) == files  # the same file, not rewritten: the log covers the writes
    fresh = EmbeddedStore(tmp_path)
    assert fresh.index_for("c").ntotal == fresh.count("c") == 59
    queries = np.concatenate([new, moved, vecs[20:30]])
    _, found = fresh.search("c", queries, 5)
    assert (found == exact_top(fresh, "c", queries, 5)).all()
    assert found[:3, 0].tolist() == new_ids and found[3, 0] == ids[10]
    assert not set(ids[:4]) & set(fresh.search("c", vecs[:4], 10)[1].ravel().tolist())


def test_a_reader_catches_up_with_another_process_without_rebuilding(
        store: EmbeddedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    writer = store
    vecs = unit(40)
    ids = writer.upsert("c", records(40), vecs)
    writer.close()
    reader = EmbeddedStore(tmp_path)
    reader.search("c", vecs[:1], 1)  # loaded, as a server holds it

    def no_rebuild(*_: object) -> None:
        raise AssertionError("the reader rebuilt its index instead of catching up")

    monkeypatch.setattr(reader.faiss_index, "_rebuild", no_rebuild)
    code = (
        "import sys, numpy as np; from lookalike.store import EmbeddedStore, ImageRecord\n"
        "s = EmbeddedStore(sys.argv[1]); r = np.random.default_rng(7)\n"
        "v = r.normal(size=(6, 16)).astype(np.float32); v /= np.linalg.norm(v, axis=1, keepdims=True)\n"
        "s.upsert('c', [ImageRecord(path=f'/other/{i}.jpg') for i in range(4)], v[:4])\n"
        f"s.remove('c', [{ids[0]}, {ids[1]}])\n"
        "s.upsert('c', [ImageRecord(path='/img/5.jpg')], v[4:5])\n"
        f"s.set_augmented('c', [{ids[7]}], v[5:6], [[({ids[7]}, 1.0)]])\n"
        "s.close()\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120)
    queries = np.concatenate([vecs, unit(6, seed=7)])
    _, found = reader.search("c", queries, 4)
    assert reader.index_for("c").ntotal == reader.count("c") == 42
    assert (found == exact_top(reader, "c", queries, 4)).all()
    assert not {ids[0], ids[1]} & set(found.ravel().tolist())


def test_a_long_log_is_folded_into_a_new_file_and_an_older_reader_still_catches_up(
        store: EmbeddedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from lookalike.store import faiss_index

    monkeypatch.setattr(faiss_index, "LOG_LIMIT_MIN", 5)
    writer = store
    vecs = unit(80)
    ids = writer.upsert("c", records(40), vecs[:40])
    writer.flush()
    reader = EmbeddedStore(tmp_path)
    reader.search("c", vecs[:1], 1)
    first = index_files(tmp_path)
    writer.upsert("c", records(3, "/few"), vecs[40:43])
    writer.flush()
    assert index_files(tmp_path) == first  # 3 logged rows: under the limit
    writer.upsert("c", records(37, "/many"), vecs[43:80])
    writer.remove("c", ids[:5])
    writer.flush()
    second = index_files(tmp_path)
    assert len(second) == 1 and second != first  # a new file replaced the old one
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM index_log").fetchone()[0] == 0  # folded into the file
    _, found = reader.search("c", vecs, 3)  # its generation is older than the pruned log
    assert reader.index_for("c").ntotal == 75
    assert (found == exact_top(reader, "c", vecs, 3)).all()


def test_a_recreated_namesake_never_reuses_the_dropped_collections_index(
        store: EmbeddedStore, tmp_path: Path) -> None:
    writer = store
    old = unit(10)
    writer.upsert("c", records(10), old)
    reader = EmbeddedStore(tmp_path)
    reader.search("c", old[:1], 1)
    writer.drop_collection("c")
    writer.create_collection("c", "m", 16)
    new = unit(10, seed=4)
    new_ids = writer.upsert("c", records(10, "/new"), new)  # the same generation number as before
    writer.close()
    _, found = reader.search("c", new, 1)
    assert found[:, 0].tolist() == new_ids


def test_hnsw_indexes_are_written_out_rather_than_replayed(tmp_path: Path) -> None:
    s = EmbeddedStore(tmp_path)
    s.create_collection("g", "m", 16, index_spec="HNSW16")
    vecs = unit(30)
    s.upsert("g", records(30), vecs)
    s.flush()
    first = index_files(tmp_path)
    ids = s.upsert("g", records(2, "/more"), unit(2, seed=3))
    s.flush()
    s.close()
    assert index_files(tmp_path) != first  # HNSW can't remove entries, so no log replay for it
    _, found = EmbeddedStore(tmp_path).search("g", unit(2, seed=3), 1)
    assert found[:, 0].tolist() == ids


def test_a_library_from_before_the_log_rebuilds_a_stale_index_file(tmp_path: Path) -> None:
    """Schema 3 had no log: its stale index files must be rebuilt, never 'caught up' with nothing."""
    import json
    import sqlite3

    import faiss

    from lookalike.store.catalogue import MIGRATIONS

    db = sqlite3.connect(tmp_path / "catalog.sqlite")
    for script in MIGRATIONS[:3]:
        db.executescript(script)
    db.execute("PRAGMA user_version=3")
    db.execute("INSERT INTO collections(name, model, dim, created, generation) VALUES ('c', 'm', 16, 1.0, 7)")
    vecs = unit(5)
    for i, v in enumerate(vecs):
        db.execute("INSERT INTO images(collection, path, vector, added) VALUES ('c', ?, ?, 0)",
                   (f"/img/{i}.jpg", v.tobytes()))
    db.commit()
    db.close()
    stale = faiss.IndexIDMap2(faiss.IndexFlatIP(16))  # generation 5: two writes behind, other vectors
    stale.add_with_ids(unit(3, seed=9), np.arange(1, 4, dtype=np.int64))
    (tmp_path / "indexes").mkdir()
    faiss.write_index(stale, str(tmp_path / "indexes" / "c.5.faiss"))
    (tmp_path / "indexes" / "c.5.json").write_text(json.dumps({"index_type": "Flat", "generation": 5}))
    s = EmbeddedStore(tmp_path)
    _, found = s.search("c", vecs, 1)
    assert found[:, 0].tolist() == [1, 2, 3, 4, 5]
    assert s.index_for("c").ntotal == 5


def test_a_write_by_a_lookalike_from_before_the_log_is_never_missed(tmp_path: Path) -> None:
    """A process of an older version, still running after the library was migrated, writes without logging."""
    import sqlite3

    s = EmbeddedStore(tmp_path)
    s.create_collection("c", "m", 16)
    vecs = unit(11)
    s.upsert("c", records(10), vecs[:10])
    s.close()
    reader = EmbeddedStore(tmp_path)
    reader.search("c", vecs[:1], 1)
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:  # what schema-3 lookalike does on upsert
        db.execute("INSERT INTO images(collection, path, vector, added) VALUES ('c', '/old.jpg', ?, 0)",
                   (vecs[10].tobytes(),))
        db.execute("UPDATE collections SET generation=generation+1 WHERE name='c'")
    assert reader.search("c", vecs[10:], 1)[1][0, 0] == 11
    writer = EmbeddedStore(tmp_path)  # a later logged write must not hide the gap either
    writer.upsert("c", records(1, "/new"), unit(1, seed=8))
    writer.close()
    fresh = EmbeddedStore(tmp_path)
    assert fresh.index_for("c").ntotal == 12
    assert fresh.search("c", vecs[10:], 1)[1][0, 0] == 11


def test_a_writer_that_never_loads_the_index_still_switches_to_ivf(tmp_path: Path) -> None:
    first = EmbeddedStore(tmp_path, exact_below=100)
    first.create_collection("c", "m", 16)
    first.upsert("c", records(95), unit(95))
    first.close()
    adder = EmbeddedStore(tmp_path, exact_below=100)  # as `lookalike add` or an ingest without refinement
    adder.upsert("c", records(300, "/more"), unit(300, seed=2))
    adder.close()
    assert EmbeddedStore(tmp_path, exact_below=100).collection("c").index_type.startswith("IVF")


def test_rewriting_the_same_rows_keeps_the_log_short(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from lookalike.store import faiss_index

    monkeypatch.setattr(faiss_index, "LOG_LIMIT_MIN", 50)
    s = EmbeddedStore(tmp_path)
    s.create_collection("c", "m", 16)
    ids = s.upsert("c", records(20), unit(20))
    s.flush()
    for round_ in range(30):  # e.g. refinement passes over a small collection: the same 20 ids again and again
        s.set_augmented("c", ids, unit(20, seed=round_), [[(i, 1.0)] for i in ids])
        s.flush()
    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM index_log").fetchone()[0] <= 50
    assert (EmbeddedStore(tmp_path).search("c", unit(20, seed=29), 1)[1][:, 0] == ids).all()
