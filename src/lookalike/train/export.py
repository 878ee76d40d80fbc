"""Export a trained head to ONNX and check it against torch before it is kept."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch

from ..embed.base import l2_normalise
from ..embed.runtime import inference_session

ATOL = 1e-4


class _Export(torch.nn.Module):
    """The head without its final normalisation (the embedder normalises), one named input."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head.raw(features)


def export_head(head: torch.nn.Module, in_dim: int, target: Path, sample: np.ndarray) -> float:
    """Write `target` (ONNX); returns the largest |torch - ONNX Runtime| over `sample`'s unit outputs.
    Raises if it exceeds ATOL, so a model that doesn't reproduce training is never saved."""
    module = _Export(head).cpu().eval()
    example = torch.zeros(2, in_dim)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), buffer, input_names=["features"], output_names=["embedding"],
                          dynamic_axes={"features": {0: "n"}, "embedding": {0: "n"}}, opset_version=17,
                          dynamo=False)
    data = buffer.getvalue()
    x = np.ascontiguousarray(sample, dtype=np.float32)
    with torch.no_grad():
        want = l2_normalise(module(torch.from_numpy(x)).numpy())
    got = l2_normalise(inference_session(data, providers=["CPUExecutionProvider"]).run(None, {"features": x})[0])
    diff = float(np.abs(want - got).max()) if len(x) else 0.0
    if diff > ATOL:
        raise RuntimeError(f"the ONNX export of the head differs from torch by {diff:.2e} (> {ATOL:g})")
    target.write_bytes(data)
    return diff
