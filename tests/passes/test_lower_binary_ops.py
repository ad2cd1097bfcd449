"""lower_binary_ops: edgec's bit-packed ops as int8 MatMulInteger arithmetic (mobile), INT8
quantize/dequantize pairs around MatMul (TensorRT) or float +-1 MatMuls must compute exactly
what the ops (and the float graph they came from) compute, in standard ONNX only."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgec.core.binary_ops import DOMAIN, binary_dot, pack_bits
from edgec.core.irutil import run_onnx
from edgec.passes.binarize_embedding import BinarizeEmbedding
from edgec.passes.binarize_linear import BinarizeLinear
from edgec.passes.binarize_matmul import BinarizeMatmul
from edgec.passes.lower_binary_ops import LowerBinaryOps
from tests.passes.graphs import Graph, apply, check, explain, ops
from tests.passes.test_binarize import OPSET, _lookup, _sign_code, _signs, _step_code

FORMS = pytest.mark.parametrize("form", ["int8", "qdq", "float"])
PRODUCT = {"int8": "MatMulInteger", "qdq": "MatMul", "float": "MatMul"}


def _lowered(before: onnx.ModelProto, *binarize: object, form: str = "int8") -> ir.Model:
    model = ir.serde.deserialize_model(before)
    for p in binarize:
        p(model)  # type: ignore[operator]
    assert any(n.domain == DOMAIN for n in model.graph)
    lower = LowerBinaryOps(form)
    lower(model)
    assert lower.rewrites > 0
    assert not any(n.domain == DOMAIN for n in model.graph)
    assert not model.functions and DOMAIN not in model.opset_imports
    return model


@FORMS
def test_binary_linear_is_exact(form: str) -> None:
    g = Graph((2, 5, 70), seed=2)  # K = 70: not a whole 64-bit word
    codes = _signs(g, 70, 24)
    moved = g.op("Add", "x", g.w(70, scale=0.1))
    ge = g.op("GreaterOrEqual", moved, g.const(np.float32(0.0)))
    x = g.op("Where", ge, g.const(np.float32(1.0)), g.const(np.float32(-1.0)))
    y = g.op(
        "Add", g.op("Mul", g.op("MatMul", x, g.const(codes)), g.const(np.float32(0.37))), g.w(24)
    )
    before = g.model(y, opset=OPSET)
    after = _lowered(before, BinarizeLinear(), form=form)
    assert PRODUCT[form] in ops(after)
    if form == "qdq":  # the activation codes and the weight each through a Q/DQ pair
        assert ops(after).count("QuantizeLinear") == 1 and ops(after).count("DequantizeLinear") == 2
    if form != "float":
        weight = next(
            v
            for v in after.graph.initializers.values()
            if v.dtype == ir.DataType.INT8 and v.shape.rank() == 2
        )
        assert weight.shape.dims == (70, 24)  # one byte per weight
    assert check(before, after, tol=0.0) == 0.0


@FORMS
def test_step_form_and_per_channel_scale_match_the_op_bit_for_bit(form: str) -> None:
    g = Graph((3, 100), seed=1)
    levels = (g.rng.random(8) + 0.5).astype(np.float32)
    y = g.op("MatMul", _step_code(g, g.op("Relu", "x"), 0.5), g.const(_signs(g, 100, 8) * levels))
    before = g.model(y, opset=OPSET)
    binarized, _ = apply(BinarizeLinear(), before)
    after = _lowered(before, BinarizeLinear(), form=form)
    # against the op's own function body: the same rounding, so exactly equal
    assert check(ir.serde.serialize_model(binarized), after, tol=0.0) == 0.0


@FORMS
def test_binary_matmul_both_sides_and_zero_one_codes(form: str) -> None:
    g = Graph((2, 3, 6, 16), seed=3)
    q = _sign_code(g, "x", offset=False)
    k = g.op("Transpose", _sign_code(g, g.op("Mul", "x", g.w(16))), perm=[0, 1, 3, 2])
    p = g.op("Cast", g.op("Greater", g.op("MatMul", q, k), g.const(np.float32(0.0))), to=1)
    out = g.op("MatMul", p, _step_code(g, g.op("Relu", "x"), 0.7))  # {0, 1} x {0, 1}
    before = g.model(out, opset=OPSET)
    after = _lowered(before, BinarizeMatmul(), form=form)
    assert ops(after).count(PRODUCT[form]) == 2
    assert check(before, after, tol=0.0) == 0.0


@FORMS
def test_binary_gather_is_exact(form: str) -> None:
    g = Graph((1,), seed=7)
    table = _signs(g, 5, 64) * (g.rng.random((5, 1)) + 0.5).astype(np.float32)
    before = g.model(g.op("Add", _lookup(g, table), "x"), opset=OPSET)
    after = _lowered(before, BinarizeEmbedding(), form=form)
    int8 = any(v.dtype == ir.DataType.INT8 for v in after.graph.initializers.values())
    assert int8 == (form != "float")
    assert check(before, after, tol=0.0) == 0.0


@FORMS
def test_the_product_equals_the_popcount_reference(form: str) -> None:
    """The product each form emits (MatMulInteger; MatMul between INT8 Q/DQ pairs, as
    TensorRT runs it; float MatMul) is the popcount result (`binary_dot`) exactly."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 130)).astype(np.float32)
    w = np.where(rng.standard_normal((9, 130)) >= 0, 1.0, -1.0).astype(np.float32)
    g = Graph((4, 130), seed=5)
    ge = g.op("GreaterOrEqual", "x", g.const(np.float32(0.0)))
    x = g.op("Where", ge, g.const(np.float32(1.0)), g.const(np.float32(-1.0)))
    before = g.model(g.op("MatMul", x, g.const(w.T.copy())), opset=OPSET)
    after = _lowered(before, BinarizeLinear(), form=form)
    got = ir_run(after, a)
    want = binary_dot(pack_bits(a >= 0), pack_bits(w > 0), 130, -1.0, -1.0)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def ir_run(model: ir.Model, x: np.ndarray) -> np.ndarray:
    proto = ir.serde.serialize_model(model)
    return next(iter(run_onnx(proto, {"x": x}).values()))


def test_a_non_constant_weight_is_left_alone_with_the_reason() -> None:
    node = onnx.helper.make_node(
        "BinaryLinear", ["x", "w", "s", "b", "o"], ["y"], domain=DOMAIN, in_features=64
    )
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [
            onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 64]),
            onnx.helper.make_tensor_value_info("w", onnx.TensorProto.UINT64, [3, 1]),
        ],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [
            onnx.numpy_helper.from_array(np.ones(3, np.float32), "s"),
            onnx.numpy_helper.from_array(np.zeros(3, np.float32), "b"),
            onnx.numpy_helper.from_array(np.zeros(64, np.float32), "o"),
        ],
    )
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET), onnx.helper.make_opsetid(DOMAIN, 1)],
    )
    after, seen = explain(LowerBinaryOps(), proto)
    assert ops(after) == ["BinaryLinear"]
    assert [c.reason for c in seen] == ["its weight, scale, bias or offset is not a constant"]
