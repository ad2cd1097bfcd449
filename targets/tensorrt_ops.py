"""What TensorRT's ONNX parser takes: operators, their tensor types and the restrictions that
can be checked on the graph, from onnx-tensorrt's operator matrix (docs/operators.md) for
TensorRT 10.15, opsets 9 to 24.

`problems(model)` lists every node the parser would refuse, with why; the tensorrt target
refuses a model that has any (or rewrites them first: edgec's own ops, attention).
INT8 is a quantized type there: it reaches MatMul and Conv only through Q/DQ pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

TENSORRT_VERSION = "10.15"
OPSETS = (9, 24)


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


F = ("FLOAT", "FLOAT16", "BFLOAT16")
I = ("INT32", "INT64")  # noqa: E741
B = ("BOOL",)
_FLOAT_OPS = _names(
    "Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv "
    "ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool "
    "GlobalLpPool GlobalMaxPool GroupNormalization GRU HardSigmoid HardSwish Hardmax "
    "ImageScaler InstanceNormalization IsInf LayerNormalization LeakyRelu Log LogSoftmax LRN "
    "LSTM LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization Mish "
    "ParametricSoftplus PRelu RandomNormal RandomNormalLike RandomUniform RandomUniformLike "
    "Reciprocal Resize RMSNormalization RNN RotaryEmbedding Round ScaledTanh Scan Selu "
    "Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh ThresholdedRelu Upsample "
    "QuantizeLinear GridSample DeformConv NonMaxSuppression NonZero RoiAlign"
)
_NUMERIC_OPS = _names(
    "Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less "
    "LessOrEqual Max Mean Min Mod Mul Neg Pad Pow Range ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu "
    "Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK Gelu"
)
_ANY_OPS = _names(
    "Cast CastLike Concat Constant ConstantOfShape Expand EyeLike Flatten Gather "
    "GatherElements GatherND Identity If Loop OneHot Reshape ReverseSequence Shape Size Slice "
    "Split Squeeze Tile Transpose Trilu Unsqueeze Where"
)

# op -> the element types its (first) input may have
TYPES: dict[str, tuple[str, ...]] = {
    **{op: F for op in _FLOAT_OPS},
    **{op: F + I for op in _NUMERIC_OPS},
    **{op: F + I + B + ("UINT8",) for op in _ANY_OPS},
    **{op: B for op in ("And", "Not", "Or", "Xor")},
    "DequantizeLinear": ("INT8", "FLOAT8E4M3FN", "INT4"),
    "Attention": F,
}


def _attr(node: ir.Node, name: str, default: object = None) -> object:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _is_const(value: ir.Value | None) -> bool:
    return value is not None and ir.convenience.get_const_tensor(value) is not None


def _zero_point(index: int) -> Callable[[ir.Node], str | None]:
    def check(node: ir.Node) -> str | None:
        if len(node.inputs) <= index or node.inputs[index] is None:
            return None
        tensor = ir.convenience.get_const_tensor(node.inputs[index])  # type: ignore[arg-type]
        if tensor is None or tensor.numpy().any():
            return "the zero point must be a constant zero"
        return None

    return check


def _pool(node: ir.Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return "the Indices output is unsupported"
    dilations = _attr(node, "dilations")
    if dilations and any(d != 1 for d in dilations):  # type: ignore[union-attr]
        return "dilations must be all ones"
    x = node.inputs[0]
    rank = x.shape.rank() if x is not None and x.shape is not None else None
    if rank is not None and rank not in (4, 5):
        return "only 2-D and 3-D pooling"
    return None


def _constant_input(index: int, what: str) -> Callable[[ir.Node], str | None]:
    def check(node: ir.Node) -> str | None:
        given = len(node.inputs) > index and node.inputs[index] is not None
        if given and not _is_const(node.inputs[index]):
            return f"{what} must be a constant"
        return None

    return check


def _first_output_only(node: ir.Node) -> str | None:
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return "only the first output is supported"
    return None


def _resize(node: ir.Node) -> str | None:
    mode = _attr(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        return f"mode '{mode}' (only nearest and linear)"
    coords = _attr(node, "coordinate_transformation_mode", "half_pixel")
    supported = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric")
    if coords not in (*supported, "align_corners"):
        return f"coordinate transformation '{coords}'"
    if _attr(node, "antialias", 0):
        return "antialiasing"
    return None


def _attention(node: ir.Node) -> str | None:
    if len(node.inputs) > 4 and any(v is not None for v in node.inputs[4:]):
        return "past key/value and nonpad_kv_seqlen inputs are unsupported"
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return "present key/value and qk_matmul_output outputs are unsupported"
    if _attr(node, "softcap", 0.0) or _attr(node, "qk_matmul_output_mode", 0):
        return "softcap and qk_matmul_output_mode are unsupported"
    return None


def _topk(node: ir.Node) -> str | None:
    if not _attr(node, "sorted", 1):
        return "sorted must be 1"
    return _constant_input(1, "K")(node)


def _dropout(node: ir.Node) -> str | None:
    return _constant_input(2, "training_mode")(node)


RESTRICTIONS: dict[str, Callable[[ir.Node], str | None]] = {
    "AveragePool": _pool,
    "MaxPool": _pool,
    "LpPool": _pool,
    "DequantizeLinear": _zero_point(2),
    "QuantizeLinear": _zero_point(2),
    "LayerNormalization": _first_output_only,
    "Resize": _resize,
    "Attention": _attention,
    "TopK": _topk,
    "Dropout": _dropout,
    "CumSum": _constant_input(1, "axis"),
    "OneHot": _constant_input(1, "depth"),
    "Squeeze": _constant_input(1, "axes"),
    "Unsqueeze": _constant_input(1, "axes"),
    **{op: _constant_input(1, "axes") for op in _NUMERIC_OPS if op.startswith("Reduce")},
}


def _dtype(value: ir.Value | None) -> str | None:
    if value is None or value.dtype is None:
        return None
    return value.dtype.name


def node_problem(node: ir.Node) -> str | None:
    """Why TensorRT's parser would refuse `node` (None: it takes it)."""
    if node.domain not in ("", "ai.onnx"):
        return f"operator domain '{node.domain}' (TensorRT parses the standard domain only)"
    types = TYPES.get(node.op_type)
    if types is None:
        return "not an operator TensorRT's ONNX parser supports"
    dtype = _dtype(node.inputs[0] if node.inputs else None)
    if dtype is not None and dtype not in types:
        return f"input type {dtype} (supported: {', '.join(types)})"
    check = RESTRICTIONS.get(node.op_type)
    return None if check is None else check(node)


def problems(model: ir.Model) -> list[str]:
    """Every node of the model (subgraphs included) TensorRT's parser would refuse, as
    "Op 'node name': why"; a standard opset outside TensorRT's range comes first."""
    found = [
        f"{n.op_type} '{n.name or '?'}': {why}"
        for n in model.graph.all_nodes()
        if (why := node_problem(n)) is not None
    ]
    opset = model.opset_imports.get("", 1)
    if not OPSETS[0] <= opset <= OPSETS[1]:
        found.insert(
            0, f"opset {opset}: TensorRT {TENSORRT_VERSION} parses {OPSETS[0]}-{OPSETS[1]}"
        )
    return found
