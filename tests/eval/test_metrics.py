"""Metric functions against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from lookalike.eval import metrics as m


def test_average_precision_hand_computed() -> None:
    ranked = ["a", "x", "b", "y", "c"]
    relevant = {"a", "b", "c"}
    # hits at ranks 1, 3, 5: (1/1 + 2/3 + 3/5) / 3
    assert m.average_precision(ranked, relevant) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # AP@3 normalised by min(3, 3): (1 + 2/3) / 3
    assert m.average_precision(ranked, relevant, 3) == pytest.approx((1 + 2 / 3) / 3)
    # AP@2 normalised by min(2, 3) = 2: (1) / 2
    assert m.average_precision(ranked, relevant, 2) == pytest.approx(0.5)


def test_k_larger_than_the_list_counts_missing_as_misses() -> None:
    ranked = ["a", "b"]
    relevant = {"a", "z"}
    assert m.recall_at_k(ranked, relevant, 10) == 0.5
    assert m.precision_at_k(ranked, relevant, 10) == pytest.approx(0.1)
    assert m.average_precision(ranked, relevant, 10) == pytest.approx(1 / 2)
    assert m.hit_rate_at_k(ranked, relevant, 10) == 1.0


def test_empty_relevance_is_undefined_and_skipped_in_means() -> None:
    assert m.recall_at_k(["a"], set(), 1) is None
    assert m.average_precision(["a"], set()) is None
    assert m.ndcg_at_k(["a"], set(), 5) is None
    assert m.reciprocal_rank(["a"], set()) is None
    assert m.mean([None, 1.0, 0.0, None]) == 0.5
    assert m.mean([None]) is None


def test_ties_follow_the_given_order() -> None:
    # two items with equal scores: the caller's order decides; metrics never reorder
    assert m.reciprocal_rank(["x", "a"], {"a"}) == 0.5
    assert m.reciprocal_rank(["a", "x"], {"a"}) == 1.0


def test_ndcg_hand_computed() -> None:
    ranked = ["x", "a", "y", "b"]
    relevant = {"a", "b"}
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3)
    assert m.ndcg_at_k(ranked, relevant, 4) == pytest.approx(dcg / ideal)
    assert m.ndcg_at_k(["a", "b"], relevant, 10) == pytest.approx(1.0)


def test_mrr_and_miss() -> None:
    assert m.reciprocal_rank(["x", "y", "a"], {"a"}) == pytest.approx(1 / 3)
    assert m.reciprocal_rank(["x"], {"a"}) == 0.0


def test_ns_score_counts_group_members_in_top_four() -> None:
    group = {"q", "g1", "g2", "g3"}
    assert m.ns_score(["q", "g1", "x", "g2", "g3"], group) == 3.0
    assert m.ns_score(["q", "g1", "g2", "g3"], group) == 4.0
