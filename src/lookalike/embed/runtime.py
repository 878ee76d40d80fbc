"""ONNX Runtime sessions with the best execution provider present and sensible threads."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

_PREFERRED = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CoreMLExecutionProvider",
              "CPUExecutionProvider"]


def providers(device: str = "auto") -> list[str]:
    """Providers in preference order; `device` is auto, cpu or gpu (LOOKALIKE_DEVICE overrides)."""
    device = os.environ.get("LOOKALIKE_DEVICE", device)
    available = set(ort.get_available_providers())
    if device == "cpu":
        return ["CPUExecutionProvider"]
    chosen = [p for p in _PREFERRED if p in available]
    return chosen or ["CPUExecutionProvider"]


def make_session(model: Path | bytes, *, threads: int = 0, device: str = "auto") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads <= 0:
        threads = int(os.environ.get("LOOKALIKE_THREADS", "0")) or (os.cpu_count() or 1)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=providers(device))
