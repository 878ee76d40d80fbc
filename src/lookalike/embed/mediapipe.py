"""MediaPipe's image embedder (MobileNetV3-small 0.75, 1024-d), run with ONNX Runtime.

Why: it is the fastest real image model available offline (about 2x MediaPipe's own LiteRT
runtime on the same CPU, see /work/shared/models/README.md: ONNX 435 img/s vs LiteRT 224 img/s at
batch 32) and only 4 MiB. It ships as a .tflite; we use the ONNX conversion of that file.

Where the .onnx is looked for, first hit wins:
  1. $LOOKALIKE_MEDIAPIPE_MODEL (a .onnx file),
  2. `<library>/models/mobilenet_v3_small_075_224_embedder.onnx`,
  3. `../shared/models/` relative to the working directory or to this package's checkout.
Google publishes only the .tflite (MEDIAPIPE_URL). Turning it into ONNX needs tf2onnx (and
TensorFlow), which lookalike does not depend on; `lookalike models` says how (docs/models.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LookalikeError
from .base import Embedder, ModelCard, l2_normalise
from .runtime import make_session

FILE_NAME = "mobilenet_v3_small_075_224_embedder.onnx"
MEDIAPIPE_URL = ("https://storage.googleapis.com/mediapipe-models/image_embedder/mobilenet_v3_small/"
                 "float32/latest/mobilenet_v3_small.tflite")
SIZE = 224
DIM = 1024
NAME = "mobilenet-v3-small"


def candidates(cache_dir: Path | None) -> list[Path]:
    found: list[Path] = []
    if os.environ.get("LOOKALIKE_MEDIAPIPE_MODEL"):
        found.append(Path(os.environ["LOOKALIKE_MEDIAPIPE_MODEL"]).expanduser())
    if cache_dir is not None:
        found.append(cache_dir / FILE_NAME)
    found.append(Path.cwd().parent / "shared" / "models" / FILE_NAME)
    found.append(Path.cwd() / "shared" / "models" / FILE_NAME)
    here = Path(__file__).resolve()
    found.extend(parent.parent / "shared" / "models" / FILE_NAME for parent in here.parents[2:5])
    return found


def model_path(cache_dir: Path | None) -> Path | None:
    return next((p for p in candidates(cache_dir) if p.is_file()), None)


def missing_message(cache_dir: Path | None) -> str:
    where = cache_dir / FILE_NAME if cache_dir is not None else FILE_NAME
    return (f"{NAME} weights not found: put {FILE_NAME} at {where} or set LOOKALIKE_MEDIAPIPE_MODEL "
            f"(convert {MEDIAPIPE_URL} with `python -m tf2onnx.convert --tflite FILE --output {FILE_NAME}`; "
            "see docs/models.md)")


def stretch_resize(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """MediaPipe's preprocessing: the whole picture stretched to size x size (no crop), bilinear, [0,1]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    arr = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return arr * np.float32(1.0 / 255.0)  # NHWC, as the tflite graph expects


class MediaPipeEmbedder(Embedder):
    def __init__(self, cache_dir: Path | None, *, threads: int = 0, path: Path | None = None) -> None:
        self.path = path or model_path(cache_dir)
        if self.path is None:
            raise LookalikeError(missing_message(cache_dir))
        self.threads = threads
        self.cache_dir = cache_dir
        self._session: Any = None
        self.card = card(cache_dir, present=True)

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session(self.path, threads=self.threads, cache_dir=self.cache_dir)
            self._input = self._session.get_inputs()[0].name
        return self._session

    @property
    def draft_size(self) -> int | None:
        return SIZE

    def prepare(self, image: Image.Image) -> np.ndarray:
        return stretch_resize(image)

    def embed_prepared(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, DIM), dtype=np.float32)
        x = np.ascontiguousarray(np.stack(batch), dtype=np.float32)
        (out,) = self.session.run(None, {self._input: x})[:1]
        return l2_normalise(out.reshape(len(batch), -1))


def card(cache_dir: Path | None = None, *, present: bool | None = None) -> ModelCard:
    if present is None:
        present = model_path(cache_dir) is not None
    return ModelCard(
        name=NAME,
        dim=DIM,
        input_size=SIZE,
        licence="Apache-2.0 (Google MediaPipe)",
        source="MediaPipe image_embedder mobilenet_v3_small .tflite, converted to ONNX (tf2onnx)",
        description="MediaPipe image embedder, MobileNetV3-small 0.75, whole picture stretched to 224px",
        available=present,
        extra={"file": FILE_NAME, "url": MEDIAPIPE_URL},
    )
