"""Core ML lowering rules: elementwise arithmetic, activations, comparisons, reductions, casts.

Most ONNX ops here are one MIL op (the tables); the others are a few MIL ops each.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from coremltools.converters.mil.mil import Builder as mb

from edgec.core.errors import UnsupportedOpError
from edgec.targets.coreml_context import (
    CAST_NAMES,
    Context,
    Mil,
    Rule,
    binary,
    ints,
    name_of,
    rank_axis,
    unary,
)
from edgec.targets.coreml_ops_shape import broadcast_to

UNARY = {
    "Relu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Abs": "abs",
    "Sign": "sign",
    "Floor": "floor",
    "Ceil": "ceil",
    "Erf": "erf",
    "Softplus": "softplus",
    "Sin": "sin",
    "Cos": "cos",
    "Not": "logical_not",
    "Identity": "identity",
}
BINARY = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Pow": "pow",
    "Equal": "equal",
    "Less": "less",
    "LessOrEqual": "less_equal",
    "Greater": "greater",
    "GreaterOrEqual": "greater_equal",
    "And": "logical_and",
    "Or": "logical_or",
    "Xor": "logical_xor",
}
REDUCE = {
    "ReduceMean": "reduce_mean",
    "ReduceSum": "reduce_sum",
    "ReduceMax": "reduce_max",
    "ReduceMin": "reduce_min",
    "ReduceProd": "reduce_prod",
    "ReduceL1": "reduce_l1_norm",
    "ReduceL2": "reduce_l2_norm",
    "ReduceSumSquare": "reduce_sum_square",
    "ReduceLogSumExp": "reduce_log_sum_exp",
}
FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE)


def _div(ctx: Context, node: ir.Node) -> list[Mil]:
    if node.outputs[0].dtype not in FLOATS:
        raise UnsupportedOpError(
            f"Div node '{node.name}' divides integers (ONNX truncates, Core ML's floor_div "
            "floors): not lowered"
        )
    return binary("real_div")(ctx, node)


def _variadic(op: str) -> Rule:
    """Max, Min, Sum: a chain of the binary MIL op over every input."""

    def rule(ctx: Context, node: ir.Node) -> list[Mil]:
        xs = [ctx.x(v) for v in node.inputs]
        if len(xs) == 1:
            return [mb.identity(x=xs[0], name=name_of(node))]
        acc = xs[0]
        for i, x in enumerate(xs[1:]):
            last = i == len(xs) - 2
            acc = getattr(mb, op)(x=acc, y=x, **({"name": name_of(node)} if last else {}))
        return [acc]

    return rule


def _reciprocal(ctx: Context, node: ir.Node) -> list[Mil]:
    # MIL's inverse adds an epsilon (1e-4 by default) to x: ONNX's Reciprocal adds none
    return [mb.inverse(x=ctx.x(node.inputs[0]), epsilon=np.float32(0.0), name=name_of(node))]


def _neg(ctx: Context, node: ir.Node) -> list[Mil]:
    return [mb.mul(x=ctx.x(node.inputs[0]), y=np.float32(-1.0), name=name_of(node))]


def _gelu(ctx: Context, node: ir.Node) -> list[Mil]:
    approx = node.attributes.get_string("approximate", "none")
    mode = "TANH_APPROXIMATION" if approx == "tanh" else "EXACT"
    return [mb.gelu(x=ctx.x(node.inputs[0]), mode=mode, name=name_of(node))]


def _alpha(op: str, onnx_default: float) -> Rule:
    def rule(ctx: Context, node: ir.Node) -> list[Mil]:
        alpha = node.attributes.get_float("alpha", onnx_default)
        return [getattr(mb, op)(x=ctx.x(node.inputs[0]), alpha=alpha, name=name_of(node))]

    return rule


def _hard_sigmoid(ctx: Context, node: ir.Node) -> list[Mil]:
    alpha = node.attributes.get_float("alpha", 0.2)
    beta = node.attributes.get_float("beta", 0.5)
    return [mb.sigmoid_hard(x=ctx.x(node.inputs[0]), alpha=alpha, beta=beta, name=name_of(node))]


def _hard_swish(ctx: Context, node: ir.Node) -> list[Mil]:
    x = ctx.x(node.inputs[0])
    gate = mb.sigmoid_hard(x=x, alpha=1.0 / 6.0, beta=0.5)
    return [mb.mul(x=x, y=gate, name=name_of(node))]


def _silu_like(ctx: Context, node: ir.Node) -> list[Mil]:  # Swish (opset 24) with alpha 1
    if node.attributes.get_float("alpha", 1.0) != 1.0:
        raise UnsupportedOpError(f"Swish node '{node.name}' has alpha != 1")
    return [mb.silu(x=ctx.x(node.inputs[0]), name=name_of(node))]


def _prelu(ctx: Context, node: ir.Node) -> list[Mil]:
    slope = ctx.const(node.inputs[1])
    x = ctx.x(node.inputs[0])
    if slope is None:  # max(x, 0) + slope * min(x, 0)
        neg = mb.mul(x=mb.minimum(x=x, y=np.float32(0.0)), y=ctx.x(node.inputs[1]))
        return [mb.add(x=mb.relu(x=x), y=neg, name=name_of(node))]
    if slope.size == 1:
        return [mb.leaky_relu(x=x, alpha=float(slope.reshape(())), name=name_of(node))]
    neg = mb.mul(x=mb.minimum(x=x, y=np.float32(0.0)), y=slope.astype(np.float32))
    return [mb.add(x=mb.relu(x=x), y=neg, name=name_of(node))]


def _clip(ctx: Context, node: ir.Node) -> list[Mil]:
    x = ctx.x(node.inputs[0])
    lo = ctx.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    hi = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) == 1:  # opset 6: attributes
        lo_a, hi_a = node.attributes.get("min"), node.attributes.get("max")
        lo = np.float32(lo_a.as_float()) if lo_a is not None else None
        hi = np.float32(hi_a.as_float()) if hi_a is not None else None
    for i, c in ((1, lo), (2, hi)):
        if c is None and len(node.inputs) > i and node.inputs[i] is not None:
            raise UnsupportedOpError(f"Clip node '{node.name}' has a bound computed at run time")
    name = name_of(node)
    if lo is not None and hi is not None:
        return [mb.clip(x=x, alpha=np.float32(lo), beta=np.float32(hi), name=name)]
    if lo is not None:
        return [mb.maximum(x=x, y=np.asarray(lo, np.float32), name=name)]
    if hi is not None:
        return [mb.minimum(x=x, y=np.asarray(hi, np.float32), name=name)]
    return [mb.identity(x=x, name=name)]


def _where(ctx: Context, node: ir.Node) -> list[Mil]:
    c, a, b = (ctx.x(v) for v in node.inputs[:3])
    sa, sb = ctx.shape(node.inputs[1]), ctx.shape(node.inputs[2])
    out = ctx.shape(node.outputs[0])
    if np.broadcast_shapes(sa, sb) != out:  # MIL's select takes its shape from a and b only
        a = broadcast_to(a, sa, out, f"{name_of(node)}_a")
    return [mb.select(cond=c, a=a, b=b, name=name_of(node))]


def _cast(ctx: Context, node: ir.Node) -> list[Mil]:
    to = ir.DataType(node.attributes.get_int("to", 1))
    if to not in CAST_NAMES:
        raise UnsupportedOpError(f"Cast node '{node.name}' casts to {to.name}, which Core ML lacks")
    x = ctx.x(node.inputs[0])
    if isinstance(x, np.ndarray):
        return [mb.const(val=x.astype(np.dtype(CAST_NAMES[to].replace("fp", "float"))))]
    return [mb.cast(x=x, dtype=CAST_NAMES[to], name=name_of(node))]


def reduce_axes(ctx: Context, node: ir.Node) -> list[int] | None:
    """A reduction's axes (attribute, or input 1 from opset 18), None for all axes."""
    rank = len(ctx.shape(node.inputs[0]))
    axes = ints(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = [int(a) for a in ctx.need_const(node, 1, "the axes").reshape(-1)]
    if not axes:
        if node.attributes.get_int("noop_with_empty_axes", 0):
            return []
        return None
    return [rank_axis(a, rank) for a in axes]


def _reduce(op: str) -> Rule:
    def rule(ctx: Context, node: ir.Node) -> list[Mil]:
        axes = reduce_axes(ctx, node)
        keep = bool(node.attributes.get_int("keepdims", 1))
        x = ctx.x(node.inputs[0])
        if axes == []:
            return [mb.identity(x=x, name=name_of(node))]
        kwargs = {"axes": axes} if axes is not None else {}
        return [getattr(mb, op)(x=x, keep_dims=keep, name=name_of(node), **kwargs)]

    return rule


def _arg(op: str) -> Rule:
    def rule(ctx: Context, node: ir.Node) -> list[Mil]:
        if node.attributes.get_int("select_last_index", 0):
            raise UnsupportedOpError(f"{node.op_type} node '{node.name}' selects the last index")
        rank = len(ctx.shape(node.inputs[0]))
        axis = rank_axis(node.attributes.get_int("axis", 0), rank)
        keep = bool(node.attributes.get_int("keepdims", 1))
        return [
            getattr(mb, op)(x=ctx.x(node.inputs[0]), axis=axis, keep_dims=keep, name=name_of(node))
        ]

    return rule


def _softmax(ctx: Context, node: ir.Node) -> list[Mil]:
    rank = len(ctx.shape(node.inputs[0]))
    axis = node.attributes.get_int("axis", -1)
    x = ctx.x(node.inputs[0])
    if node.op_type == "LogSoftmax":
        lse = mb.reduce_log_sum_exp(x=x, axes=[rank_axis(axis, rank)], keep_dims=True)
        return [mb.sub(x=x, y=lse, name=name_of(node))]
    return [mb.softmax(x=x, axis=axis, name=name_of(node))]


RULES: dict[str, Rule] = {
    **{k: unary(v) for k, v in UNARY.items()},
    **{k: binary(v) for k, v in BINARY.items()},
    **{k: _reduce(v) for k, v in REDUCE.items()},
    "Div": _div,
    "Max": _variadic("maximum"),
    "Min": _variadic("minimum"),
    "Sum": _variadic("add"),
    "Neg": _neg,
    "Reciprocal": _reciprocal,
    "Gelu": _gelu,
    "LeakyRelu": _alpha("leaky_relu", 0.01),
    "Elu": _alpha("elu", 1.0),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Swish": _silu_like,
    "PRelu": _prelu,
    "Clip": _clip,
    "Where": _where,
    "Cast": _cast,
    "ArgMax": _arg("reduce_argmax"),
    "ArgMin": _arg("reduce_argmin"),
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
}
