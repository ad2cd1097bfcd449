"""lower_binary_ops: edgec's bit-packed operators as standard ONNX integer arithmetic, for the
back ends that cannot carry edgec's kernels (onnxruntime Mobile's reduced build, TensorRT).

    BinaryLinear(x, W, scale, bias, offset)  ->  Cast(MatMulInteger(c(x), C), float) * scale + bias
    BinaryMatMul(a, b)                       ->  Cast(MatMulInteger(c_a(a), c_b(b)), float)
    BinaryGather(W, scale, ids)              ->  Cast(Gather(C, ids), float) * scale[ids]

c(x) is the activation's code (`core/binary_ops`) computed as an int8 tensor in {low, +1}:
the same offset, step and threshold comparison as the op's function body, then Where between
two int8 constants; C are the weight's +-1 codes, unpacked here into int8 (one byte per
weight: the most compact form onnxruntime keeps, since its constant folding would unpack any
packed-bit form back into float at conversion). MatMulInteger sums +-1 products exactly in
int32, and the float conversion of that sum is exact below 2^24, so each op's result equals
its function body's (and the popcount kernels') bit for bit; the scale and bias round once,
as they do there.

Left alone, with the reason: an op whose weight or scale is not a constant (it cannot be
unpacked here).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.core.binary_ops import DOMAIN, FUNCTION_TEXT, unpack_bits
from edgec.core.irutil import initializer
from edgec.passes._ir import bypass, const, live_nodes
from edgec.passes.base import EdgecPass

RULE = "binary_as_int8"
FORM = "int8 MatMulInteger"  # what a bundle's manifest calls the lowered form


def _codes_int8(packed: np.ndarray, k: int) -> np.ndarray:
    """uint64 packed rows (..., KW) -> int8 +-1 codes (..., K)."""
    return np.where(unpack_bits(packed, k), 1, -1).astype(np.int8)


class _Builder:
    """Standard-op nodes inserted before one node, named after it."""

    def __init__(self, model: ir.Model, at: ir.Node) -> None:
        self.graph = model.graph
        self.at = at
        self.name = at.name or at.op_type
        self.count = 0

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
        """int8 c(x): x / step >= threshold ? 1 : low (the function body's comparison)."""
        ratio = x
        if np.float32(step) != np.float32(1.0):  # x / 1 is x
            ratio = self.op("Div", [x, self.const(np.array(step, np.float32), f"{suffix}_step")])
        bit = self.op(
            "GreaterOrEqual",
            [ratio, self.const(np.array(threshold, np.float32), f"{suffix}_thr")],
            ir.DataType.BOOL,
        )
        return self.op(
            "Where",
            [
                bit,
                self.const(np.array(1, np.int8), f"{suffix}_one"),
                self.const(np.array(int(low), np.int8), f"{suffix}_low"),
            ],
            ir.DataType.INT8,
        )

    def to_float(self, value: ir.Value) -> ir.Value:
        return self.op("Cast", [value], to=int(ir.DataType.FLOAT))

    def int_product(self, a: ir.Value, b: ir.Value) -> ir.Value:
        """The exact int32 product of two int8 code tensors, as float."""
        return self.to_float(self.op("MatMulInteger", [a, b], ir.DataType.INT32))


def _attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


class LowerBinaryOps(EdgecPass):
    name = "lower_binary_ops"

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
            if result.shape is None:  # the same tensor: the op's shape is the result's
                result.shape = node.outputs[0].shape
            bypass(node, result)  # result is a new node's output: always possible
            self.fired(RULE, [node])
            count += 1
        if count:
            _drop_unused_functions(model)
        return count

    def _linear(self, model: ir.Model, node: ir.Node) -> ir.Value | str:
        x, w, scale, bias, offset = (list(node.inputs) + [None] * 5)[:5]
        packed, s, b, off = const(w), const(scale), const(bias), const(offset)
        if packed is None or s is None or b is None or off is None or x is None:
            return "its weight, scale, bias or offset is not a constant"
        k = node.attributes.get_int("in_features", 0)
        build = _Builder(model, node)
        moved = x
        if np.any(off != 0):  # x + 0 is x
            moved = build.op("Add", [x, build.const(off.astype(np.float32), "offset")])
        codes = build.code(
            moved,
            _attr(node, "step", 1.0),
            _attr(node, "threshold", 0.0),
            _attr(node, "low", -1.0),
            "x",
        )
        weight = build.const(np.ascontiguousarray(_codes_int8(packed, k).T), "weight_int8")
        dot = build.int_product(codes, weight)
        scaled = build.op("Mul", [dot, build.const(s.astype(np.float32), "scale")])
        return build.op("Add", [scaled, build.const(b.astype(np.float32), "bias")])

    def _matmul(self, model: ir.Model, node: ir.Node) -> ir.Value | str:
        a, b = node.inputs[0], node.inputs[1]
        if a is None or b is None:
            return "an operand is missing"
        build = _Builder(model, node)
        codes = [
            build.code(
                v,
                _attr(node, f"{side}_step", 1.0),
                _attr(node, f"{side}_threshold", 0.0),
                _attr(node, f"{side}_low", -1.0),
                side,
            )
            for side, v in (("a", a), ("b", b))
        ]
        return build.int_product(*codes)

    def _gather(self, model: ir.Model, node: ir.Node) -> ir.Value | str:
        w, scale, ids = node.inputs[0], node.inputs[1], node.inputs[2]
        packed, s = const(w), const(scale)
        if packed is None or s is None or ids is None:
            return "its table or scale is not a constant"
        dim = node.attributes.get_int("dim", 0)
        build = _Builder(model, node)
        table = build.const(_codes_int8(packed, dim), "table_int8")
        rows = build.to_float(build.op("Gather", [table, ids], ir.DataType.INT8, axis=0))
        row_scale = build.op("Gather", [build.const(s.astype(np.float32), "row_scale"), ids])
        last = build.const(np.array([-1], np.int64), "last_axis")
        return build.op("Mul", [rows, build.op("Unsqueeze", [row_scale, last])])


def _drop_unused_functions(model: ir.Model) -> None:
    """Remove the bodies of binary ops no node uses any more (and the domain, if unused)."""
    used = {(n.domain, n.op_type) for n in model.graph.all_nodes()}
    for key in list(model.functions):
        domain, op_type, _ = key
        if domain == DOMAIN and op_type in FUNCTION_TEXT and (domain, op_type) not in used:
            del model.functions[key]
    if not any(d == DOMAIN for d, _ in used) and not any(k[0] == DOMAIN for k in model.functions):
        model.opset_imports.pop(DOMAIN, None)
        model.graph.opset_imports.pop(DOMAIN, None)
