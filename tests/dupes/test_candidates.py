"""candidates.py: the all-pairs candidate index (full vectors, PCA-reduced, IVF) keeps the copies."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.dupes.candidates import CandidateParams, candidate_pairs, learn_projection

DIM = 96


def embedding_like(n: int, seed: int) -> np.ndarray:
    """Clustered unit vectors whose variance decays along the axes, as real embeddings' does."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, DIM + 1, dtype=np.float32) ** -0.55
    centres = rng.normal(size=(n // 10, DIM)).astype(np.float32) * scale
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32) * scale
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def collection() -> dict:
    """600 rows, each with a view vector; rows 500-539 are copies of rows 0-39 (as they are), rows
    540-579 copies of the views of rows 40-79 (turned sideways: only the view finds them)."""
    rng = np.random.default_rng(7)
    vecs, views = embedding_like(600, 1), embedding_like(600, 2)
    vecs[500:540] = vecs[0:40] + 0.01 * rng.normal(size=(40, DIM))
    vecs[540:580] = views[40:80] + 0.01 * rng.normal(size=(40, DIM))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = list(range(10, 610))  # ids are not row positions
    planted = {(10 + i, 510 + i) for i in range(40)} | {(50 + i, 550 + i) for i in range(40)}
    return {"ids": ids, "vecs": vecs, "views": views, "planted": planted}


def run(c: dict, **overrides: int) -> tuple[set[tuple[int, int]], dict]:
    params = CandidateParams(depth=10, min_cosine=0.42, near_ranks=3, near_min_cosine=0.3, **overrides)
    seconds: dict[str, float] = {}
    found = candidate_pairs(c["ids"], lambda b: c["vecs"][np.asarray(b) - 10], params,
                            views_of=lambda b: c["views"][np.asarray(b) - 10], seconds=seconds)
    assert np.all(found.a < found.b) and len(set(zip(found.a.tolist(), found.b.tolist(), strict=True))) == len(found)
    return set(zip(found.a.tolist(), found.b.tolist(), strict=True)), {"cands": found, "seconds": seconds}


def test_full_vectors_find_every_planted_copy_with_its_exact_cosine(collection) -> None:
    pairs, info = run(collection)
    assert collection["planted"] <= pairs
    c = info["cands"]
    v, w = collection["vecs"], collection["views"]
    a, b = c.a - 10, c.b - 10
    plain, view_a, view_b = np.sum(v[a] * v[b], 1), np.sum(w[a] * v[b], 1), np.sum(v[a] * w[b], 1)
    # the pair's best cosine where it was found: plain, or one picture's view against the other
    assert np.all(np.min(np.abs(np.stack([plain, view_a, view_b]) - c.cosine), axis=0) < 1e-4)
    assert {"projection", "read", "index", "search"} <= set(info["seconds"])


def test_without_views_the_turned_copies_are_not_found(collection) -> None:
    params = CandidateParams(depth=10, min_cosine=0.42, near_ranks=3, near_min_cosine=0.3)
    found = candidate_pairs(collection["ids"], lambda b: collection["vecs"][np.asarray(b) - 10], params)
    pairs = set(zip(found.a.tolist(), found.b.tolist(), strict=True))
    assert {(10 + i, 510 + i) for i in range(40)} <= pairs
    assert len({(50 + i, 550 + i) for i in range(40)} & pairs) < 5


def test_reduced_and_ivf_indexes_keep_the_copies_and_the_cosines(collection) -> None:
    full, full_info = run(collection)
    reduced, info = run(collection, reduce_above=0, reduced_dim=48)
    assert collection["planted"] <= reduced
    assert len(reduced & full) >= 0.9 * len(full)
    # the uncentred projection keeps inner products: reduced cosines track the full ones
    exact = full_info["cands"].to_dict()
    approx = info["cands"].to_dict()
    diff = np.array([approx[k] - exact[k] for k in approx.keys() & exact.keys()])
    assert np.median(np.abs(diff)) < 0.02 and np.percentile(np.abs(diff), 95) < 0.06
    ivf, _ = run(collection, reduce_above=0, reduced_dim=48, ivf_above=0, nprobe=8)
    assert len(collection["planted"] & ivf) >= 0.97 * len(collection["planted"])


def test_projection_is_orthonormal_and_keeps_the_top_directions() -> None:
    x = embedding_like(400, 3)
    p = learn_projection(list(range(400)), lambda b: x[b], DIM, 16, sample=300)
    assert p.shape == (DIM, 16) and np.allclose(p.T @ p, np.eye(16), atol=1e-4)
    kept = np.linalg.norm(x @ p, axis=1) ** 2
    rand = np.linalg.qr(np.random.default_rng(0).normal(size=(DIM, 16)))[0]
    assert kept.mean() > 2 * (np.linalg.norm(x @ rand, axis=1) ** 2).mean()
