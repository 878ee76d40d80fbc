"""`LSH<bits>` collections: binary codes searched by Hamming distance, the shortlist re-ranked by exact cosine
from the stored vectors. Real features: the UKBench-1000 vectors of the default model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike import Library
from lookalike.errors import LookalikeError
from lookalike.store import EmbeddedStore, Filter, ImageRecord, faiss_index
from lookalike.store.faiss_index import LshCodes

from ..conftest import cli_env


@pytest.fixture(scope="module")
def features(ukbench_library: Library) -> np.ndarray:
    """The plain (model) vectors of UKBench-1000: 250 objects x 4 views."""
    _, vecs = ukbench_library.store.all_vectors("uk")
    return vecs


def records(n: int) -> list[ImageRecord]:
    return [ImageRecord(path=f"/uk/{i:05d}.jpg", group_id="even" if i % 2 == 0 else "odd") for i in range(n)]


def lsh_store(home: Path, vecs: np.ndarray, spec: str = "LSH256") -> tuple[EmbeddedStore, list[int]]:
    store = EmbeddedStore(home)
    store.create_collection("c", "m", vecs.shape[1], index_spec=spec)
    ids = store.upsert("c", records(len(vecs)), vecs)
    return store, ids


def exact_top(vecs: np.ndarray, queries: np.ndarray, k: int, ids: list[int]) -> np.ndarray:
    order = np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :k]
    return np.asarray(ids)[order]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def test_lsh_recall_against_exact_is_high_and_scores_are_cosines(tmp_path: Path, features: np.ndarray,
                                                                 figures: dict[str, str]) -> None:
    store, ids = lsh_store(tmp_path, features)
    assert store.collection("c").index_type == "LSH256"
    assert isinstance(store.index_for("c"), LshCodes)
    queries = features[::5]
    scores, found = store.search("c", queries, 10)
    rate = recall(found, exact_top(features, queries, 10, ids))
    figures["LSH256+rerank recall@10 (UKBench-1000, 200 queries)"] = f"{rate:.3f}"
    assert rate >= 0.9
    by_id = dict(zip(ids, features, strict=True))
    expected = np.array([[by_id[int(i)] @ q for i in row] for row, q in zip(found, queries, strict=True)])
    assert np.allclose(scores, expected, atol=1e-5)  # exact cosines, not Hamming fractions
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # the codes alone (no re-rank) rank far worse: the re-rank is what makes the shortlist exact
    _, shortlist = store.index_for("c").search(queries, 10)
    assert recall(shortlist, exact_top(features, queries, 10, ids)) < rate


def test_lsh_honours_filters_removals_and_replacements(tmp_path: Path, features: np.ndarray,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store, ids = lsh_store(tmp_path, features)
    queries = features[:40]
    for limit in (faiss_index.EXACT_FILTER_LIMIT, 0):  # the exact path for narrow filters, then the selector
        monkeypatch.setattr(faiss_index, "EXACT_FILTER_LIMIT", limit)
        _, found = store.search("c", queries, 10, Filter(group_id="odd"))
        odd = set(ids[1::2])
        assert set(found.ravel().tolist()) <= odd
        truth = exact_top(features[1::2], queries, 10, ids[1::2])
        assert recall(found, truth) >= 0.95
    index = store.index_for("c")
    store.remove("c", ids[:20])
    _, found = store.search("c", features[:20], 5)
    assert not set(ids[:20]) & set(found.ravel().tolist())
    # replace row 500's vector by the negation of row 30's: the query -features[30] now finds row 500 first
    store.upsert("c", [records(len(features))[500]], -features[30:31])
    assert store.index_for("c") is index  # updated in place, not rebuilt
    scores, found = store.search("c", -features[30:31], 3)
    assert found[0, 0] == ids[500] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_lsh_index_is_saved_loaded_and_caught_up_from_the_log(tmp_path: Path, features: np.ndarray) -> None:
    store, ids = lsh_store(tmp_path, features)
    store.flush()
    saved = list((tmp_path / "indexes").glob("c.*.faiss"))
    assert len(saved) == 1
    assert saved[0].stat().st_size < len(features) * (256 // 8 + 8) * 1.2 + 4 * 2304 * 256  # codes + rotation
    before = store.search("c", features[:50], 10)
    other = EmbeddedStore(tmp_path)  # another process's view: reads the file
    after = other.search("c", features[:50], 10)
    assert isinstance(other.index_for("c"), LshCodes)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    # a write through the first store reaches the second through the index log, without a rebuild
    loaded = other.index_for("c")
    store.remove("c", ids[100:110])
    store.upsert("c", [records(len(features))[200]], -features[7:8])
    _, found = other.search("c", features[100:110], 5)
    assert not set(ids[100:110]) & set(found.ravel().tolist())
    _, found = other.search("c", -features[7:8], 1)
    assert found[0, 0] == ids[200] and other.index_for("c") is loaded


def test_lsh_searches_the_refined_vectors(tmp_path: Path, features: np.ndarray) -> None:
    """Refinement (DBA) stores augmented vectors; the codes and the re-rank both use them."""
    store, ids = lsh_store(tmp_path, features)
    augmented = features[:10] + features[10:20]
    augmented /= np.linalg.norm(augmented, axis=1, keepdims=True)
    store.set_augmented("c", ids[:10], augmented, [[(ids[10 + n], 0.5)] for n in range(10)])
    scores, found = store.search("c", augmented, 1)
    assert found[:, 0].tolist() == ids[:10]
    assert np.allclose(scores[:, 0], 1.0, atol=1e-5)


def test_a_small_lsh_collection_is_exact_until_it_can_learn_its_codes(tmp_path: Path, features: np.ndarray) -> None:
    store = EmbeddedStore(tmp_path)
    store.create_collection("c", "m", features.shape[1], index_spec="LSH256")
    ids = store.upsert("c", records(300), features[:300])
    assert store.collection("c").index_type == "Flat (until 1000 vectors for LSH256)"
    store.upsert("c", records(len(features))[300:], features[300:])
    store.flush()  # crossing the threshold retypes the index
    assert store.collection("c").index_type == "LSH256"
    _, found = store.search("c", features[:5], 1)
    assert found[:, 0].tolist() == ids[:5]


def test_bad_lsh_specs_are_refused_in_one_line(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    with pytest.raises(LookalikeError, match="multiple of 8"):
        store.create_collection("c", "m", 64, index_spec="LSH12")
    with pytest.raises(LookalikeError, match="hamming"):
        store.create_collection("h", "phash", 64, metric="hamming", index_spec="LSH64")


def test_cli_creates_an_lsh_collection(home: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "lookalike.cli", "collections", "create", "small",
                           "--index-spec", "LSH256", "--json"], env=cli_env(home), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"index_spec": "LSH256"' in done.stdout
    bad = subprocess.run([sys.executable, "-m", "lookalike.cli", "collections", "create", "bad",
                          "--index-spec", "LSH100"], env=cli_env(home), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "multiple of 8" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
