"""MediaPipe MobileNetV3 embedder: found from env/cache/shared, MediaPipe's preprocessing, 1024-d unit vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.embed import mediapipe
from lookalike.errors import LookalikeError

from ..conftest import SHARED, ukbench_images

MODEL = SHARED / "models" / mediapipe.FILE_NAME
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="shared MediaPipe model not present")


def test_stretch_resize_is_nhwc_unit_range() -> None:
    x = mediapipe.stretch_resize(Image.new("RGB", (640, 100), (255, 0, 128)))
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    assert np.allclose(x[0, 0], [1.0, 0.0, 128 / 255], atol=1e-6)


def test_missing_file_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOKALIKE_MEDIAPIPE_MODEL", str(tmp_path / "nope.onnx"))
    monkeypatch.setattr(mediapipe, "candidates", lambda cache: [tmp_path / "nope.onnx"])
    with pytest.raises(LookalikeError) as err:
        mediapipe.MediaPipeEmbedder(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and mediapipe.FILE_NAME in msg and "tf2onnx" in msg


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
