"""COCO SSD MobileNet-v1 (uint8 .tflite from ../shared/models) run with ONNX Runtime.

The network is translated to ONNX by `embed/tflite_onnx.py` (weights dequantized, run in float) and
cached under `<library>/models/`; its last op, `TFLite_Detection_PostProcess`, exists only in TFLite,
so box decoding (anchors + the op's own scales) and NMS are done here in numpy. Why not a second
runtime (ai-edge-litert): ONNX Runtime is already loaded for the embedders and runs the graph in about
the same time (figures in docs/benchmarks.md), and one runtime is one less wheel to ship.

Where the file is looked for, first hit wins: $LOOKALIKE_SSD_MODEL, `<library>/models/`, then
`../shared/models/` next to the working directory or this package's checkout.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..embed.runtime import make_session
from ..errors import LookalikeError
from .base import Detector, Region, clip_box, nms

TFLITE_NAME = "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"
SIZE = 300
MIN_SCORE = 0.3  # what `detect` reports; `candidates` goes lower for class-agnostic use
_lock = threading.Lock()


def candidates(cache_dir: Path | None) -> list[Path]:
    found: list[Path] = []
    if os.environ.get("LOOKALIKE_SSD_MODEL"):
        found.append(Path(os.environ["LOOKALIKE_SSD_MODEL"]).expanduser())
    folders = [cache_dir] if cache_dir is not None else []
    folders += [Path.cwd().parent / "shared" / "models", Path.cwd() / "shared" / "models"]
    folders += [parent.parent / "shared" / "models" for parent in Path(__file__).resolve().parents[2:5]]
    found += [folder / TFLITE_NAME for folder in folders]
    return found


def locate(cache_dir: Path | None) -> Path | None:
    return next((p for p in candidates(cache_dir) if p.is_file()), None)


def model_path(cache_dir: Path | None) -> tuple[Path, Path]:
    """(the .tflite, its ONNX translation: built once into `cache_dir`)."""
    found = locate(cache_dir)
    if found is None:
        raise LookalikeError(f"the object detector's file {TFLITE_NAME} was not found: put it in the "
                             "library's models folder or set LOOKALIKE_SSD_MODEL (or use --detector proposals)")
    with _lock:
        digest = hashlib.sha256(found.read_bytes()).hexdigest()[:12]
        folder = cache_dir if cache_dir is not None and os.access(cache_dir.parent, os.W_OK) else found.parent
        target = (cache_dir or folder) / f"coco_ssd_mobilenet_v1_quant-{digest}.onnx"
        if not target.is_file():
            from ..embed.tflite_onnx import convert

            target.parent.mkdir(parents=True, exist_ok=True)
            convert(found, target)
        return found, target


def labels(tflite_path: Path) -> list[str]:
    """The label map zipped inside the .tflite (index c of a class score row -> labels[c])."""
    try:
        with zipfile.ZipFile(tflite_path) as z:
            name = next(n for n in z.namelist() if n.endswith(".txt"))
            return z.read(name).decode().splitlines()
    except (zipfile.BadZipFile, StopIteration, KeyError):
        return []


def decode_boxes(raw: np.ndarray, anchors: np.ndarray, scales: tuple[float, float, float, float]) -> np.ndarray:
    """TF Object Detection's box coder: (ty, tx, th, tw) against (cy, cx, h, w) anchors -> (x0, y0, x1, y1)
    in [0, 1] image coordinates."""
    ys, xs, hs, ws = scales
    cy = raw[:, 0] / ys * anchors[:, 2] + anchors[:, 0]
    cx = raw[:, 1] / xs * anchors[:, 3] + anchors[:, 1]
    h = np.exp(np.clip(raw[:, 2] / hs, -10, 4)) * anchors[:, 2]
    w = np.exp(np.clip(raw[:, 3] / ws, -10, 4)) * anchors[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


class SsdDetector(Detector):
    name = "ssd"

    def __init__(self, cache_dir: Path | None, *, threads: int = 0, min_score: float = MIN_SCORE) -> None:
        from ..embed.tflite_onnx import postprocess_options

        self.tflite, self.path = model_path(cache_dir)
        opts = postprocess_options(self.tflite)
        self.scales = (opts.get("y_scale", 10.0), opts.get("x_scale", 10.0), opts.get("h_scale", 5.0),
                       opts.get("w_scale", 5.0))
        self.iou_threshold = opts.get("nms_iou_threshold", 0.6)
        self.min_score = min_score
        self.labels = labels(self.tflite)
        self.threads = threads
        self.cache_dir = cache_dir
        self._session: Any = None
        self._anchors: np.ndarray | None = None

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = make_session(self.path, threads=self.threads, device="cpu")
        return self._session

    def raw(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (A, 4) in [0,1] x0,y0,x1,y1; class scores (A, classes)) before any threshold."""
        x = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)[None]
        boxes, scores, anchors = self.session.run(None, {"image": x})
        return decode_boxes(boxes[0], anchors, self.scales), scores[0][:, 1:]  # column 0 is background

    def detect(self, image: Image.Image, *, min_score: float | None = None, limit: int = 10) -> list[Region]:
        boxes, scores = self.raw(image)
        best = scores.max(axis=1)
        cls = scores.argmax(axis=1)
        threshold = self.min_score if min_score is None else min_score
        keep = np.flatnonzero(best >= threshold)
        if keep.size == 0:
            return []
        w, h = image.size
        order = nms(boxes[keep], best[keep], self.iou_threshold, limit=limit)
        out: list[Region] = []
        for j in order:
            i = keep[j]
            box = clip_box((boxes[i, 0] * w, boxes[i, 1] * h, boxes[i, 2] * w, boxes[i, 3] * h), w, h)
            if box[2] - box[0] < 8 or box[3] - box[1] < 8:
                continue
            label_index = int(cls[i])  # the label map has no background line: column c + 1 is labels[c]
            label = self.labels[label_index] if label_index < len(self.labels) else str(label_index)
            out.append(Region(box, float(best[i]), label, "ssd"))
        return out
