"""lower_binary_ops: edgec's bit-packed operators as standard ONNX arithmetic, for the back
ends that cannot carry edgec's kernels, in one of three forms (`FORMS`):

- `int8` (onnxruntime Mobile's reduced build):
      BinaryLinear(x, W, scale, bias, offset) -> Cast(MatMulInteger(c(x), C), float) * scale + bias
      BinaryMatMul(a, b)                      -> Cast(MatMulInteger(c_a(a), c_b(b)), float)
      BinaryGather(W, scale, ids)             -> Cast(Gather(C, ids), float) * scale[ids]
- `qdq` (TensorRT, which has no MatMulInteger: INT8 through quantize/dequantize pairs): the
  codes through QuantizeLinear -> DequantizeLinear (scale 1, zero point 0: exact for +-1 and
  {0, 1}), the weight as DequantizeLinear(C int8, 1), then MatMul; TensorRT runs the MatMul
  between the pairs as an INT8 GEMM with INT32 accumulation;
- `float` (TensorRT in fp32): the codes and C as float32 +-1 and a MatMul.

c(x) is the activation's code (`core/binary_ops`) in {low, +1}: the same offset, step and
threshold comparison as the op's function body, then Where between two constants; C are the
weight's +-1 codes, unpacked here into int8 (one byte per weight: the most compact form
onnxruntime keeps, since its constant folding would unpack any packed-bit form back into
float at conversion). Every form sums +-1 products exactly (in int32, or in float32 below
2^24), so each op's result equals its function body's (and the popcount kernels') bit for
bit; the scale and bias round once, as they do there.

Left alone, with the reason: an op whose weight or scale is not a constant (it cannot be
unpacked here).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.core.binary_ops import DOMAIN, drop_unused_edgec_ops, unpack_bits
from edgec.core.irutil import initializer
from edgec.passes._ir import bypass, const, live_nodes
from edgec.passes.base import EdgecPass

RULE = "binary_as_standard_ops"
MARK = "edgec: a lowered binary op"  # the doc_string of the last node of each lowered op
# form -> what a bundle's manifest calls it
FORMS = {
    "int8": "int8 MatMulInteger",
    "qdq": "INT8 QuantizeLinear/DequantizeLinear around MatMul",
    "float": "float32 MatMul on +-1 codes",
}


def _codes_int8(packed: np.ndarray, k: int) -> np.ndarray:
    """uint64 packed rows (..., KW) -> int8 +-1 codes (..., K)."""
    return np.where(unpack_bits(packed, k), 1, -1).astype(np.int8)


class _Builder:
    """Standard-op nodes inserted before one node, named after it."""

    def __init__(self, model: ir.Model, at: ir.Node, form: str) -> None:
        self.graph = model.graph
        self.at = at
        self.name = at.name or at.op_type
        self.count = 0
        self.form = form

    def op(
        self,
        op_type: str,
        inputs: list[ir.Value | None],
        dtype: ir.DataType = ir.DataType.FLOAT,
        **attrs: int | float,
    ) -> ir.Value:
        """A node before the lowered one; its output has `dtype` (every value keeps a type)."""
        attributes: list[ir.Attr] = [
            ir.AttrInt64(k, v) if isinstance(v, int) else ir.AttrFloat32(k, v)
            for k, v in attrs.items()
        ]
        self.count += 1
        name = f"{self.name}/{op_type.lower()}_{self.count}"
        node = ir.Node("", op_type, inputs, attributes=attributes, name=name)
        self.graph.insert_before(self.at, node)
        node.outputs[0].dtype = dtype
        return node.outputs[0]

    def const(self, array: np.ndarray, suffix: str) -> ir.Value:
        return initializer(self.graph, array, f"{self.name}.{suffix}")

    def code(self, x: ir.Value, step: float, threshold: float, low: float, suffix: str) -> ir.Value:
        """c(x) = x / step >= threshold ? 1 : low (the function body's comparison): int8 for
        MatMulInteger, float32 for the other forms."""
        ratio = x
        if np.float32(step) != np.float32(1.0):  # x / 1 is x
            ratio = self.op("Div", [x, self.const(np.array(step, np.float32), f"{suffix}_step")])
        bit = self.op(
            "GreaterOrEqual",
            [ratio, self.const(np.array(threshold, np.float32), f"{suffix}_thr")],
            ir.DataType.BOOL,
        )
        np_type, dtype = (
            (np.int8, ir.DataType.INT8) if self.form == "int8" else (np.float32, ir.DataType.FLOAT)
        )
        return self.op(
            "Where",
            [
                bit,
                self.const(np.array(1, np_type), f"{suffix}_one"),
                self.const(np.array(low, np_type), f"{suffix}_low"),
            ],
            dtype,
        )

    def to_float(self, value: ir.Value) -> ir.Value:
        return self.op("Cast", [value], to=int(ir.DataType.FLOAT))

    def unit_scale(self, suffix: str) -> tuple[ir.Value, ir.Value]:
        """Scale 1 and zero point 0 of a per-tensor INT8 quantization."""
        return (
            self.const(np.array(1.0, np.float32), f"{suffix}_q_scale"),
            self.const(np.array(0, np.int8), f"{suffix}_q_zero"),
        )

    def dequantized(self, value: ir.Value, suffix: str) -> ir.Value:
        """A float code tensor through QuantizeLinear -> DequantizeLinear (exact: +-1, 0, 1)."""
        scale, zero = self.unit_scale(suffix)
        q = self.op("QuantizeLinear", [value, scale, zero], ir.DataType.INT8)
        return self.op("DequantizeLinear", [q, scale, zero])

    def weight(self, codes: np.ndarray, suffix: str) -> ir.Value:
        """+-1 int8 codes as the form's weight operand: int8, DequantizeLinear'd or float."""
        if self.form == "int8":
            return self.const(codes, f"{suffix}_int8")
        if self.form == "float":
            return self.const(codes.astype(np.float32), suffix)
        scale, zero = self.unit_scale(suffix)
        return self.op("DequantizeLinear", [self.const(codes, f"{suffix}_int8"), scale, zero])

    def product(self, a: ir.Value, b: ir.Value, b_is_weight: bool) -> ir.Value:
        """The exact product of two code operands (b already a `weight` when b_is_weight), as
        float: MatMulInteger, MatMul between Q/DQ pairs, or a float MatMul."""
        if self.form == "int8":
            return self.to_float(self.op("MatMulInteger", [a, b], ir.DataType.INT32))
        if self.form == "qdq":
            a = self.dequantized(a, "a")
            if not b_is_weight:
                b = self.dequantized(b, "b")
        return self.op("MatMul", [a, b])


class LowerBinaryOps(EdgecPass):
    name = "lower_binary_ops"

    def __init__(self, form: str = "int8") -> None:
        super().__init__()
        if form not in FORMS:
            raise ValueError(f"unknown binary form '{form}' (one of {', '.join(FORMS)})")
        self.form = form

    def rewrite(self, model: ir.Model) -> int:
        count = 0
        lower = {
            "BinaryLinear": self._linear,
            "BinaryMatMul": self._matmul,
            "BinaryGather": self._gather,
        }
        for node in live_nodes(model):
            if node.domain != DOMAIN or node.op_type not in lower:
                continue
            result = lower[node.op_type](model, node)
            if isinstance(result, str):
                self.left_alone(RULE, [node], result)
                continue
            product = result.producer()
            if product is not None:
                product.doc_string = f"{MARK} ({node.op_type}, {FORMS[self.form]})"
            if result.shape is None:  # the same tensor: the op's shape is the result's
                result.shape = node.outputs[0].shape
            bypass(node, result)  # result is a new node's output: always possible
            self.fired(RULE, [node])
            count += 1
        if count:
            drop_unused_edgec_ops(model)
        return count

    def _linear(self, model: ir.Model, node: ir.Node) -> ir.Value | str:
        x, w, scale, bias, offset = (list(node.inputs) + [None] * 5)[:5]
        packed, s, b, off = const(w), const(scale), const(bias), const(offset)
        if packed is None or s is None or b is None or off is None or x is None:
            return "its weight, scale, bias or offset is not a constant"
        k = node.attributes.get_int("in_features", 0)
        build = _Builder(model, node, self.form)
        moved = x
        if np.any(off != 0):  # x + 0 is x
            moved = build.op("Add", [x, build.const(off.astype(np.float32), "offset")])
        codes = build.code(
            moved,
            node.attributes.get_float("step", 1.0),
            node.attributes.get_float("threshold", 0.0),
            node.attributes.get_float("low", -1.0),
            "x",
        )
        weight = build.weight(np.ascontiguousarray(_codes_int8(packed, k).T), "weight")
        dot = build.product(codes, weight, b_is_weight=True)
        scaled = build.op("Mul", [dot, build.const(s.astype(np.float32), "scale")])
        return build.op("Add", [scaled, build.const(b.astype(np.float32), "bias")])

    def _matmul(self, model: ir.Model, node: ir.Node) -> ir.Value | str:
        a, b = node.inputs[0], node.inputs[1]
        if a is None or b is None:
            return "an operand is missing"
        build = _Builder(model, node, self.form)
        codes = [
            build.code(
                v,
                node.attributes.get_float(f"{side}_step", 1.0),
                node.attributes.get_float(f"{side}_threshold", 0.0),
                node.attributes.get_float(f"{side}_low", -1.0),
                side,
            )
            for side, v in (("a", a), ("b", b))
        ]
        return build.product(codes[0], codes[1], b_is_weight=False)

    def _gather(self, model: ir.Model, node: ir.Node) -> ir.Value | str:
        w, scale, ids = node.inputs[0], node.inputs[1], node.inputs[2]
        packed, s = const(w), const(scale)
        if packed is None or s is None or ids is None:
            return "its table or scale is not a constant"
        dim = node.attributes.get_int("dim", 0)
        build = _Builder(model, node, self.form)
        codes = _codes_int8(packed, dim)
        if self.form == "int8":
            table = build.const(codes, "table_int8")
            rows = build.to_float(build.op("Gather", [table, ids], ir.DataType.INT8, axis=0))
        else:  # TensorRT gathers float tables; the int8 codes stay compact in the file (qdq)
            rows = build.op("Gather", [build.weight(codes, "table"), ids], axis=0)
        row_scale = build.op("Gather", [build.const(s.astype(np.float32), "row_scale"), ids])
        last = build.const(np.array([-1], np.int64), "last_axis")
        return build.op("Mul", [rows, build.op("Unsqueeze", [row_scale, last])])


def lowered_count(model: ir.Model) -> int:
    """How many binary ops this pass lowered in `model` (their last nodes carry MARK)."""
    return sum(1 for n in model.graph.all_nodes() if (n.doc_string or "").startswith(MARK))
