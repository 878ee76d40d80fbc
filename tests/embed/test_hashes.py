"""Perceptual hashes: 64 packed bits, stable under re-encoding/resizing, and a working hamming collection."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import Library
from lookalike.embed import get_embedder
from lookalike.embed.hashes import hamming_similarity
from lookalike.errors import ModelMismatch

from ..conftest import ukbench_images


def _reencoded(img: Image.Image, scale: float) -> Image.Image:
    small = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=60)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.parametrize("kind", ["phash", "dhash", "whash"])
def test_hash_shape_and_near_duplicate(kind: str, tmp_path: Path) -> None:
    emb = get_embedder(kind, tmp_path)
    assert (emb.metric, emb.dim) == ("hamming", 64)
    images = [Image.open(p).convert("RGB") for p in ukbench_images(8, start=0)[::4]]  # 2 different objects
    codes = emb.embed_images(images + [_reencoded(images[0], 0.5)])
    assert codes.dtype == np.uint8 and codes.shape == (3, 8)
    sim = hamming_similarity(codes, codes, 64)
    assert sim[0, 2] >= 0.9, "a half-size JPEG re-encode keeps >= 90% of the bits"
    assert sim[0, 1] < sim[0, 2]


def test_phash_collection_finds_duplicate(tmp_path: Path, small_folder: Path) -> None:
    with Library.open(tmp_path / "home") as lib:
        lib.index([small_folder], "h", model="phash")
        info = lib.info("h")
        assert (info.model, info.dim, info.metric) == ("phash", 64, "hamming")
        first = sorted(small_folder.iterdir())[0]
        query = _reencoded(Image.open(first).convert("RGB"), 0.5)
        hits = lib.search(query, k=3, collection="h")
        assert Path(hits[0].path).name == first.name
        assert hits[0].score >= 0.9


def test_collection_refuses_a_second_model(tmp_path: Path, small_folder: Path) -> None:
    with Library.open(tmp_path / "home") as lib:
        lib.index([small_folder], "h", model="phash")
        with pytest.raises(ModelMismatch):
            lib.index([small_folder], "h", model="dhash")
