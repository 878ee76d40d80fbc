"""How alike two pictures are: a score in [0, 1] and a verdict, from their plain (unrefined) vectors.

The score is the plain cosine (or, for hash models, 1 - Hamming distance / bits), never the refined
search score, so comparing A with B gives the same answer whatever else is in the collection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import LookalikeError


@dataclass(frozen=True)
class Thresholds:
    duplicate: float = 0.95  # score at or above -> "duplicate"
    similar: float = 0.70  # at or above -> "similar" (UKBench photos of one object score >= ~0.72)

    def __post_init__(self) -> None:
        if not 0 < self.similar <= self.duplicate <= 1:
            raise LookalikeError("need 0 < similar_threshold <= duplicate_threshold <= 1")

    def verdict(self, score: float) -> str:
        return "duplicate" if score >= self.duplicate else "similar" if score >= self.similar else "different"


@dataclass(frozen=True)
class Comparison:
    score: float
    verdict: str
    model: str
    metric: str
    raw_score: float
    thresholds: Thresholds

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), "similarity": round(self.score, 6), "verdict": self.verdict,
                "model": self.model, "metric": self.metric, "raw_score": round(self.raw_score, 6),
                "thresholds": {"duplicate": self.thresholds.duplicate, "similar": self.thresholds.similar}}


def compare_vectors(a: np.ndarray, b: np.ndarray, *, model: str, metric: str, dim: int,
                    thresholds: Thresholds) -> Comparison:
    if metric == "hamming":
        bits = int(np.unpackbits(np.bitwise_xor(a.astype(np.uint8), b.astype(np.uint8))).sum())
        raw = 1.0 - bits / dim
    else:
        raw = float(np.dot(a.astype(np.float32), b.astype(np.float32)))
    score = min(1.0, max(0.0, raw))
    return Comparison(score=score, verdict=thresholds.verdict(score), model=model, metric=metric,
                      raw_score=raw, thresholds=thresholds)
