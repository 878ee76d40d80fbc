"""Class-agnostic regions: most things people search for (toys, book and CD covers) are no COCO class.

Three sources, measured against each other on pasted-object scenes (bench/objects.py):
- `windows`: a fixed multi-scale grid of boxes with the picture's aspect (no model at all);
- `edges`: EdgeBoxes-like objectness: dense candidate boxes scored by the gradient energy inside the box
  against the ring around it (an object in front of a background has its own texture and a boundary),
  with integral images, then NMS;
- the detector's low-score boxes (`SsdDetector.detect(min_score=...)`), any class.
`regions()` merges what a mode asks for, drops near-duplicates (IoU) and caps the count.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .base import Detector, Region, clip_box, iou, nms

W_COLOUR = 3.0
WORK_SIDE = 160  # edges are measured on a small copy: cheap, and fine structure is noise here


def windows(width: int, height: int, scales: tuple[float, ...] = (0.7, 0.5), overlap: float = 0.5) -> list[Region]:
    """A grid of boxes of side `scale` x the picture's sides, `overlap` of a box between neighbours."""
    out: list[Region] = []
    for s in scales:
        bw, bh = width * s, height * s
        steps = max(1, int(np.ceil((1 - s) / (s * (1 - overlap)) - 1e-9)) + 1)
        for iy in range(steps):
            for ix in range(steps):
                x0 = (width - bw) * (ix / (steps - 1) if steps > 1 else 0.5)
                y0 = (height - bh) * (iy / (steps - 1) if steps > 1 else 0.5)
                out.append(Region(clip_box((x0, y0, x0 + bw, y0 + bh), width, height), s, "", "window"))
    return out


def _integral(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] + 1, a.shape[1] + 1), np.float64)
    out[1:, 1:] = a.cumsum(0).cumsum(1)
    return out


def _box_sum(ii: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


def edge_boxes(image: Image.Image, *, limit: int = 6, min_area: float = 0.06, max_area: float = 0.6,
               iou_threshold: float = 0.5) -> list[Region]:
    """Boxes whose inside differs most from the ring around them (gradient energy and mean colour),
    best first, in the picture's coordinates."""
    width, height = image.size
    scale = WORK_SIDE / max(width, height)
    small = image.convert("RGB").resize((max(8, round(width * scale)), max(8, round(height * scale))),
                                        Image.Resampling.BILINEAR)
    w, h = small.size
    rgb = np.asarray(small.filter(ImageFilter.GaussianBlur(1)), np.float32) / 255.0
    gray = rgb.mean(axis=2)
    gx = np.zeros_like(gray)
    gy = np.zeros_like(gray)
    gx[:, 1:-1] = gray[:, 2:] - gray[:, :-2]
    gy[1:-1, :] = gray[2:, :] - gray[:-2, :]
    mag = np.sqrt(gx ** 2 + gy ** 2)
    ii_mag = _integral(mag)
    ii_col = [_integral(rgb[:, :, c]) for c in range(3)]
    boxes = []
    for side in np.linspace(np.sqrt(min_area), np.sqrt(max_area), 7):
        for aspect in (0.75, 1.0, 1.33):
            bw = int(round(w * side * np.sqrt(aspect)))
            bh = int(round(h * side / np.sqrt(aspect)))
            if bw < 6 or bh < 6 or bw >= w or bh >= h:
                continue
            step = max(2, min(bw, bh) // 6)
            for y0 in range(0, h - bh + 1, step):
                for x0 in range(0, w - bw + 1, step):
                    boxes.append((x0, y0, x0 + bw, y0 + bh))
    if not boxes:
        return []
    b = np.array(boxes)
    x0, y0, x1, y1 = b.T
    ring = np.maximum(2, ((x1 - x0) + (y1 - y0)) // 10)
    ox0, oy0 = np.maximum(0, x0 - ring), np.maximum(0, y0 - ring)
    ox1, oy1 = np.minimum(w, x1 + ring), np.minimum(h, y1 + ring)
    inner_area = (x1 - x0) * (y1 - y0)
    outer_area = (ox1 - ox0) * (oy1 - oy0) - inner_area
    valid = outer_area > 0
    # the boundary: edge energy on the box's border band (a pasted or placed object has one)
    band = np.ones_like(ring)
    ix0, iy0, ix1, iy1 = x0 + band, y0 + band, x1 - band, y1 - band
    border = (_box_sum(ii_mag, np.maximum(0, x0 - band), np.maximum(0, y0 - band), np.minimum(w, x1 + band),
                       np.minimum(h, y1 + band)) - _box_sum(ii_mag, ix0, iy0, ix1, iy1))
    border_area = ((np.minimum(w, x1 + band) - np.maximum(0, x0 - band)) * (np.minimum(h, y1 + band)
                   - np.maximum(0, y0 - band)) - (ix1 - ix0) * (iy1 - iy0))
    border_mean = border / np.maximum(border_area, 1)
    colour = np.zeros(len(b))
    for ii in ii_col:
        inside = _box_sum(ii, x0, y0, x1, y1)
        around = _box_sum(ii, ox0, oy0, ox1, oy1) - inside
        colour += (inside / inner_area - around / np.maximum(outer_area, 1)) ** 2
    # edges concentrated on the boundary, not spread over the box or its surroundings (texture)
    inside_mean = _box_sum(ii_mag, ix0, iy0, ix1, iy1) / np.maximum((ix1 - ix0) * (iy1 - iy0), 1)
    outside_mean = ((_box_sum(ii_mag, ox0, oy0, ox1, oy1) - _box_sum(ii_mag, x0, y0, x1, y1))
                    / np.maximum(outer_area, 1))
    score = (border_mean - np.maximum(inside_mean, outside_mean)) / (mag.mean() + 1e-6) + W_COLOUR * np.sqrt(colour)
    score[~valid] = -np.inf
    keep = nms(b.astype(np.float64), score, iou_threshold, limit=limit)
    inv = 1.0 / scale
    return [Region(clip_box((b[i, 0] * inv, b[i, 1] * inv, b[i, 2] * inv, b[i, 3] * inv), width, height),
                   float(score[i]), "", "edges") for i in keep]


def dedupe(regions: list[Region], iou_threshold: float = 0.7, limit: int | None = None) -> list[Region]:
    """Drop a region that overlaps an earlier (better) one by more than `iou_threshold`."""
    kept: list[Region] = []
    for r in regions:
        if r.area() <= 0:
            continue
        overlap = iou(np.array([r.box], np.float64), np.array([k.box for k in kept], np.float64)) if kept else None
        if overlap is not None and overlap.max() > iou_threshold:
            continue
        kept.append(r)
        if limit is not None and len(kept) >= limit:
            break
    return kept


class ProposalDetector(Detector):
    """Class-agnostic regions with no model: edge/colour objectness boxes plus a coarse window grid."""

    name = "proposals"

    def __init__(self, *, edges: int = 6, grid: bool = True) -> None:
        self.edges = edges
        self.grid = grid

    def detect(self, image: Image.Image) -> list[Region]:
        found = edge_boxes(image, limit=self.edges) if self.edges else []
        if self.grid:
            found += windows(*image.size)
        return dedupe(found)
