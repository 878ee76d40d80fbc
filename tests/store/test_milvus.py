"""What only the Milvus store has: index types by size, Milvus Lite's one-process limit, `migrate` between
stores (killed and resumed), and the same search results as the embedded store on real photos."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lookalike import Library, refine
from lookalike.errors import LookalikeError
from lookalike.store import EmbeddedStore, Filter, Store, open_store
from lookalike.store.milvus import MilvusStore

from ..conftest import copy_photos
from .test_backends import clustered, records

SRC = str(Path(__file__).resolve().parents[2] / "src")


def cli(home: Path, *args: str, store: str | None = None, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "LOOKALIKE_HOME": str(home), "PYTHONPATH": SRC}
    env.pop("LOOKALIKE_STORE", None)
    if store:
        env["LOOKALIKE_STORE"] = store
    return subprocess.Popen([sys.executable, "-m", "lookalike.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusStore]:
    folder = tmp_path_factory.mktemp("lite")
    store = open_store(folder, f"milvus:{folder}/lite.db", exact_below=200)
    assert isinstance(store, MilvusStore)
    yield store
    store.close()


def test_index_types_follow_the_spec_and_the_size(lite: MilvusStore, monkeypatch: pytest.MonkeyPatch) -> None:
    lite.create_collection("sq8", "m", 16, index_spec="IVF16,SQ8")
    assert lite.collection("sq8").index_type.startswith("Milvus Lite IVF_SQ8")
    lite.create_collection("hnsw", "m", 16, index_spec="HNSW16")
    assert "HNSW" in lite.collection("hnsw").index_type
    with pytest.raises(LookalikeError, match="Milvus Lite can't build IVF_PQ"):
        lite.create_collection("pq", "m", 16, index_spec="IVF16,PQ8")
    with pytest.raises(LookalikeError, match="can't build DISKANN"):
        lite.create_collection("disk", "m", 16, index_spec="DISKANN")
    with pytest.raises(LookalikeError, match="no Milvus equivalent"):
        lite.create_collection("pca", "m", 16, index_spec="PCA8,Flat")
    lite.create_collection("grows", "m", 16)
    vecs = clustered(300)
    ids = lite.upsert("grows", records(300), vecs)
    assert "FLAT" in lite.collection("grows").index_type
    lite.flush()  # past exact_below (200): an inverted file, as the embedded store switches to IVF
    assert "IVF_FLAT" in lite.collection("grows").index_type
    _, found = lite.search("grows", vecs[:50], 1)
    assert np.mean(found[:, 0] == np.asarray(ids[:50])) >= 0.9
    rebuilt: list[object] = []
    monkeypatch.setattr(lite, "reindex", lambda *args: rebuilt.append(args))
    lite.upsert("grows", records(1, "/one-more"), clustered(1, seed=3))
    lite.flush()
    assert rebuilt == []  # a small write keeps the inverted file


@pytest.mark.slow
def test_a_second_process_gets_one_clear_line(lite: MilvusStore) -> None:
    lite.create_collection("held", "m", 16)
    proc = cli(Path(lite.uri).parent, "--store", f"milvus:{lite.uri}", "info", "--json")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "open in another process" in lines[0] and "one process per database" in lines[0]


@pytest.mark.slow
def test_the_store_is_chosen_by_flag_environment_or_file_and_closing_frees_lite(tmp_path: Path) -> None:
    db = f"milvus:{tmp_path}/pick.db"
    store = open_store(tmp_path, db)
    store.create_collection("picked", "m", 16)
    store.close()  # releases Milvus Lite's lock: other processes may open the database now
    home = tmp_path / "home"

    def names(*args: str, store: str | None = None) -> list[str]:
        out, err = cli(home, *args, "collections", "list", "--json", store=store).communicate(timeout=120)
        assert not err.strip().startswith("error"), err
        return [c["name"] for c in json.loads(out)["collections"]]
    assert names(store=db) == ["picked"]
    assert names("--store", "embedded", store=db) == []  # the flag wins over the environment
    home.mkdir(exist_ok=True)
    (home / "lookalike.toml").write_text(f'store = "{db}"\n')
    assert names() == ["picked"]
    proc = cli(home, "--store", "nosuch:x", "info")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.strip().splitlines()[-1].startswith("error: unknown store 'nosuch:x'")


def _source(home: Path, rows: int) -> list[int]:
    """An embedded collection 'c' of clustered vectors with DBA computed (refinement state to copy)."""
    store = EmbeddedStore(home)
    store.create_collection("c", "m", 16, settings=refine.RefineParams().to_settings())
    ids = store.upsert("c", records(rows), clustered(rows))
    refine.refresh(store, "c")
    store.upsert("c", records(3, "/late"), clustered(3, seed=4))  # pending rows travel as pending
    store.close()
    return ids


def _same(a: Store, b: Store, name: str) -> None:
    ids = a.find_ids(name)
    assert b.find_ids(name) == ids and b.count(name) == len(ids)
    assert [r.to_dict() for r in a.get(name, ids)] == [r.to_dict() for r in b.get(name, ids)]
    assert np.array_equal(a.vectors(name, ids), b.vectors(name, ids))
    assert np.array_equal(a.index_vectors(name, ids), b.index_vectors(name, ids))
    assert a.pending(name) == b.pending(name) and len(a.pending(name)) == 3
    assert a.neighbour_lists(name, ids) == b.neighbour_lists(name, ids)
    assert a.collection_settings(name) == b.collection_settings(name)
    queries = a.vectors(name, ids[::7])
    assert np.array_equal(a.search(name, queries, 4)[1], b.search(name, queries, 4)[1])


@pytest.mark.slow
def test_migrate_killed_midway_resumes_and_verifies(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _source(home, 600)
    target = f"milvus:{tmp_path}/moved.db"
    proc = cli(home, "migrate", "c", "--to", target, "--batch", "5")
    done = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("migrate c: "):
            done = int(line.split()[2].split("/")[0])
            if done >= 100:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and 100 <= done < 603
    again = cli(home, "migrate", "c", "--to", target, "--batch", "50", "--json")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    report = json.loads(out)
    assert report["count"] == 603 and report["already_there"] >= done
    assert report["copied"] + report["already_there"] == 603 and report["verified"] == 200
    source, moved = EmbeddedStore(home), open_store(tmp_path, target)
    try:
        _same(source, moved, "c")
        moved.upsert("c", records(1, "/new"), clustered(1, seed=9))  # ids go on after the copied ones
        assert max(moved.find_ids("c")) > max(source.find_ids("c"))
    finally:
        moved.close()
        source.close()


def test_migrate_back_to_embedded_and_refusals(tmp_path: Path, lite: MilvusStore) -> None:
    home = tmp_path / "home"
    _source(home, 40)
    with Library(home) as lib:
        report = lib.migrate("c", f"milvus:{lite.uri}")  # the module's open store: same process, same server
        assert report.copied == 43 and report.verified == 43
        with pytest.raises(LookalikeError, match="is the store the collection is in"):
            lib.migrate("c", "embedded")
    back = tmp_path / "back"
    with Library(back) as lib:
        assert lib.migrate("c", "embedded", source=f"milvus:{lite.uri}").copied == 43
        _same(lite, lib.store, "c")


@pytest.fixture(scope="module")
def photo_libraries(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[tuple[Library, Library]]:
    """The same 24 UKBench photos (6 objects) indexed through Library into each store, DBA and QE on."""
    root = tmp_path_factory.mktemp("photos")
    photos = copy_photos(root / "photos", 24)
    libraries = []
    for name in ("embedded", "milvus"):
        home = root / name
        home.mkdir()
        (home / "models").symlink_to(model_cache, target_is_directory=True)
        store = open_store(home, "embedded" if name == "embedded" else f"milvus:{home}/m.db")
        lib = Library(home, store=store)
        lib.index([photos], "uk")
        libraries.append(lib)
    yield libraries[0], libraries[1]
    for lib in libraries:
        lib.close()


@pytest.mark.slow
def test_search_on_real_photos_is_the_same_on_both_stores(photo_libraries: tuple[Library, Library]) -> None:
    embedded, milvus = photo_libraries
    info = milvus.info("uk")
    assert info.count == 24 and info.settings.get("refine", {}).get("dba_k") == 4
    assert milvus.store.pending("uk") == []  # DBA ran on Milvus too
    photos = sorted(Path(r.path) for r in embedded.store.get("uk", embedded.store.find_ids("uk")))
    correct = 0
    for photo in photos:
        a = embedded.search(photo, k=4, collection="uk")
        b = milvus.search(photo, k=4, collection="uk")
        assert [h.path for h in a] == [h.path for h in b]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
        correct += sum(int(Path(h.path).stem[7:]) // 4 == int(photo.stem[7:]) // 4 for h in b)
    assert correct / len(photos) >= 3.5  # UKBench N-S: the refinement works on Milvus
    prefix = str(photos[0].parent / "ukbench0000")
    flt = Filter(path_prefix=prefix)
    a = embedded.search(photos[5], k=4, collection="uk", flt=flt)
    b = milvus.search(photos[5], k=4, collection="uk", flt=flt)
    assert [h.path for h in a] == [h.path for h in b] and all(h.path.startswith(prefix) for h in b)
    assert milvus.remove([str(photos[0])], "uk") == 1 and milvus.info("uk").count == 23
    assert milvus.store.pending("uk") == []  # the rows that listed it were refined again
    assert str(photos[0]) not in [h.path for h in milvus.search(photos[1], k=4, collection="uk")]
