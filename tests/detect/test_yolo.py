"""The YOLO loader, tested without weights: tiny ONNX graphs built here whose output is a known constant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.detect import get_detector
from lookalike.detect.yolo import YoloDetector
from lookalike.errors import LookalikeError


def constant_model(path: Path, output: np.ndarray, side: int = 64) -> Path:
    """A graph with a (1, 3, side, side) input whose output is `output` (+ 0 * the input's mean)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["pred", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        [numpy_helper.from_array(output.astype(np.float32), "pred"),
         numpy_helper.from_array(np.zeros((1,), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_v8_layout_boxes_map_back_through_the_letterbox(tmp_path: Path) -> None:
    # two candidates, (4 + 2 classes, N=8): one strong box, one weak, and six empty ones
    pred = np.zeros((1, 6, 8), np.float32)
    pred[0, :, 0] = [32, 32, 16, 16, 0.9, 0.1]  # centre of the 64x64 input, class 0
    pred[0, :, 1] = [10, 40, 8, 8, 0.05, 0.1]  # below the score threshold
    det = get_detector(f"yolo:{constant_model(tmp_path / 'v8.onnx', pred)}", tmp_path)
    assert isinstance(det, YoloDetector)
    found = det.detect(Image.new("RGB", (128, 64), "white"))  # letterboxed: scale 0.5, 16 px bands above/below
    assert len(found) == 1
    x0, y0, x1, y1 = found[0].box
    assert (x0, x1) == (48, 80) and (y0, y1) == (16, 48)  # (32 +- 8 - 0) / 0.5, (32 +- 8 - 16) / 0.5
    assert found[0].label == "0" and found[0].score == pytest.approx(0.9)


def test_v5_layout_uses_objectness_and_nms(tmp_path: Path) -> None:
    pred = np.zeros((1, 12, 7), np.float32)  # (N=12, 5 + 2 classes)
    pred[0, 0] = [20, 20, 10, 10, 0.9, 0.1, 0.8]
    pred[0, 1] = [21, 20, 10, 10, 0.8, 0.1, 0.8]  # overlaps the first: suppressed
    pred[0, 2] = [50, 50, 8, 8, 0.2, 0.9, 0.1]  # objectness x class = 0.18 < 0.25
    det = YoloDetector(constant_model(tmp_path / "v5.onnx", pred), labels=["a", "b"])
    found = det.detect(Image.new("RGB", (64, 64)))
    assert [r.label for r in found] == ["b"] and found[0].box == (15, 15, 25, 25)


def test_bad_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(LookalikeError, match="does not exist"):
        get_detector(f"yolo:{tmp_path / 'none.onnx'}", tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(LookalikeError, match="not a loadable ONNX model") as err:
        YoloDetector(junk)
    assert "\n" not in str(err.value)
    with pytest.raises(LookalikeError, match="unknown detector"):
        get_detector("nope", tmp_path)


def test_library_uses_the_detector_a_user_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lookalike import Library
    from lookalike.objects import pick_regions

    pred = np.zeros((1, 5, 8), np.float32)  # one class
    pred[0, :, 0] = [30, 34, 40, 30, 0.95]
    monkeypatch.setenv("LOOKALIKE_DETECTOR", f"yolo:{constant_model(tmp_path / 'mine.onnx', pred)}")
    with Library.open(tmp_path / "lib") as lib:
        det = lib.detector()
        assert isinstance(det, YoloDetector)
        image = Image.new("RGB", (64, 64), "white")
        assert pick_regions(image, det.detect)[0].box == (10, 19, 50, 49)  # detector boxes come first
