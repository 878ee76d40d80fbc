"""Execution providers and fp16: the GPU path converts graphs to half precision; here the same
conversion is run on CPU (LOOKALIKE_FP16=1) and must stay close to fp32 on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.embed import get_embedder, runtime

from ..conftest import ukbench_images


def test_fp16_only_on_gpu_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOKALIKE_FP16", raising=False)
    assert runtime.use_fp16(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runtime.use_fp16(["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    assert not runtime.use_fp16(["CPUExecutionProvider"])
    monkeypatch.setenv("LOOKALIKE_FP16", "0")
    assert not runtime.use_fp16(["CUDAExecutionProvider"])
    monkeypatch.setenv("LOOKALIKE_DEVICE", "cpu")
    assert runtime.providers() == ["CPUExecutionProvider"]


def test_fp16_graph_matches_fp32(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = [Image.open(p).convert("RGB") for p in ukbench_images(4, start=300)]
    monkeypatch.setenv("LOOKALIKE_FP16", "0")
    fp32 = get_embedder("mobilenet-v3-small", model_cache, threads=1).embed_images(images)
    monkeypatch.setenv("LOOKALIKE_FP16", "1")
    half = get_embedder("mobilenet-v3-small", model_cache, threads=1)
    assert half.session.get_inputs()[0].type == "tensor(float)"  # callers still pass float32
    fp16 = half.embed_images(images)
    assert fp16.dtype == np.float32
    cos = (fp32 * fp16).sum(axis=1)
    assert cos.min() > 0.999, cos
    assert next(model_cache.glob("*.fp16.onnx")).stat().st_size < 0.6 * half.path.stat().st_size
    assert not list(half.path.parent.glob("*.fp16.onnx")) or half.path.parent == model_cache


def test_sessions_switch_telemetry_events_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session comes from `inference_session`, which also turns ONNX Runtime's events off (for a
    program that imported onnxruntime before lookalike, when ORT_DISABLE_TELEMETRY came too late)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    calls: list[bool] = []
    monkeypatch.setattr(runtime.ort, "disable_telemetry_events", lambda: calls.append(True))
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "1")
    session = runtime.make_session(model.SerializeToString(), threads=1, device="cpu")
    assert session.run(None, {"x": np.ones(1, np.float32)})[0] == 1.0 and calls == [True]
    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")  # opted in (LOOKALIKE_ORT_TELEMETRY=1 or the user's own)
    runtime.make_session(model.SerializeToString(), threads=1, device="cpu")
    assert calls == [True]
