"""COCO SSD MobileNet: the uint8 .tflite translated to ONNX (dequantized, cut before the TFLite-only
post-processing op), boxes decoded from the anchors in numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.detect import ssd

from ..conftest import FLICKR, SHARED

TFLITE = SHARED / "models" / ssd.TFLITE_NAME
needs_model = pytest.mark.skipif(not TFLITE.is_file(), reason="no shared SSD model")


def test_box_coder_inverts_tf_encoding() -> None:
    anchors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)  # cy, cx, h, w
    raw = np.array([[0.0, 0.0, 0.0, 0.0]], np.float32)
    assert np.allclose(ssd.decode_boxes(raw, anchors, (10, 10, 5, 5)), [[0.3, 0.4, 0.7, 0.6]])
    shifted = ssd.decode_boxes(np.array([[1.0, 2.0, 0.0, 5 * np.log(2)]], np.float32), anchors, (10, 10, 5, 5))
    assert np.allclose(shifted, [[0.5 - 0.4 + 0.08, 0.5 + 0.02 - 0.1, 0.5 + 0.4 + 0.08, 0.5 + 0.02 + 0.1]])


@needs_model
def test_converted_detector_finds_people_in_real_photos(model_cache: Path) -> None:
    det = ssd.SsdDetector(model_cache, threads=1)
    assert det.path.parent == model_cache and det.path.suffix == ".onnx"
    assert det.labels[0] == "person" and det.scales == (10.0, 10.0, 5.0, 5.0)
    photos = sorted(FLICKR.rglob("*.jpg"))[:12]  # Flickr8k: mostly people and dogs
    labels = set()
    for p in photos:
        image = Image.open(p).convert("RGB")
        for r in det.detect(image):
            assert 0 <= r.box[0] < r.box[2] <= image.width and 0 <= r.box[1] < r.box[3] <= image.height
            assert 0.3 <= r.score <= 1.0
            labels.add(r.label)
    assert {"person", "dog"} & labels
    blank = det.detect(Image.new("RGB", (300, 300), (128, 128, 128)))
    assert len(blank) <= 1  # nothing (or next to nothing) in an empty picture
