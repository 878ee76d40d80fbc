"""MediaPipe's image embedder (MobileNetV3-small 0.75, 1024-d), run with ONNX Runtime.

Why: it is the fastest real image model available offline (about 2x MediaPipe's own LiteRT
runtime on the same CPU, see /work/shared/models/README.md: ONNX 435 img/s vs LiteRT 224 img/s at
batch 32) and only 4 MiB. Google ships it as a .tflite; lookalike converts that to ONNX itself
(`tflite_onnx.py`, no TensorFlow) and caches the result.

Where the model is looked for, first hit wins (an .onnx is used as is, a .tflite is converted):
  1. $LOOKALIKE_MEDIAPIPE_MODEL (.onnx or .tflite),
  2. `<library>/models/` (the converted file, or a .tflite placed there),
  3. `../shared/models/` relative to the working directory or to this package's checkout,
  4. a download of MEDIAPIPE_URL into `<library>/models/` on first use (not with LOOKALIKE_OFFLINE=1).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import LookalikeError
from .base import Embedder, ModelCard, l2_normalise
from .runtime import make_session

FILE_NAME = "mobilenet_v3_small_075_224_embedder.onnx"
TFLITE_NAMES = ("mobilenet_v3_small_075_224_embedder.tflite", "mobilenet_v3_small.tflite")
MEDIAPIPE_URL = ("https://storage.googleapis.com/mediapipe-models/image_embedder/mobilenet_v3_small/"
                 "float32/latest/mobilenet_v3_small.tflite")
KNOWN_SHA256 = "0f786f8eb8bcecd1f9c5bc50f00a5e6b9f62600edb503ad3bfff5f51035b0ea5"  # the file tested here
SIZE = 224
DIM = 1024
NAME = "mobilenet-v3-small"
log = logging.getLogger("lookalike")
_lock = threading.Lock()
_failed: list[str] = []


def candidates(cache_dir: Path | None) -> list[Path]:
    found: list[Path] = []
    if os.environ.get("LOOKALIKE_MEDIAPIPE_MODEL"):
        found.append(Path(os.environ["LOOKALIKE_MEDIAPIPE_MODEL"]).expanduser())
    folders: list[Path] = []
    if cache_dir is not None:
        folders.append(cache_dir)
    folders += [Path.cwd().parent / "shared" / "models", Path.cwd() / "shared" / "models"]
    here = Path(__file__).resolve()
    folders += [parent.parent / "shared" / "models" for parent in here.parents[2:5]]
    for folder in folders:
        found.append(folder / FILE_NAME)
        found.extend(folder / name for name in TFLITE_NAMES)
    return found


def locate(cache_dir: Path | None) -> Path | None:
    """The first model file present (.onnx or .tflite), without converting or downloading anything."""
    return next((p for p in candidates(cache_dir) if p.is_file()), None)


def offline() -> bool:
    return os.environ.get("LOOKALIKE_OFFLINE", "").lower() in ("1", "true", "yes")


def model_path(cache_dir: Path | None, *, fetch: bool = False) -> Path | None:
    """An ONNX file for the embedder: found, converted from a found .tflite, or (fetch) downloaded."""
    with _lock:
        found = locate(cache_dir)
        if found is None and fetch and not offline() and not _failed:
            found = download(cache_dir)
            if found is None:
                _failed.append(MEDIAPIPE_URL)  # one attempt per process: no network stays no network
        if found is None or found.suffix == ".onnx":
            return found
        digest = hashlib.sha256(found.read_bytes()).hexdigest()[:12]  # a different .tflite gets its own graph
        target = (cache_dir or _user_cache()) / f"{Path(FILE_NAME).stem}-{digest}.onnx"
        if not target.is_file():
            from .tflite_onnx import convert

            convert(found, target)
        return target


def _user_cache() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("lookalike"))


def download(cache_dir: Path | None) -> Path | None:
    """Fetch Google's .tflite into the cache (with a progress bar); None when there is no network."""
    import urllib.request

    folder = cache_dir or _user_cache()
    target = folder / TFLITE_NAMES[1]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(MEDIAPIPE_URL, timeout=20) as response, tmp.open("wb") as out:
            total = int(response.headers.get("content-length") or 0)
            from rich.progress import Progress

            with Progress(transient=True, console=None if sys.stderr.isatty() else _quiet()) as bar:
                task = bar.add_task(f"downloading {NAME}", total=total or None)
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    bar.advance(task, len(chunk))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("could not download %s (%s); set LOOKALIKE_OFFLINE=1 to stop trying", MEDIAPIPE_URL, exc)
        return None
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    if digest != KNOWN_SHA256:
        log.warning("%s has sha256 %s, not the version lookalike was tested with; using it anyway",
                    MEDIAPIPE_URL, digest[:16])
    os.replace(tmp, target)
    return target


def _quiet() -> Any:
    from rich.console import Console

    return Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the progress bar


def missing_message(cache_dir: Path | None) -> str:
    where = cache_dir if cache_dir is not None else "the model folder"
    return (f"{NAME} weights not found and not downloadable: put {TFLITE_NAMES[0]} (or the converted "
            f"{FILE_NAME}) in {where}, or set LOOKALIKE_MEDIAPIPE_MODEL; the file is {MEDIAPIPE_URL}")


def stretch_resize(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """MediaPipe's preprocessing: the whole picture stretched to size x size (no crop), bilinear, [0,1]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    arr = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return arr * np.float32(1.0 / 255.0)  # NHWC, as the tflite graph expects


class MediaPipeEmbedder(Embedder):
    def __init__(self, cache_dir: Path | None, *, threads: int = 0, path: Path | None = None) -> None:
        self.path = path or model_path(cache_dir, fetch=True)
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
        present = locate(cache_dir) is not None
    return ModelCard(
        name=NAME,
        dim=DIM,
        input_size=SIZE,
        licence="Apache-2.0 (Google MediaPipe)",
        source="MediaPipe image_embedder mobilenet_v3_small .tflite (fetched on first use), converted to ONNX",
        description="MediaPipe image embedder, MobileNetV3-small 0.75, whole picture stretched to 224px",
        available=present,
        extra={"file": FILE_NAME, "url": MEDIAPIPE_URL},
    )
