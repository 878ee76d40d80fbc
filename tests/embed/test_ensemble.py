"""The fused default model: weighted concatenation of real models' vectors, names, text, offline fallback."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.embed import DEFAULT_MODEL, FALLBACK_MODEL, get_embedder, registry, resolve
from lookalike.embed import mediapipe as mp
from lookalike.embed.ensemble import FusedEmbedder, parse
from lookalike.errors import LookalikeError

from ..conftest import ukbench_images


def photos(n: int) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in ukbench_images(n, start=100)]


def test_parse_names() -> None:
    assert parse("a*1.4+b") == [("a", 1.4), ("b", 1.0)]
    assert parse("x+y+z") == [("x", 1.0), ("y", 1.0), ("z", 1.0)]
    for bad in ("a", "a*0+b", "a*-1+b", "+b", "a*w+b"):
        with pytest.raises(LookalikeError):
            parse(bad)


def test_default_is_lite0_weighted_with_mediapipe(model_cache: Path) -> None:
    fused = get_embedder(DEFAULT_MODEL, model_cache)
    lite = get_embedder("efficientnet-lite0", model_cache)
    mobile = get_embedder("mobilenet-v3-small", model_cache)
    images = photos(4)
    got = fused.embed_images(images)
    a, b = lite.embed_images(images), mobile.embed_images(images)
    assert got.shape == (4, 2304) and fused.dim == 2304
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    want = np.concatenate([1.4 * a, b], axis=1) / np.sqrt(1.4**2 + 1)
    assert np.allclose(got, want, atol=1e-5)
    # the fused cosine is the weighted mean of the parts' cosines
    assert np.allclose(got @ got.T, (1.96 * (a @ a.T) + b @ b.T) / 2.96, atol=1e-5)


def test_any_two_cosine_models_fuse_by_name(model_cache: Path) -> None:
    fused = get_embedder("mobilenet-v3-small*2+efficientnet-lite0", model_cache)
    assert fused.name == "mobilenet-v3-small*2+efficientnet-lite0" and fused.dim == 2304
    assert fused.embed_images(photos(2)).shape == (2, 2304)
    with pytest.raises(LookalikeError, match="binary"):
        get_embedder("phash+mobilenet-v3-small", model_cache)
    with pytest.raises(LookalikeError, match="unknown model"):
        get_embedder("nope+mobilenet-v3-small", model_cache)


def test_fused_text_ranks_like_its_first_part(model_cache: Path) -> None:
    fused = get_embedder(DEFAULT_MODEL, model_cache)
    lite = get_embedder("efficientnet-lite0", model_cache)
    assert isinstance(fused, FusedEmbedder)
    images = photos(8)
    text = "a photo of a shoe"
    by_fused = fused.embed_images(images) @ fused.embed_text([text])[0]
    by_lite = lite.embed_images(images) @ lite.embed_text([text])[0]
    assert list(np.argsort(-by_fused)) == list(np.argsort(-by_lite))


def test_default_falls_back_to_lite0_without_mediapipe_file(model_cache: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    assert resolve(None, model_cache) == DEFAULT_MODEL  # ../shared/models holds the file
    monkeypatch.setattr(mp, "candidates", lambda cache_dir: [tmp_path / "absent.onnx"])
    monkeypatch.setattr(registry, "_warned", set())
    assert resolve("default", model_cache) == DEFAULT_MODEL  # listing: it would be fetched on first use
    monkeypatch.setenv("LOOKALIKE_OFFLINE", "1")  # no network: no download attempt
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        assert resolve("default", model_cache, fetch=True) == FALLBACK_MODEL
    assert "MediaPipe" in caplog.text
    assert resolve("efficientnet-lite2", model_cache) == "efficientnet-lite2"
