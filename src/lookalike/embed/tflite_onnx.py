"""Convert a float32 TFLite image model (MediaPipe's MobileNetV3 embedder) to ONNX without TensorFlow.

Why: Google publishes MediaPipe's embedder only as a .tflite; the usual converter (tf2onnx) needs
TensorFlow, a multi-GB install. The graph uses a handful of ops (convolutions, hard-swish, mean,
average pool, elementwise arithmetic, reshape), so it is translated here op by op, reading the
flatbuffer with the small `tflite` schema package. Tensors are kept NCHW inside the ONNX graph (one
transpose at the input), weights are transposed once at conversion. Unknown ops raise a clear error
rather than producing a wrong graph; `tests/embed/test_tflite_onnx.py` checks the result against an
independent (tf2onnx) conversion of the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LookalikeError

_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def convert(tflite_path: Path, onnx_path: Path, *, input_name: str = "image", output_name: str = "embedding") -> Path:
    """Write an ONNX graph equivalent to the tflite model: input (batch, H, W, 3) float32 NHWC as the
    tflite one, output (batch, D)."""
    import onnx
    import tflite
    from onnx import TensorProto, helper, numpy_helper

    buf = Path(tflite_path).read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

    def tensor_shape(index: int) -> list[int]:
        t = graph.Tensors(index)
        return [int(x) for x in t.ShapeAsNumpy()] if t.ShapeLength() else []

    def constant(index: int) -> np.ndarray | None:
        t = graph.Tensors(index)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or len(data) == 0:
            return None
        dtype = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT32: np.int32}.get(t.Type())
        if dtype is None:
            raise LookalikeError(f"{tflite_path.name}: tensor type {t.Type()} is not supported (float32 models only)")
        return np.frombuffer(data.tobytes(), dtype=dtype).reshape(tensor_shape(index) or ())

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def fresh(stem: str) -> str:
        counter[0] += 1
        return f"{stem}_{counter[0]}"

    def add_const(array: np.ndarray, stem: str = "c") -> str:
        name = fresh(stem)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def value(index: int) -> str:
        """The ONNX name of a tflite tensor: activations by index, constants as NCHW-ready initialisers."""
        if index in produced:
            return produced[index]
        array = constant(index)
        if array is None:
            raise LookalikeError(f"{tflite_path.name}: tensor {index} has no producer and no data")
        if array.ndim == 1 and array.dtype == np.float32:  # per-channel NHWC vector -> (C,1,1)
            array = array.reshape(-1, 1, 1)
        elif array.ndim == 4:
            array = array.transpose(0, 3, 1, 2)
        return add_const(array.astype(np.float32) if array.dtype == np.float32 else array)

    def activation(name: str, fused: int) -> str:
        if fused == tflite.ActivationFunctionType.NONE:
            return name
        out = fresh("act")
        if fused == tflite.ActivationFunctionType.RELU:
            nodes.append(helper.make_node("Relu", [name], [out]))
        elif fused == tflite.ActivationFunctionType.RELU6:
            nodes.append(helper.make_node("Clip", [name, add_const(np.float32(0)), add_const(np.float32(6))], [out]))
        else:
            raise LookalikeError(f"{tflite_path.name}: fused activation {fused} is not supported")
        return out

    def padding_attr(code: int) -> str:
        return "SAME_UPPER" if code == tflite.Padding.SAME else "VALID"

    (graph_input,) = graph.InputsAsNumpy()
    (graph_output,) = graph.OutputsAsNumpy()
    in_shape = tensor_shape(graph_input)
    produced: dict[int, str] = {}
    nodes.append(helper.make_node("Transpose", [input_name], ["input_nchw"], perm=[0, 3, 1, 2]))
    produced[int(graph_input)] = "input_nchw"

    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        ins = [int(t) for t in op.InputsAsNumpy()]
        (out_index,) = [int(t) for t in op.OutputsAsNumpy()]
        table = op.BuiltinOptions()
        out = fresh(kind.lower())
        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            opts = (tflite.Conv2DOptions() if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions())
            opts.Init(table.Bytes, table.Pos)
            weight = constant(ins[1])
            bias = constant(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            if weight is None:
                raise LookalikeError(f"{tflite_path.name}: {kind} {i} has a non-constant filter")
            if kind == "CONV_2D":  # (O, H, W, I) -> (O, I, H, W)
                w, group = weight.transpose(0, 3, 1, 2), 1
            else:  # (1, H, W, C*m) -> (C*m, 1, H, W)
                w = weight.transpose(3, 0, 1, 2)
                group = w.shape[0] // max(1, opts.DepthMultiplier())
            inputs = [produced[ins[0]], add_const(w.astype(np.float32), "w")]
            if bias is not None:
                inputs.append(add_const(bias.astype(np.float32), "b"))
            nodes.append(helper.make_node(
                "Conv", inputs, [out], group=int(group), strides=[opts.StrideH(), opts.StrideW()],
                dilations=[opts.DilationHFactor(), opts.DilationWFactor()], auto_pad=padding_attr(opts.Padding()),
                kernel_shape=list(w.shape[2:])))
            out = activation(out, opts.FusedActivationFunction())
        elif kind == "HARD_SWISH":
            nodes.append(helper.make_node("HardSwish", [produced[ins[0]]], [out]))
        elif kind in ("ADD", "SUB", "MUL"):
            opts = {"ADD": tflite.AddOptions, "SUB": tflite.SubOptions, "MUL": tflite.MulOptions}[kind]()
            opts.Init(table.Bytes, table.Pos)
            nodes.append(helper.make_node(kind.capitalize(), [value(ins[0]), value(ins[1])], [out]))
            out = activation(out, opts.FusedActivationFunction())
        elif kind == "MEAN":
            axes = constant(ins[1])
            opts = tflite.ReducerOptions()
            opts.Init(table.Bytes, table.Pos)
            axes_nchw = sorted(_NHWC_TO_NCHW_AXIS[int(a) % 4] for a in np.atleast_1d(axes))
            nodes.append(helper.make_node("ReduceMean", [produced[ins[0]]], [out], axes=axes_nchw,
                                          keepdims=int(opts.KeepDims())))
            if not opts.KeepDims():
                raise LookalikeError(f"{tflite_path.name}: MEAN without keep_dims is not supported")
        elif kind == "AVERAGE_POOL_2D":
            opts = tflite.Pool2DOptions()
            opts.Init(table.Bytes, table.Pos)
            nodes.append(helper.make_node(
                "AveragePool", [produced[ins[0]]], [out], kernel_shape=[opts.FilterHeight(), opts.FilterWidth()],
                strides=[opts.StrideH(), opts.StrideW()], auto_pad=padding_attr(opts.Padding())))
            out = activation(out, opts.FusedActivationFunction())
        elif kind == "RESHAPE":
            target = tensor_shape(out_index)
            if len(target) != 2:
                raise LookalikeError(f"{tflite_path.name}: only a final reshape to (batch, features) is supported")
            nodes.append(helper.make_node("Flatten", [produced[ins[0]]], [out], axis=1))
        else:
            raise LookalikeError(f"{tflite_path.name}: tflite op {kind} is not supported by this converter")
        produced[out_index] = out

    nodes.append(helper.make_node("Identity", [produced[int(graph_output)]], [output_name]))
    out_dim = tensor_shape(int(graph_output))[-1]
    graph_proto = helper.make_graph(
        nodes, "tflite_converted",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", *in_shape[1:]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", out_dim])],
        inits)
    onnx_model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)],
                                   producer_name="lookalike.tflite_onnx")
    onnx.checker.check_model(onnx_model)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    onnx.save(onnx_model, str(tmp))
    tmp.replace(onnx_path)
    return onnx_path
