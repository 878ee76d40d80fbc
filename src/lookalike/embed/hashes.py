"""Perceptual hashes (pHash, dHash, wHash from `imagehash`) as binary embedders.

Why: a 64-bit hash is 160x smaller than a 1280-d float vector, needs no model weights, and is the
classic tool for exact and near-exact duplicates (re-encodes, resizes, small edits). It does not
find "similar looking" pictures: crops, rotations and mirrored copies change most bits.

Vectors are the hash bits packed with `np.packbits` (uint8, dim/8 bytes per image); the store
scores them as 1 - hamming/dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LookalikeError
from .base import Embedder, ModelCard

HASH_SIZE = 8  # 8x8 = 64 bits, imagehash's default and the usual published setting
WHASH_SCALE = 64  # fixed working size for wHash, so the hash doesn't depend on the picture's size

_DESCRIPTIONS = {
    "phash": "DCT perceptual hash (32x32 grey, top-left 8x8 DCT vs median): robust to resize/re-encode",
    "dhash": "difference hash (9x8 grey, sign of horizontal gradients): fastest, near-exact duplicates",
    "whash": "Haar wavelet hash (64x64 grey, low band vs median): like pHash, a little more blur-tolerant",
}
_INPUT_SIZE = {"phash": HASH_SIZE * 4, "dhash": HASH_SIZE + 1, "whash": WHASH_SCALE}


def _imagehash() -> Any:
    try:
        import imagehash
    except ImportError as exc:  # pragma: no cover - imagehash is a core dependency
        raise LookalikeError("perceptual hashes need the `imagehash` package: `pip install imagehash`") from exc
    return imagehash


def hash_function(kind: str) -> Callable[[Image.Image], np.ndarray]:
    """The imagehash function for `kind`, returning the flat boolean bit array (HASH_SIZE**2 bits)."""
    ih = _imagehash()
    if kind == "phash":
        def fn(img: Image.Image) -> np.ndarray:
            return ih.phash(img, hash_size=HASH_SIZE).hash
    elif kind == "dhash":
        def fn(img: Image.Image) -> np.ndarray:
            return ih.dhash(img, hash_size=HASH_SIZE).hash
    elif kind == "whash":
        def fn(img: Image.Image) -> np.ndarray:
            return ih.whash(img, hash_size=HASH_SIZE, image_scale=WHASH_SCALE).hash
    else:
        raise LookalikeError(f"unknown perceptual hash '{kind}': use phash, dhash or whash")
    return lambda img: np.asarray(fn(img), dtype=bool).reshape(-1)


class PerceptualHash(Embedder):
    """Packs one imagehash result per picture; all the work happens in `prepare` (decode threads)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fn = hash_function(kind)
        self.card = card(kind)

    @property
    def draft_size(self) -> int | None:
        return 64  # the hashes look at 32x32 or less: let JPEG decoding shrink by up to 8x

    def prepare(self, image: Image.Image) -> np.ndarray:
        return np.packbits(self._fn(image))

    def embed_prepared(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim // 8), dtype=np.uint8)
        return np.stack(batch).astype(np.uint8, copy=False)


def hamming_similarity(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """1 - hamming/bits between packed codes a (N,B) and b (M,B): the store's score, for tests and benches."""
    xor = np.bitwise_xor(a[:, None, :], b[None, :, :])
    return 1.0 - np.unpackbits(xor, axis=2).sum(axis=2) / bits


def card(kind: str) -> ModelCard:
    try:
        import imagehash  # noqa: F401

        present = True
    except ImportError:  # pragma: no cover
        present = False
    return ModelCard(
        name=kind,
        dim=HASH_SIZE * HASH_SIZE,
        input_size=_INPUT_SIZE[kind],
        metric="hamming",
        licence="BSD-2-Clause (imagehash)",
        source="PyPI imagehash (no weights)",
        description=_DESCRIPTIONS[kind],
        available=present,
        extra={"bytes_per_image": HASH_SIZE * HASH_SIZE // 8, "int8": "n/a (already 64 bits)"},
    )
