"""Convert a float32 TFLite image model (MediaPipe's MobileNetV3 embedder) to ONNX without TensorFlow.

Why: Google publishes MediaPipe's embedder only as a .tflite; the usual converter (tf2onnx) needs
TensorFlow, a multi-GB install. The graph uses a handful of ops (convolutions, hard-swish, mean,
average pool, elementwise arithmetic, reshape), so it is translated here op by op, reading the
flatbuffer with the small `tflite` schema package. Tensors are kept NCHW inside the ONNX graph (one
transpose at the input), weights are transposed once at conversion. Unknown ops raise a clear error
rather than producing a wrong graph; `tests/embed/test_mediapipe.py` checks the result against an
independent (tf2onnx) conversion of the same file.

Quantized (uint8) models, such as the COCO SSD MobileNet detector (issue 17), are dequantized at
conversion: weights become float32 ((q - zero_point) * scale, per tensor or per channel), the graph
takes the real pixel values 0..255 as float32 and applies the input's quantization itself, and runs in
float. A graph that ends in TFLite's `TFLite_Detection_PostProcess` custom op (box decoding + NMS,
which ONNX has no equivalent for) is cut before it: the ONNX outputs are the op's inputs (`raw_boxes`
(batch, A, 4) as (ty, tx, th, tw) encodings, `raw_scores` (batch, A, classes + 1) after the sigmoid) and
the constant `anchors` (A, 4) as (cy, cx, h, w); `postprocess_options` reads the op's settings
(scales, IoU threshold) and `lookalike.detect.ssd` decodes the boxes in numpy.
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
    op_names = _op_names()

    def tensor_shape(index: int) -> list[int]:
        t = graph.Tensors(index)
        return [int(x) for x in t.ShapeAsNumpy()] if t.ShapeLength() else []

    def constant(index: int) -> np.ndarray | None:
        t = graph.Tensors(index)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or len(data) == 0:
            return None
        dtype = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.INT32: np.int32,
                 tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT8: np.int8}.get(t.Type())
        if dtype is None:
            raise LookalikeError(f"{tflite_path.name}: tensor type {t.Type()} is not supported")
        array = np.frombuffer(data.tobytes(), dtype=dtype).reshape(tensor_shape(index) or ())
        quant = _quantization(t)
        if quant is None or dtype == np.float32 or (dtype == np.int32 and index in shape_inputs):
            return array
        scale, zero, axis = quant  # dequantize: weights (uint8/int8) and biases (int32, zero point 0)
        if scale.size > 1:
            shape = [1] * array.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return ((array.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)).astype(np.float32)

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
    graph_outputs = [int(t) for t in graph.OutputsAsNumpy()]
    in_shape = tensor_shape(graph_input)
    produced: dict[int, str] = {}
    plain: set[int] = set()  # tensors kept in tflite's own layout (after a reshape), not NCHW
    shape_inputs: set[int] = set()  # int32 constants that are shapes or axes, never dequantized
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if op_names.get(_builtin(model, op), "?") == "RESHAPE" and op.InputsLength() > 1:
            shape_inputs.add(int(op.Inputs(1)))
    source = input_name
    in_quant = _quantization(graph.Tensors(int(graph_input)))
    if in_quant is not None and graph.Tensors(int(graph_input)).Type() != tflite.TensorType.FLOAT32:
        scale, zero, _ = in_quant  # the graph takes real pixel values (0..255) and dequantizes them itself
        source = "input_dequantized"
        nodes.append(helper.make_node("Sub", [input_name, add_const(np.float32(zero.ravel()[0]))], ["input_centred"]))
        nodes.append(helper.make_node("Mul", ["input_centred", add_const(np.float32(scale.ravel()[0]))], [source]))
    nodes.append(helper.make_node("Transpose", [source], ["input_nchw"], perm=[0, 3, 1, 2]))
    produced[int(graph_input)] = "input_nchw"
    postprocess: list[int] = []

    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = op_names.get(_builtin(model, op), "?")
        ins = [int(t) for t in op.InputsAsNumpy()]
        if kind == "CUSTOM" and code.CustomCode() == POSTPROCESS:
            postprocess = ins  # boxes, scores, anchors: decoded outside the graph
            break
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
            source_shape = tensor_shape(ins[0])
            if len(target) == 2 and ins[0] not in plain and source_shape[1:3] == [1, 1]:
                nodes.append(helper.make_node("Flatten", [produced[ins[0]]], [out], axis=1))
            else:  # back to tflite's NHWC order first, then its reshape (batch kept dynamic)
                src = produced[ins[0]]
                if ins[0] not in plain and len(source_shape) == 4:
                    src = fresh("nhwc")
                    nodes.append(helper.make_node("Transpose", [produced[ins[0]]], [src], perm=[0, 2, 3, 1]))
                shape = add_const(np.array([-1, *target[1:]], dtype=np.int64), "shape")
                nodes.append(helper.make_node("Reshape", [src, shape], [out]))
                plain.add(out_index)
        elif kind == "CONCATENATION":
            opts = tflite.ConcatenationOptions()
            opts.Init(table.Bytes, table.Pos)
            axis = opts.Axis() % len(tensor_shape(out_index))
            if not all(t in plain for t in ins):
                if any(t in plain for t in ins) or len(tensor_shape(out_index)) != 4:
                    raise LookalikeError(f"{tflite_path.name}: CONCATENATION {i} mixes layouts")
                axis = _NHWC_TO_NCHW_AXIS[axis]
            nodes.append(helper.make_node("Concat", [produced[t] for t in ins], [out], axis=int(axis)))
            out = activation(out, opts.FusedActivationFunction())
            if all(t in plain for t in ins):
                plain.add(out_index)
        elif kind == "LOGISTIC":
            nodes.append(helper.make_node("Sigmoid", [produced[ins[0]]], [out]))
            if ins[0] in plain:
                plain.add(out_index)
        else:
            raise LookalikeError(f"{tflite_path.name}: tflite op {kind} is not supported by this converter")
        out_tensor = graph.Tensors(out_index)
        out_quant = _quantization(out_tensor)
        if out_quant is not None and out_tensor.Type() in (tflite.TensorType.UINT8, tflite.TensorType.INT8):
            # a quantized output saturates at its range (often the only trace of a ReLU6): clip the float
            scale, zero, _ = out_quant
            low, high = (0, 255) if out_tensor.Type() == tflite.TensorType.UINT8 else (-128, 127)
            s0, z0 = float(scale.ravel()[0]), float(zero.ravel()[0])
            clipped = fresh("range")
            nodes.append(helper.make_node("Clip", [out, add_const(np.float32((low - z0) * s0)),
                                                   add_const(np.float32((high - z0) * s0))], [clipped]))
            out = clipped
        produced[out_index] = out

    if postprocess:
        boxes, scores, anchors = postprocess[:3]
        anchor_values = constant(anchors)
        if anchor_values is None or boxes not in plain or scores not in plain:
            raise LookalikeError(f"{tflite_path.name}: unexpected inputs to {POSTPROCESS}")
        nodes.append(helper.make_node("Identity", [produced[boxes]], ["raw_boxes"]))
        nodes.append(helper.make_node("Identity", [produced[scores]], ["raw_scores"]))
        nodes.append(helper.make_node("Identity", [add_const(anchor_values.astype(np.float32), "anchors")],
                                      ["anchors"]))
        outputs = [helper.make_tensor_value_info("raw_boxes", TensorProto.FLOAT, ["batch", *tensor_shape(boxes)[1:]]),
                   helper.make_tensor_value_info("raw_scores", TensorProto.FLOAT,
                                                 ["batch", *tensor_shape(scores)[1:]]),
                   helper.make_tensor_value_info("anchors", TensorProto.FLOAT, list(anchor_values.shape))]
    else:
        if len(graph_outputs) != 1:
            raise LookalikeError(f"{tflite_path.name}: only single-output models are supported")
        (graph_output,) = graph_outputs
        nodes.append(helper.make_node("Identity", [produced[int(graph_output)]], [output_name]))
        out_dim = tensor_shape(int(graph_output))[-1]
        outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", out_dim])]
    graph_proto = helper.make_graph(
        nodes, "tflite_converted",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", *in_shape[1:]])],
        outputs, inits)
    onnx_model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", 17)],
                                   producer_name="lookalike.tflite_onnx")
    onnx.checker.check_model(onnx_model)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_name(onnx_path.name + ".tmp")
    onnx.save(onnx_model, str(tmp))
    tmp.replace(onnx_path)
    return onnx_path


POSTPROCESS = b"TFLite_Detection_PostProcess"


def _op_names() -> dict[int, str]:
    import tflite

    return {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}


def _builtin(model: Any, op: Any) -> int:
    code = model.OperatorCodes(op.OpcodeIndex())
    return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())


def _quantization(tensor: Any) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(scale, zero_point, axis) of a quantized tensor, None for a float one."""
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None
    scale = q.ScaleAsNumpy()
    zero = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros_like(scale)
    return np.asarray(scale, np.float32), np.asarray(zero, np.int64), int(q.QuantizedDimension())


def postprocess_options(tflite_path: Path) -> dict[str, float]:
    """The settings of a detector's `TFLite_Detection_PostProcess` op (y_scale, x_scale, h_scale, w_scale,
    nms_iou_threshold, nms_score_threshold, max_detections, num_classes, ...); {} if it has none."""
    import tflite
    from flatbuffers import flexbuffers

    model = tflite.Model.GetRootAsModel(Path(tflite_path).read_bytes(), 0)
    graph = model.Subgraphs(0)
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).CustomCode() == POSTPROCESS:
            raw = flexbuffers.Loads(bytes(op.CustomOptionsAsNumpy()))
            return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float | bool)}
    return {}
