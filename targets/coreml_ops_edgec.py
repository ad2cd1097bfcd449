"""Core ML lowering rules for edgec's own ops: attention and the binary layers.

- `Attention` -> MIL `scaled_dot_product_attention` (iOS 18 / macOS 15). MIL's op has no scale
  argument (it divides by sqrt(E), E = the head size), so Q is multiplied by
  scale * sqrt(E) first; the bias (relative position bias, windows' shift masks) is the float
  `attn_mask`, broadcast to [B, N, S, T].
- Binary layers: Core ML has no popcount, but it stores a weight of two values at one bit per
  element (`constexpr_lut_to_dense` with a two-entry table, -1 and +1): the +-1 codes stay one
  bit each in the `.mlpackage`, the per-channel scales beside them. Activations are binarized
  with MIL ops (add, real_div, greater_equal, cast), then multiplied by the +-1 weights
  (every product and partial sum is a small integer: exact in float).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import types

from edgec.core.binary_ops import unpack_bits
from edgec.core.errors import UnsupportedOpError
from edgec.targets.coreml_context import Context, Mil, Rule, name_of
from edgec.targets.coreml_precision import EXACT_IN_FP16, FP16_EXACT_INTEGERS

IOS16, IOS18 = 7, 9  # coremltools' AvailableTarget values (iOS17 is 8)
LUT = np.array([-1.0, 1.0], np.float32)  # index bit 0 -> -1, 1 -> +1


def _attention(ctx: Context, node: ir.Node) -> list[Mil]:
    ctx.needs("scaled_dot_product_attention", IOS18)
    q, k, v = (ctx.x(node.inputs[i]) for i in range(3))
    e = ctx.shape(node.inputs[0])[-1]
    factor = node.attributes.get_float("scale", 1.0) * math.sqrt(e)
    if factor != 1.0:
        q = mb.mul(x=q, y=np.float32(factor), name=f"{name_of(node)}_scaled_q")
    kwargs = {}
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    if bias is not None:
        const = ctx.const(bias)
        if const is None or np.any(const != 0):
            kwargs["attn_mask"] = ctx.x(bias)
    return [mb.scaled_dot_product_attention(query=q, key=k, value=v, name=name_of(node), **kwargs)]


def exact_name(name: str, k: int) -> str:
    """The name of a product of codes over `k` terms, marked (`EXACT_IN_FP16`) when every sum
    it makes is an integer float16 holds exactly (|sum| <= 2048)."""
    return f"{name}{EXACT_IN_FP16}" if k <= FP16_EXACT_INTEGERS else name


def palettized(codes: np.ndarray, ctx: Context, name: str) -> Mil:
    """A +-1 tensor as a 1-bit palettized constant (two-entry table -1, +1)."""
    bits = (codes > 0).astype(np.uint8)
    if ctx.opset >= IOS18:
        lut = LUT.reshape((1,) * codes.ndim + (2, 1))
        return mb.constexpr_lut_to_dense(
            indices=bits.astype(types.np_uint1_dtype), lut=lut, name=name
        )
    # iOS 16/17: indices packed into bytes, least significant bit first
    packed = np.packbits(bits.reshape(-1), bitorder="little")
    return mb.constexpr_lut_to_dense(
        lut=LUT, indices=packed, shape=np.asarray(codes.shape, np.uint32), name=name
    )


def _unpacked(node: ir.Node, index: int, k: int) -> np.ndarray:
    """The +-1 codes of a packed weight input (uint64 words, `core.binary_ops`)."""
    value = node.inputs[index]
    if value is None or value.const_value is None:
        raise UnsupportedOpError(
            f"{node.op_type} node '{node.name}' needs its packed weight as a constant"
        )
    bits = unpack_bits(value.const_value.numpy(), k)
    return np.where(bits > 0, 1.0, -1.0).astype(np.float32)


def _codes(x: Mil, step: float, threshold: float, low: float, offset: Mil | None = None) -> Mil:
    """c(x) = +1 where (x + offset) / step >= threshold, else low (`core.binary_ops`)."""
    if offset is not None:
        x = mb.add(x=x, y=offset)
    if step != 1.0:
        x = mb.real_div(x=x, y=np.float32(step))
    bit = mb.cast(x=mb.greater_equal(x=x, y=np.float32(threshold)), dtype="fp32")
    if low == 0.0:
        return bit
    return mb.add(x=mb.mul(x=bit, y=np.float32(1.0 - low)), y=np.float32(low))  # low or +1


def _binary_linear(ctx: Context, node: ir.Node) -> list[Mil]:
    codes = _unpacked(node, 1, node.attributes.get_int("in_features", 0))  # [N, K]
    scale, bias = ctx.need_const(node, 2, "the scale"), ctx.need_const(node, 3, "the bias")
    offset = ctx.const(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else None
    a = node.attributes
    xc = _codes(
        ctx.x(node.inputs[0]),
        a.get_float("step", 1.0),
        a.get_float("threshold", 0.0),
        a.get_float("low", -1.0),
        offset,
    )
    w = palettized(codes, ctx, f"{name_of(node)}_codes")
    dot = mb.linear(x=xc, weight=w, name=exact_name(f"{name_of(node)}_dot", codes.shape[1]))
    scaled = mb.mul(x=dot, y=scale.astype(np.float32))
    return [mb.add(x=scaled, y=bias.astype(np.float32), name=name_of(node))]


def _binary_matmul(ctx: Context, node: ir.Node) -> list[Mil]:
    a = node.attributes

    def side(i: int, p: str) -> Mil:
        return _codes(
            ctx.x(node.inputs[i]),
            a.get_float(f"{p}_step", 1.0),
            a.get_float(f"{p}_threshold", 0.0),
            a.get_float(f"{p}_low", -1.0),
        )

    k = ctx.shape(node.inputs[0])[-1]
    return [mb.matmul(x=side(0, "a"), y=side(1, "b"), name=exact_name(name_of(node), k))]


def _binary_gather(ctx: Context, node: ir.Node) -> list[Mil]:
    codes = _unpacked(node, 0, node.attributes.get_int("dim", 0))  # [V, dim]
    scale = ctx.need_const(node, 1, "the scale").astype(np.float32)
    ids = ctx.x(node.inputs[2])
    rows = mb.gather(x=palettized(codes, ctx, f"{name_of(node)}_codes"), indices=ids, axis=0)
    s = mb.expand_dims(x=mb.gather(x=scale, indices=ids, axis=0), axes=[-1])
    return [mb.mul(x=rows, y=s, name=name_of(node))]


RULES: dict[str, Rule] = {
    "Attention": _attention,
    "BinaryLinear": _binary_linear,
    "BinaryMatMul": _binary_matmul,
    "BinaryGather": _binary_gather,
}
