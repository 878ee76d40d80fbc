"""Class-agnostic regions: the window grid, and edge/colour proposals on a real scene."""

from __future__ import annotations

import numpy as np
from PIL import Image

from lookalike.detect import iou, nms
from lookalike.detect.proposals import dedupe, edge_boxes, windows
from lookalike.objects import pick_regions

from ..conftest import FLICKR, ukbench_images


def test_windows_cover_the_picture_inside_its_bounds() -> None:
    found = windows(480, 360)
    assert len(found) == 4 + 9
    assert all(0 <= r.box[0] < r.box[2] <= 480 and 0 <= r.box[1] < r.box[3] <= 360 for r in found)
    assert {r.box for r in found} >= {(0, 0, 336, 252), (144, 108, 480, 360)}


def test_nms_and_dedupe_keep_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float64)
    assert nms(boxes, np.array([0.5, 0.9, 0.1]), 0.5) == [1, 2]
    assert iou(boxes[:1], boxes[2:])[0, 0] == 0


def test_edge_proposals_find_an_object_pasted_on_a_photo() -> None:
    background = Image.open(sorted(FLICKR.rglob("*.jpg"))[3]).convert("RGB").resize((480, 360))
    obj = Image.open(ukbench_images(1, start=40)[0]).convert("RGB").resize((180, 135))
    background.paste(obj, (250, 40))
    truth = np.array([[250, 40, 430, 175]], np.float64)
    edges = dedupe(edge_boxes(background, limit=6))
    assert edges and all(0 <= r.box[0] < r.box[2] <= 480 and 0 <= r.box[1] < r.box[3] <= 360 for r in edges)
    found = pick_regions(background, None)  # edges + the window grid, no detector
    assert 4 <= len(found) <= 16
    assert iou(np.array([r.box for r in found], np.float64), truth).max() >= 0.5
