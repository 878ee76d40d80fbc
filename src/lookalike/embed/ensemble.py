"""Fusion of embedders: weighted concatenation of L2-normalised vectors, normalised again.

Why: two different backbones make different mistakes. EfficientNet-Lite0 (GeM) and MediaPipe's
MobileNetV3 embedder together beat either alone and beat EfficientNet-Lite2 on every shared set, and
index 1.25x faster than Lite2 end to end (docs/benchmarks.md). The cosine of two fused vectors is
the weighted mean of the parts' cosines: sum_i w_i^2 cos_i / sum_i w_i^2.

Names: `a+b` fuses registered models a and b with equal weights; `a*1.4+b` weights a by 1.4.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..errors import LookalikeError
from .base import Embedder, ModelCard, l2_normalise


def parse(name: str) -> list[tuple[str, float]]:
    """'efficientnet-lite0*1.4+mobilenet-v3-small' -> [('efficientnet-lite0', 1.4), ('mobilenet-v3-small', 1.0)]."""
    parts: list[tuple[str, float]] = []
    for piece in name.split("+"):
        model, _, weight = piece.partition("*")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = -1.0
        if not model or value <= 0:
            raise LookalikeError(f"invalid fused model name '{name}': write a+b or a*1.4+b with positive weights")
        parts.append((model, value))
    if len(parts) < 2:
        raise LookalikeError(f"invalid fused model name '{name}': it needs at least two models joined by '+'")
    return parts


class FusedEmbedder(Embedder):
    def __init__(self, name: str, parts: list[tuple[Embedder, float]], description: str = "") -> None:
        for part, _ in parts:
            if part.metric != "cosine":
                raise LookalikeError(f"'{part.name}' gives binary codes and can't be fused; fuse cosine models")
        self.parts = parts
        dims = sum(p.dim for p, _ in parts)
        first = parts[0][0]
        self.card = ModelCard(
            name=name, dim=dims, input_size=max(p.card.input_size for p, _ in parts),
            text=first.card.text,
            licence=" + ".join(sorted({p.card.licence for p, _ in parts})),
            source=" + ".join(p.card.source for p, _ in parts),
            description=description or "fusion of " + ", ".join(f"{p.name} (weight {w:g})" for p, w in parts),
            available=all(p.card.available for p, _ in parts),
            extra={"parts": [{"model": p.name, "weight": w, "dim": p.dim} for p, w in parts],
                   "text": f"through {first.name}" if first.card.text else ""},
        )

    @property
    def draft_size(self) -> int | None:
        sizes = [p.draft_size for p, _ in self.parts if p.draft_size]
        return max(sizes) if sizes else None

    def prepare(self, image: Image.Image) -> tuple[Any, ...]:
        return tuple(part.prepare(image) for part, _ in self.parts)

    def embed_prepared(self, batch: list[Any]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        blocks = [weight * part.embed_prepared([item[n] for item in batch])
                  for n, (part, weight) in enumerate(self.parts)]
        return l2_normalise(np.concatenate(blocks, axis=1))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Text through the first part's text tower; the other parts' blocks are zero.

        The fused image vector's first block is that part's own unit vector times a constant, so this
        ranks images exactly as the first part alone would."""
        first, weight = self.parts[0]
        vectors = first.embed_text(texts)
        rest = np.zeros((len(texts), self.dim - first.dim), dtype=np.float32)
        return l2_normalise(np.concatenate([weight * vectors, rest], axis=1))
