"""Refinement (DBA at index time, alpha-QE at query time) on real photos: the incremental updates must
equal a from-scratch computation after every kind of change, and search must rank by the expanded query."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike import Library, refine
from lookalike.refine import RefineParams
from lookalike.store import EmbeddedStore, ImageRecord

from .conftest import FLOWERS, copy_photos, ukbench_images

MODEL = "mobilenet-v3-small"  # the fastest real model: these tests are about the bookkeeping


def from_scratch(lib: Library | EmbeddedStore, collection: str, k: int = 4, power: float = 3.0
                 ) -> dict[int, np.ndarray]:
    """Independent reference: brute-force top-k over every stored vector, weights cos^power."""
    ids, raw = (lib.store if isinstance(lib, Library) else lib).all_vectors(collection)
    sims = raw @ raw.T
    out: dict[int, np.ndarray] = {}
    for row, image_id in enumerate(ids):
        order = np.argsort(-sims[row], kind="stable")[:k]
        d = (np.clip(sims[row, order], 0, None) ** power) @ raw[order]
        out[int(image_id)] = d / np.linalg.norm(d)
    return out


def assert_matches_scratch(lib: Library | EmbeddedStore, collection: str) -> None:
    store = lib.store if isinstance(lib, Library) else lib
    assert store.pending(collection) == []
    expected = from_scratch(store, collection)
    ids = sorted(expected)
    got = store.index_vectors(collection, ids)
    cos = np.einsum("ij,ij->i", got, np.stack([expected[i] for i in ids]))
    assert cos.min() > 1 - 1e-5, f"{int((cos < 1 - 1e-5).sum())} rows differ from a full recomputation"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return copy_photos(tmp_path / "photos", 80)


@pytest.mark.parametrize("bulk", [False, True], ids=["per-row", "bulk"])
def test_incremental_dba_equals_full_recompute_after_add_replace_remove(
        home: Path, photos: Path, bulk: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if bulk:  # the in-memory pass for many pending rows (first index, re-index of many files), for every step
        monkeypatch.setattr(refine, "BULK_MIN", 2)
        monkeypatch.setattr(refine, "BULK_MIN_FRACTION", 0.0)
    with Library.open(home) as lib:
        later = sorted(photos.glob("*.jpg"))[60:]
        hold = photos.parent / "later"
        hold.mkdir()
        for p in later:
            shutil.move(p, hold / p.name)
        steps: list[tuple[int, int]] = []
        lib.index([photos], "c", model=MODEL, refine_progress=lambda done, total: steps.append((done, total)))
        assert steps and steps[-1] == (60, 60)
        assert lib.info("c").settings["refine"]["dba_k"] == 4
        assert_matches_scratch(lib, "c")

        for p in hold.iterdir():  # add 20 more pictures
            shutil.move(p, photos / p.name)
        lib.index([photos], "c")
        assert lib.info("c").count == 80
        assert_matches_scratch(lib, "c")

        # replace one picture's content under the same name (its neighbours must follow)
        files = sorted(photos.glob("*.jpg"))
        shutil.copy(files[70], files[3])
        report = lib.index([photos], "c")
        assert report.updated == 1
        assert_matches_scratch(lib, "c")

        lib.remove([str(files[10]), str(files[11]), str(files[40])], "c")
        assert lib.info("c").count == 77
        assert_matches_scratch(lib, "c")

        lib.add_image(ukbench_images(1, start=200)[0].read_bytes(), "c", name="upload-1")
        assert_matches_scratch(lib, "c")


def test_rows_left_pending_by_a_killed_run_are_refined_by_the_next(home: Path, photos: Path) -> None:
    with Library.open(home) as lib:
        lib.index([photos], "c", model=MODEL)
        ids = lib.store.find_ids("c")[:30]
        records, raw = lib.store.get("c", ids), lib.store.vectors("c", ids)
        lib.store.remove("c", ids)
        lib.store.upsert("c", [r for r in records], raw)  # what a run killed before refining leaves
        assert len(lib.store.pending("c")) >= 30
        report = lib.index([photos], "c")
        assert report.embedded == 0
        assert_matches_scratch(lib, "c")


def test_search_ranks_by_the_expanded_query(home: Path, photos: Path) -> None:
    with Library.open(home) as lib:
        lib.index([photos], "c", model=MODEL)
        params = RefineParams.of(lib.info("c"))
        query = ukbench_images(1, start=5)[0]
        q = lib.query_vector(query, collection="c")
        ids, index_vectors = lib.store.all_vectors("c", augmented=True)
        first = index_vectors @ q
        top = np.argsort(-first)[:params.qe_k]
        expanded = q + (np.clip(first[top], 0, None) ** params.qe_alpha) @ index_vectors[top]
        expanded /= np.linalg.norm(expanded)
        final = index_vectors @ expanded
        want = [int(ids[i]) for i in np.argsort(-final)[:10]]
        hits = lib.search(query, k=10, collection="c")
        assert [h.id for h in hits] == want
        assert np.allclose([h.score for h in hits], np.sort(final)[::-1][:10], atol=1e-5)
        plain = lib.search(query, k=10, collection="c", expand=False)
        assert np.allclose([h.score for h in plain], np.sort(first)[::-1][:10], atol=1e-5)


def test_refinement_can_be_turned_off_and_on(home: Path, photos: Path) -> None:
    with Library.open(home) as lib:
        lib.index([photos], "c", model=MODEL)
        assert lib.set_refinement("c", off=True) == RefineParams(dba_k=0, qe_k=0)
        ids, raw = lib.store.all_vectors("c")
        assert np.array_equal(lib.store.index_vectors("c", list(ids)), raw)
        query = ukbench_images(1, start=9)[0]
        scores = [h.score for h in lib.search(query, k=5, collection="c")]
        assert np.allclose(scores, np.sort(raw @ lib.query_vector(query, collection="c"))[::-1][:5], atol=1e-5)
        lib.set_refinement("c", dba_k=4, qe_k=5)
        assert_matches_scratch(lib, "c")


@pytest.mark.slow
def test_refinement_beats_plain_search_on_flowers(home: Path, figures: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """No labels are used: the gain is measured against the class folders only after the fact."""
    with Library.open(home) as lib:
        lib.index([FLOWERS], "fl")
        paths = sorted(FLOWERS.glob("*/*.jpg"))[::4]

        # the bulk pass with candidates from a PCA-256 projection (as above 4000 images), and from an
        # inverted file over it (above 50k), against the exact per-row path that indexed these
        ids = lib.store.find_ids("fl")
        per_row = lib.store.index_vectors("fl", ids)
        monkeypatch.setattr(refine, "BULK_MIN", 1)
        monkeypatch.setattr(refine, "EXACT_ALL_PAIRS", 0)
        assert refine._candidates(lib.store.all_vectors("fl")[1], 4, None) is not None  # the projection is used
        for approximate_above, floor in ((0, 0.97), (10**9, 0.999)):  # the exact-enough one last
            monkeypatch.setattr(refine, "APPROXIMATE_ABOVE", approximate_above)
            lib.set_refinement("fl")
            agree = np.einsum("ij,ij->i", per_row, lib.store.index_vectors("fl", ids)) > 1 - 1e-5
            kind = "PCA-256" if approximate_above else "PCA-256 inverted file"
            figures[f"bulk DBA, {kind} candidates: rows equal to the exact per-row path"] = f"{agree.mean():.4f}"
            assert agree.mean() >= floor

        def map_at_10(expand: bool) -> float:
            aps = []
            for path in paths:
                hits = [h for h in lib.search(path, k=11, collection="fl", expand=expand) if h.path != str(path)]
                found, ap = 0, 0.0
                for rank, hit in enumerate(hits[:10], 1):
                    if Path(hit.path).parent.name == path.parent.name:
                        found += 1
                        ap += found / rank
                aps.append(ap / 10)
            return float(np.mean(aps))

        refined = map_at_10(True)
        lib.set_refinement("fl", off=True)
        plain = map_at_10(False)
        figures["tf_flowers mAP@10 (250 queries, default model): plain / refined"] = f"{plain:.3f} / {refined:.3f}"
        assert refined > plain + 0.01
        assert refined >= 0.78


def test_a_write_by_another_process_during_refresh_is_not_lost(home: Path, photos: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    with Library.open(home) as lib:
        lib.index([photos], "c", model=MODEL)
        files = sorted(photos.glob("*.jpg"))
        lib.remove([str(files[2])], "c")  # leaves rows pending, refreshed below with a concurrent write
        ids = lib.store.find_ids("c")[:5]
        records, raw = lib.store.get("c", ids), lib.store.vectors("c", ids)
        lib.store.remove("c", ids)
        ids = lib.store.upsert("c", records, raw)
        original = lib.store.set_augmented
        calls = []

        def meddling(*args, **kwargs):  # another writer removes a picture between compute and write
            if not calls:
                with Library.open(home) as other:
                    other.store.remove("c", [ids[0]])
            calls.append(1)
            return original(*args, **kwargs)

        monkeypatch.setattr(lib.store, "set_augmented", meddling)
        from lookalike import refine as refine_module

        refine_module.refresh(lib.store, "c")
        assert len(calls) >= 2, "the stale write was refused and redone"
        assert ids[0] not in lib.store.find_ids("c")
        assert_matches_scratch(lib, "c")


def test_bulk_refinement_falls_back_to_the_index_where_a_projection_would_miss_neighbours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Vectors of high intrinsic dimension (1000 unrelated directions in 768-d) lose their neighbours in
    a 256-d PCA projection: the sampled self-check must notice and the result must still be exact."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, 768))
    x = centres[rng.integers(0, 1000, 3000)] + 0.6 * rng.normal(size=(3000, 768))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    monkeypatch.setattr(refine, "EXACT_ALL_PAIRS", 0)
    monkeypatch.setattr(refine, "BULK_MIN", 1)
    assert refine._candidates(x, 4, None) is None
    store = EmbeddedStore(tmp_path)
    store.create_collection("s", "synthetic", 768, settings=RefineParams().to_settings())
    store.upsert("s", [ImageRecord(path=f"/s/{i}.jpg") for i in range(len(x))], x)
    assert refine.refresh(store, "s") == 3000
    assert_matches_scratch(store, "s")


def grouped(groups: int, size: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, dim))
    x = centres[np.repeat(np.arange(groups), size)] + 0.5 * rng.normal(size=(groups * size, dim))
    return rng.permutation((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))


def rows_off_scratch(store: EmbeddedStore, collection: str) -> int:
    expected = from_scratch(store, collection)
    ids = sorted(expected)
    got = store.index_vectors(collection, ids)
    return int((np.einsum("ij,ij->i", got, np.stack([expected[i] for i in ids])) < 1 - 1e-5).sum())


def test_bulk_pass_offers_new_rows_to_stored_rows_at_least_as_the_per_row_path_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups larger than the candidate depth: the index holds stored rows' augmented vectors, which
    outrank new rows' plain ones, so offers must also come from the new rows' side."""
    x = grouped(60, 50, 128)
    monkeypatch.setattr(refine, "BULK_MIN_FRACTION", 0.0)
    off = {}
    for bulk in (False, True):
        store = EmbeddedStore(tmp_path / str(bulk))
        store.create_collection("s", "synthetic", 128, settings=RefineParams().to_settings())
        store.upsert("s", [ImageRecord(path=f"/s/{i}.jpg") for i in range(2400)], x[:2400])
        monkeypatch.setattr(refine, "BULK_MIN", 10**9)
        refine.refresh(store, "s")
        store.upsert("s", [ImageRecord(path=f"/n/{i}.jpg") for i in range(600)], x[2400:])
        monkeypatch.setattr(refine, "BULK_MIN", 1 if bulk else 10**9)
        monkeypatch.setattr(refine, "_candidates", lambda *_: None)  # candidates from the index, as per-row
        assert refine.refresh(store, "s") == 600
        monkeypatch.undo()
        monkeypatch.setattr(refine, "BULK_MIN_FRACTION", 0.0)
        off[bulk] = rows_off_scratch(store, "s")
    assert off[True] <= off[False]


def test_a_bulk_pass_interrupted_by_another_writer_loses_no_update(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = grouped(90, 30, 64, seed=1)
    store = EmbeddedStore(tmp_path)
    store.create_collection("s", "synthetic", 64, settings=RefineParams().to_settings())
    store.upsert("s", [ImageRecord(path=f"/s/{i}.jpg") for i in range(1200)], x[:1200])
    refine.refresh(store, "s")
    store.upsert("s", [ImageRecord(path=f"/n/{i}.jpg") for i in range(1499)], x[1200:2699])
    monkeypatch.setattr(refine, "BULK_MIN", 1)
    monkeypatch.setattr(refine, "CHUNK", 256)
    other = EmbeddedStore(tmp_path)
    real = store.set_augmented
    calls = []

    def interrupted(*args: object, **kwargs: object) -> int:
        calls.append(1)
        if len(calls) == 3:  # another process adds a picture between two of this pass's writes
            other.upsert("s", [ImageRecord(path="/late.jpg")], x[2699:2700])
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "set_augmented", interrupted)
    refine.refresh(store, "s")
    refine.refresh(store, "s")  # the late row itself, as the other writer's own refresh would
    assert store.count("s") == 2700
    assert_matches_scratch(store, "s")
