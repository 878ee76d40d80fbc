"""Retrieval metrics over one ranked list of ids and the set of relevant ids.

Conventions (stated because papers differ):
- `ranked` is best first; ties in score are already broken by the caller (lookalike: by id).
- AP@k divides by min(k, |relevant|), so a perfect list scores 1 even when |relevant| > k.
- A query with no relevant item has no defined recall/AP: functions return None and averages skip it.
- k larger than the list: missing positions count as misses.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

Ranked = Sequence[Hashable]
Relevant = set[Hashable] | frozenset[Hashable]


def hits_at(ranked: Ranked, relevant: Relevant, k: int) -> int:
    return sum(1 for item in ranked[:k] if item in relevant)


def recall_at_k(ranked: Ranked, relevant: Relevant, k: int) -> float | None:
    return hits_at(ranked, relevant, k) / len(relevant) if relevant else None


def hit_rate_at_k(ranked: Ranked, relevant: Relevant, k: int) -> float | None:
    """1 if any relevant item is in the top k (Towhee's "hit ratio")."""
    return float(hits_at(ranked, relevant, k) > 0) if relevant else None


def precision_at_k(ranked: Ranked, relevant: Relevant, k: int) -> float | None:
    return hits_at(ranked, relevant, k) / k if relevant else None


def average_precision(ranked: Ranked, relevant: Relevant, k: int | None = None) -> float | None:
    """AP over the top k (all of `ranked` when k is None); normalised by min(k, |relevant|)."""
    if not relevant:
        return None
    limit = len(ranked) if k is None else k
    hits, total = 0, 0.0
    for rank, item in enumerate(ranked[:limit], 1):
        if item in relevant:
            hits += 1
            total += hits / rank
    denominator = len(relevant) if k is None else min(k, len(relevant))
    return total / denominator


def ndcg_at_k(ranked: Ranked, relevant: Relevant, k: int) -> float | None:
    """Binary-relevance nDCG@k."""
    if not relevant:
        return None
    dcg = sum(1.0 / math.log2(rank + 1) for rank, item in enumerate(ranked[:k], 1) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal


def reciprocal_rank(ranked: Ranked, relevant: Relevant) -> float | None:
    if not relevant:
        return None
    for rank, item in enumerate(ranked, 1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def ns_score(ranked: Ranked, group: Relevant) -> float:
    """UKBench N-S: members of the query's group of 4 (query included) among the top 4; 4.0 is perfect."""
    return float(hits_at(ranked, group, 4))


def mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None
