"""Export a torch module to ONNX and prove the graph computes the same numbers.

Why: lookalike runs every model with ONNX Runtime, so torch is needed only once, to export. An
export can silently change results (unsupported ops traced as constants, wrong dynamic axes), so
every export is run on two batch sizes in both torch and ONNX Runtime and must agree within `atol`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError

OPSET = 17


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float
    outputs: list[str]
    shapes: list[tuple[int, ...]]


def require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise LookalikeError("this needs PyTorch, an optional extra: `pip install 'lookalike[torch]'`") from exc
    return torch


def export_module(module: Any, example: Any, path: Path, *, input_names: list[str], output_names: list[str],
                  atol: float = 1e-4, check_inputs: list[Any] | None = None) -> ExportReport:
    """torch.onnx.export (legacy tracer, opset 17, dynamic batch) + a numeric check with ONNX Runtime.

    `example` is one input tensor or a tuple of them; `check_inputs` are further inputs of another batch
    size (default: the example repeated twice along the batch axis), so a baked-in batch size fails.
    """
    torch = require_torch()
    from .runtime import inference_session

    examples = example if isinstance(example, tuple) else (example,)
    module = module.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with torch.no_grad():
        torch.onnx.export(module, examples, str(tmp), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    session = inference_session(str(tmp), providers=["CPUExecutionProvider"])
    trials = [examples] + [c if isinstance(c, tuple) else (c,) for c in (check_inputs or [])]
    if not check_inputs:
        trials.append(tuple(torch.cat([t, t]) for t in examples))
    worst = 0.0
    shapes: list[tuple[int, ...]] = []
    for inputs in trials:
        with torch.no_grad():
            ref = module(*inputs)
        refs = ref if isinstance(ref, tuple | list) else (ref,)
        got = session.run(output_names, {n: t.numpy() for n, t in zip(input_names, inputs, strict=True)})
        for r, g in zip(refs, got, strict=True):
            worst = max(worst, float(np.abs(r.detach().numpy() - g).max()))
        shapes = [tuple(g.shape) for g in got]
    if worst > atol:
        tmp.unlink(missing_ok=True)
        raise LookalikeError(f"ONNX export of {type(module).__name__} differs from torch by {worst:.2e} "
                             f"(tolerance {atol:.0e}); not written")
    tmp.replace(path)
    return ExportReport(path, worst, output_names, shapes)


def load_callable(spec: str) -> Any:
    """'package.module:factory' -> the object (called with no arguments if callable) for `lookalike export`."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise LookalikeError(f"'{spec}': use MODULE:CALLABLE, e.g. torchvision.models:resnet18")
    torch = require_torch()
    obj = getattr(importlib.import_module(module_name), attr)
    return obj if isinstance(obj, torch.nn.Module) else obj()
