"""The Detector interface and its registry: a picture in, boxes out (issue 17, object-aware search).

A `Region` is a box in the picture's own pixel coordinates (x0, y0, x1, y1; x1/y1 exclusive) with a
score and, for detectors that know them, a class label. Detectors are looked up by name like the
embedders (`get_detector`); "ssd" is the offline default (COCO SSD MobileNet from ../shared/models),
"yolo:PATH" loads a user's YOLO ONNX file, and "proposals" needs no model at all (class-agnostic).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import LookalikeError

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Region:
    box: Box
    score: float = 1.0
    label: str = ""
    source: str = ""  # which detector or proposal rule made it

    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])

    def to_dict(self) -> dict[str, object]:
        return {"box": list(self.box), "score": round(float(self.score), 4), "label": self.label,
                "source": self.source}


class Detector(ABC):
    name: str = ""

    @abstractmethod
    def detect(self, image: Image.Image) -> list[Region]:
        """Boxes found in `image`, best first, in its pixel coordinates."""


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each box in a (N,4) against each in b (M,4), boxes as x0, y0, x1, y1."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int = 100) -> list[int]:
    """Greedy non-maximum suppression: indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[iou(boxes[i:i + 1], boxes[rest])[0] <= iou_threshold]
    return keep


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return (int(max(0, min(width, round(x0)))), int(max(0, min(height, round(y0)))),
            int(max(0, min(width, round(x1)))), int(max(0, min(height, round(y1)))))


Factory = Callable[[Path, int], Detector]  # (model cache dir, threads) -> detector
_REGISTRY: dict[str, Factory] = {}
DEFAULT_DETECTOR = "ssd"


def register(name: str, factory: Factory) -> None:
    _REGISTRY[name] = factory


def detector_names() -> list[str]:
    return sorted(_REGISTRY)


def get_detector(name: str | None, cache_dir: Path, *, threads: int = 0) -> Detector:
    """A detector by name: a registered one ("ssd", "proposals"), or "yolo:FILE.onnx" / "onnx:FILE"."""
    name = name or DEFAULT_DETECTOR
    if ":" in name:
        kind, _, path = name.partition(":")
        if kind in ("yolo", "onnx"):
            from .yolo import YoloDetector

            return YoloDetector(Path(path).expanduser(), threads=threads)
    if name not in _REGISTRY:
        raise LookalikeError(f"unknown detector '{name}'; use one of {', '.join(detector_names())} "
                             "or yolo:PATH.onnx")
    return _REGISTRY[name](cache_dir, threads)
