"""MediaPipe MobileNetV3 embedder: found from env/cache/shared, MediaPipe's preprocessing, 1024-d unit vectors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.embed import mediapipe
from lookalike.errors import LookalikeError

from ..conftest import SHARED, ukbench_images

MODEL = SHARED / "models" / mediapipe.FILE_NAME
TFLITE = SHARED / "models" / mediapipe.TFLITE_NAMES[0]
needs_model = pytest.mark.skipif(not MODEL.is_file() or not TFLITE.is_file(), reason="no shared MediaPipe model")


def test_stretch_resize_is_nhwc_unit_range() -> None:
    x = mediapipe.stretch_resize(Image.new("RGB", (640, 100), (255, 0, 128)))
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    assert np.allclose(x[0, 0], [1.0, 0.0, 128 / 255], atol=1e-6)


def test_missing_file_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_MEDIAPIPE_MODEL", str(tmp_path / "nope.onnx"))
    monkeypatch.setenv("LOOKALIKE_OFFLINE", "1")
    monkeypatch.setattr(mediapipe, "candidates", lambda cache: [tmp_path / "nope.onnx"])
    with pytest.raises(LookalikeError) as err:
        mediapipe.MediaPipeEmbedder(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and mediapipe.TFLITE_NAMES[0] in msg and mediapipe.MEDIAPIPE_URL in msg


@needs_model
def test_a_tflite_in_the_cache_is_converted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a real user has after the first-use download: Google's .tflite, no ONNX, no TensorFlow."""
    cache = tmp_path / "models"
    cache.mkdir()
    shutil.copy(TFLITE, cache / "mobilenet_v3_small.tflite")
    monkeypatch.setattr(mediapipe, "candidates", lambda c: [c / mediapipe.FILE_NAME, c / "mobilenet_v3_small.tflite"])
    emb = mediapipe.MediaPipeEmbedder(cache, threads=1)
    assert emb.path.parent == cache and emb.path.suffix == ".onnx"
    reference = mediapipe.MediaPipeEmbedder(cache, threads=1, path=MODEL)  # tf2onnx conversion, shared/models
    images = [Image.open(p).convert("RGB") for p in ukbench_images(4, start=500)]
    assert (emb.embed_images(images) * reference.embed_images(images)).sum(axis=1).min() > 0.99999
    stamp = emb.path.stat().st_mtime_ns
    assert mediapipe.model_path(cache) == emb.path and emb.path.stat().st_mtime_ns == stamp


@needs_model
def test_env_var_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_MEDIAPIPE_MODEL", str(MODEL))
    assert mediapipe.model_path(tmp_path) == MODEL


@needs_model
def test_embeddings_group_views_of_one_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_MEDIAPIPE_MODEL", str(MODEL))
    emb = mediapipe.MediaPipeEmbedder(tmp_path, threads=1)
    vecs = emb.embed_images([Image.open(p).convert("RGB") for p in ukbench_images(8)])  # 2 objects x 4 views
    assert vecs.shape == (8, 1024) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sim = vecs @ vecs.T
    same = sim[:4, :4][~np.eye(4, dtype=bool)].mean()
    assert same > sim[:4, 4:].mean() + 0.1
