"""Build an ONNX inference graph for EfficientNet-Lite directly from a torch state_dict.

Why: the pretrained EfficientNet-Lite weights are published only as torch checkpoints. Exporting
them through ``torch.onnx`` would make torch a run-time dependency, so instead the (small, fixed)
architecture of ``efficientnet_lite_pytorch`` 0.1.0 is re-expressed here with ``onnx.helper``.
Everything that the reference fixes at construction time is reproduced exactly: block arguments,
width/depth rounding with a fixed stem and head, TF-style static "same" padding for one image size,
BatchNorm eps 1e-3, ReLU6, no squeeze-excite. BatchNorm is folded into the convolutions, which
leaves a graph of Conv / Clip / Add plus the pooled classifier.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["VARIANTS", "build_efficientnet_lite_onnx", "save_onnx"]

OPSET = 17
BN_EPS = 1e-3
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_DEPTH_DIVISOR = 8


@dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    image_size: int


# (width_coefficient, depth_coefficient, resolution) from efficientnet_lite_builder.py
VARIANTS: dict[str, _Variant] = {
    "lite0": _Variant(1.0, 1.0, 224),
    "lite1": _Variant(1.0, 1.1, 240),
    "lite2": _Variant(1.1, 1.2, 260),
    "lite3": _Variant(1.2, 1.4, 280),
    "lite4": _Variant(1.4, 1.8, 300),
}

# Stages: (repeats, kernel, stride, expand_ratio, in_filters, out_filters), before scaling.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _round_filters(filters: int, width: float) -> int:
    """Channel rounding of the reference (TF) implementation: nearest multiple of 8, >= 90%."""
    scaled = filters * width
    new = max(_DEPTH_DIVISOR, int(scaled + _DEPTH_DIVISOR / 2) // _DEPTH_DIVISOR * _DEPTH_DIVISOR)
    if new < 0.9 * scaled:
        new += _DEPTH_DIVISOR
    return int(new)


def _same_pads(size: int, kernel: int, stride: int) -> list[int]:
    """ONNX ``pads`` for TF "same" padding at a fixed input size (extra pixel goes bottom/right)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    begin = total // 2
    return [begin, begin, total - begin, total - begin]


class _Builder:
    """Accumulates nodes and initializers; names follow the state_dict prefixes for readability."""

    def __init__(self, state_dict: Mapping[str, np.ndarray]) -> None:
        self.sd = state_dict
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "relu6_min"))
        self.inits.append(numpy_helper.from_array(np.array(6.0, np.float32), "relu6_max"))

    def _get(self, key: str) -> np.ndarray:
        if key not in self.sd:
            raise KeyError(f"state_dict lacks {key!r}")
        return np.asarray(self.sd[key], dtype=np.float64)

    def conv_bn(
        self, x: str, conv: str, bn: str, *, stride: int, size: int, groups: int = 1, relu6: bool = True
    ) -> str:
        """Conv (no bias) + BatchNorm folded into one Conv, optionally followed by Clip(0, 6)."""
        w = self._get(f"{conv}.weight")
        gamma, beta = self._get(f"{bn}.weight"), self._get(f"{bn}.bias")
        mean, var = self._get(f"{bn}.running_mean"), self._get(f"{bn}.running_var")
        scale = gamma / np.sqrt(var + BN_EPS)
        w_f = (w * scale[:, None, None, None]).astype(np.float32)
        b_f = (beta - mean * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w_f, f"{conv}.weight"))
        self.inits.append(numpy_helper.from_array(b_f, f"{conv}.bias"))
        k = w.shape[-1]
        out = f"{conv}.out"
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{conv}.weight", f"{conv}.bias"],
                [out],
                name=conv,
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=_same_pads(size, k, stride),
                group=groups,
            )
        )
        if not relu6:
            return out
        act = f"{conv}.relu6"
        self.nodes.append(helper.make_node("Clip", [out, "relu6_min", "relu6_max"], [act], name=act))
        return act


