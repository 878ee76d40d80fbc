"""The Embedder interface: a picture in, a fixed-size vector out.

Work is split in two so ingest can overlap them: `prepare` (resize, crop, normalise) runs in decode
worker threads, `embed_prepared` runs batched inference. Vectors are L2-normalised float32 (cosine
metric) or packed bits (hamming metric).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class ModelCard:
    """What `lookalike models` shows, and what a collection records to refuse mixing models."""

    name: str
    dim: int
    input_size: int
    metric: str = "cosine"
    text: bool = False  # has a text tower: `search --text` works
    licence: str = ""
    source: str = ""
    description: str = ""
    available: bool = True  # weights present locally (or buildable offline)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Embedder(ABC):
    card: ModelCard

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def dim(self) -> int:
        return self.card.dim

    @property
    def metric(self) -> str:
        return self.card.metric

    @property
    def draft_size(self) -> int | None:
        """Smallest side a JPEG needs to be decoded at (lets the decoder use DCT scaling)."""
        return self.card.input_size * 2 if self.card.input_size else None

    @abstractmethod
    def prepare(self, image: Image.Image) -> Any:
        """Per-image preprocessing, thread-safe, cheap relative to inference."""

    @abstractmethod
    def embed_prepared(self, batch: list[Any]) -> np.ndarray:
        """Batched inference on prepared inputs: (N, dim) float32 unit vectors, or (N, dim/8) uint8."""

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.embed_prepared([self.prepare(img) for img in images])

    def embed_text(self, texts: list[str]) -> np.ndarray:
        from ..errors import LookalikeError

        raise LookalikeError(f"model '{self.name}' has no text tower; use a model listed with text=yes "
                             "by `lookalike models`")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
