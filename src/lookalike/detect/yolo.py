"""A user's YOLO (or YOLO-shaped) ONNX detector: `--detector yolo:/path/to/model.onnx`.

Understood layouts (read from the output's shape, no weights are shipped):
- YOLOv8/v11: one output (1, 4 + classes, anchors): cx, cy, w, h in input pixels, then class scores;
- YOLOv5/v7: one output (1, anchors, 5 + classes): cx, cy, w, h, objectness, then class scores.
Input: (1, 3, H, W) float32 RGB in [0, 1], letterboxed (aspect kept, grey padding 114) to H x W (640 if
the graph leaves them dynamic). Boxes are mapped back to the picture and reduced with NMS in numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..embed.runtime import make_session
from ..errors import LookalikeError
from .base import Detector, Region, clip_box, nms

DEFAULT_SIDE = 640


class YoloDetector(Detector):
    name = "yolo"

    def __init__(self, path: Path, *, threads: int = 0, min_score: float = 0.25, iou_threshold: float = 0.45,
                 labels: list[str] | None = None) -> None:
        if not path.is_file():
            raise LookalikeError(f"detector file '{path}' does not exist; give an ONNX file: --detector yolo:FILE.onnx")
        try:
            self.session: Any = make_session(path, threads=threads, device="cpu")
        except Exception as exc:  # onnxruntime raises its own types for a file that is not a model
            first = (str(exc).splitlines() or ["?"])[0][:120]
            raise LookalikeError(f"'{path.name}' is not a loadable ONNX model: {first}") from None
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise LookalikeError(f"'{path.name}': a YOLO detector has one (1, 3, H, W) input")
        self.input = inputs[0].name
        h, w = inputs[0].shape[2:]
        self.side = (int(h) if isinstance(h, int) else DEFAULT_SIDE, int(w) if isinstance(w, int) else DEFAULT_SIDE)
        shape = outputs[0].shape
        if len(shape) != 3:
            raise LookalikeError(f"'{path.name}': expected one (1, 4 + classes, N) or (1, N, 5 + classes) output, "
                                 f"got shape {shape}")
        self.min_score = min_score
        self.iou_threshold = iou_threshold
        self.labels = labels or []
        self.path = path

    def letterbox(self, image: Image.Image) -> tuple[np.ndarray, float, tuple[int, int]]:
        th, tw = self.side
        w, h = image.size
        scale = min(tw / w, th / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (tw, th), (114, 114, 114))
        left, top = (tw - nw) // 2, (th - nh) // 2
        canvas.paste(image.convert("RGB").resize((nw, nh), Image.Resampling.BILINEAR), (left, top))
        x = np.asarray(canvas, np.float32).transpose(2, 0, 1)[None] / 255.0
        return x, scale, (left, top)

    def decode(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes (N, 4) x0,y0,x1,y1 in input pixels, best class score (N,), class (N,))."""
        out = out[0]
        if out.shape[0] < out.shape[1]:  # v8: (4 + classes, N)
            pred = out.T
            cls_scores = pred[:, 4:]
        else:  # v5: (N, 5 + classes)
            pred = out
            cls_scores = pred[:, 5:] * pred[:, 4:5] if pred.shape[1] > 5 else pred[:, 4:5]
        if cls_scores.shape[1] == 0:
            cls_scores = np.ones((len(pred), 1), np.float32)
        cx, cy, bw, bh = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        return boxes, cls_scores.max(axis=1), cls_scores.argmax(axis=1)

    def detect(self, image: Image.Image, *, min_score: float | None = None, limit: int = 20) -> list[Region]:
        x, scale, (left, top) = self.letterbox(image)
        (out, *_) = self.session.run(None, {self.input: x})
        boxes, scores, classes = self.decode(np.asarray(out, np.float32))
        keep = np.flatnonzero(scores >= (self.min_score if min_score is None else min_score))
        if keep.size == 0:
            return []
        w, h = image.size
        found: list[Region] = []
        for j in nms(boxes[keep], scores[keep], self.iou_threshold, limit=limit):
            i = keep[j]
            b = (boxes[i] - np.array([left, top, left, top])) / scale
            box = clip_box(tuple(b), w, h)  # type: ignore[arg-type]
            if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                continue
            c = int(classes[i])
            found.append(Region(box, float(scores[i]), self.labels[c] if c < len(self.labels) else str(c), "yolo"))
        return found