def build_efficientnet_lite_onnx(
    state_dict: Mapping[str, np.ndarray], variant: str, image_size: int | None = None
) -> onnx.ModelProto:
    """Return an opset-17 ONNX model equivalent to ``efficientnet_lite_pytorch`` in eval mode.

    Input ``image``: (batch, 3, S, S) float32, already normalised as (pixel - 127) / 128.
    Outputs ``feature_map``: (batch, 1280, h, w) head activation after conv_head+BN+ReLU6 (the caller
    chooses the pooling); ``logits``: (batch, 1000), fc on the average-pooled head (dropout is a no-op).
    ``image_size`` defaults to the variant's native size; padding is static, as in the reference,
    so the model only accepts that size.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(VARIANTS)}")
    cfg = VARIANTS[variant]
    in_size = size = int(image_size or cfg.image_size)
    b = _Builder(state_dict)

    # Stem is fixed at 32 channels for all Lite variants (fix_head_stem).
    x = b.conv_bn("image", "_conv_stem", "_bn0", stride=2, size=size)
    size = math.ceil(size / 2)

    idx = 0
    last = len(_STAGES) - 1
    for stage, (repeats, kernel, stride, expand, in_f, out_f) in enumerate(_STAGES):
        in_f = _STEM_CHANNELS if stage == 0 else _round_filters(in_f, cfg.width)
        out_f = _round_filters(out_f, cfg.width)
        if stage not in (0, last):  # first and last stages keep their depth (fix_head_stem)
            repeats = int(math.ceil(cfg.depth * repeats))
        for rep in range(repeats):
            s = stride if rep == 0 else 1
            cin = in_f if rep == 0 else out_f
            p = f"_blocks.{idx}"
            inp = x
            if expand != 1:
                x = b.conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", stride=1, size=size)
            hidden = cin * expand
            dw_shape = tuple(np.shape(state_dict.get(f"{p}._depthwise_conv.weight", ())))
            if dw_shape != (hidden, 1, kernel, kernel):
                raise ValueError(f"{p}: depthwise weight {dw_shape} does not match {variant}; wrong variant?")
            x = b.conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", stride=s, size=size, groups=hidden)
            size = math.ceil(size / s)
            x = b.conv_bn(x, f"{p}._project_conv", f"{p}._bn2", stride=1, size=size, relu6=False)
            # The reference only adds the skip on repeated blocks: the first block of a stage keeps
            # its stride as a list, so its `stride == 1` test is False (and cin != out_f anyway).
            if rep > 0:
                out = f"{p}.add"
                b.nodes.append(helper.make_node("Add", [x, inp], [out], name=out))
                x = out
            idx += 1
    if any(k.startswith(f"_blocks.{idx}.") for k in state_dict):
        raise ValueError(f"state_dict has more blocks than {variant} ({idx}); wrong variant?")

    feat = b.conv_bn(x, "_conv_head", "_bn1", stride=1, size=size)
    b.nodes.append(helper.make_node("Identity", [feat], ["feature_map"], name="feature_map"))
    b.nodes.append(helper.make_node("GlobalAveragePool", ["feature_map"], ["pooled4d"], name="avgpool"))
    b.nodes.append(helper.make_node("Flatten", ["pooled4d"], ["pooled"], name="flatten", axis=1))
    fc_w = np.asarray(state_dict["_fc.weight"], dtype=np.float32)
    fc_b = np.asarray(state_dict["_fc.bias"], dtype=np.float32)
    b.inits.append(numpy_helper.from_array(fc_w, "_fc.weight"))
    b.inits.append(numpy_helper.from_array(fc_b, "_fc.bias"))
    fc_inputs = ["pooled", "_fc.weight", "_fc.bias"]
    b.nodes.append(helper.make_node("Gemm", fc_inputs, ["logits"], name="_fc", transB=1))

    n_feat = int(np.shape(state_dict["_conv_head.weight"])[0])
    graph = helper.make_graph(
        b.nodes,
        f"efficientnet_{variant}_{in_size}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, in_size, in_size])],
        [
            helper.make_tensor_value_info("feature_map", TensorProto.FLOAT, ["batch", n_feat, size, size]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", fc_w.shape[0]]),
        ],
        initializer=b.inits,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="lookalike")
    model.ir_version = 8  # opset 17 needs IR >= 8; keep it low so older onnxruntime builds load it
    onnx.checker.check_model(model)
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Write ``model`` atomically (temp file in the same directory, then ``os.replace``).

    Why: model files are cached and may be read by a concurrent process; a half-written file must
    never be visible under the final name.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
