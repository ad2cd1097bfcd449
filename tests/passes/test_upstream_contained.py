"""Minimal repros of the upstream passes that are wrong on valid ONNX graphs, and the proof
that edgec contains each (passes/cleanup.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
import pytest
from onnx import TensorProto, helper

import edgec
from edgec.core.irutil import run_onnx
from edgec.passes.cleanup import DropIdentityNodes, FoldConstants, InferShapes
from tests.passes.helpers import assert_equivalent, parse, to_proto


def _if_returning_an_outer_value() -> onnx.ModelProto:
    """Both branches of an If return the outer `a` through an Identity."""
    branch = [
        helper.make_graph(
            [helper.make_node("Identity", ["a"], [f"out_{k}"])],
            f"branch_{k}",
            [],
            [helper.make_tensor_value_info(f"out_{k}", TensorProto.FLOAT, [3])],
        )
        for k in ("then", "else")
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("If", ["c"], ["y"], then_branch=branch[0], else_branch=branch[1]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_upstream_identity_elimination_breaks_if_branches() -> None:
    """onnx_ir's pass renames the outer value once per branch: the model no longer loads."""
    model = ir.serde.deserialize_model(_if_returning_an_outer_value())
    with pytest.raises(Exception):  # noqa: B017 - any failure: the model is broken
        common.IdentityEliminationPass()(model)
        onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
        run_onnx(model, {"x": np.ones(3, np.float32), "c": np.array(True)})


def test_drop_identity_nodes_keeps_an_outer_value_returned_by_branches() -> None:
    before = _if_returning_an_outer_value()
    model = ir.serde.deserialize_model(before)
    p = DropIdentityNodes()
    p(model)
    assert p.rewrites == 0
    for c in (True, False):
        feeds = {"x": np.array([-1, 0, 2], np.float32), "c": np.array(c)}
        assert np.array_equal(run_onnx(model, feeds)["y"], run_onnx(before, feeds)["y"])


def test_drop_identity_nodes_keeps_an_output_that_copies_another() -> None:
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] a, float[4] b) {
        a = Relu (x)
        b = Identity (a)
    }""")
    before = to_proto(model)
    p = DropIdentityNodes()
    p(model)
    assert p.rewrites == 0
    assert_equivalent(before, model)


def test_infer_shapes_keeps_sequences() -> None:
    """onnx_ir's ShapeInferencePass sets a dtype on an untyped value that inference found to
    be a sequence: it becomes a tensor, and onnxruntime refuses the model."""
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
        s = SequenceConstruct (x, x)
        zero = Constant <value = int64 {0}> ()
        y = SequenceAt (s, zero)
    }"""

    def sequence(model: ir.Model) -> ir.Value:
        return next(n for n in model.graph if n.op_type == "SequenceConstruct").outputs[0]

    upstream = parse(text)
    common.ShapeInferencePass()(upstream)
    assert isinstance(sequence(upstream).type, ir.TensorType)
    model = parse(text)
    InferShapes()(model)
    assert isinstance(sequence(model).type, ir.SequenceType)
    onnx.checker.check_model(to_proto(model), full_check=True)


def test_fold_constants_keeps_opset_11_forms() -> None:
    """onnxscript folds SplitToSequence into Split with its opset-13 signature."""
    text = """<ir_version: 7, opset_import: ["" : 11]>
    g (float[4, 2] x) => (float[2, 2] y) {
        two = Constant <value = int64[2] {2, 2}> ()
        s = SplitToSequence <axis = 0> (x, two)
        zero = Constant <value = int64 {0}> ()
        y = SequenceAt (s, zero)
    }"""
    upstream = parse(text)
    from onnxscript import optimizer

    optimizer.fold_constants(upstream)
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(to_proto(upstream), full_check=True)
    model = parse(text)
    before = to_proto(model)
    FoldConstants()(model)
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert_equivalent(before, model)


def test_fold_constants_survives_a_failing_evaluator() -> None:
    """onnxscript's SplitToSequence evaluator fails when the split's shape is known and its
    values are not (AttributeError inside the folder)."""
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[6, 2] x, int64[3] split) => (float[2, 2] y) {
        s = SplitToSequence <axis = 0> (x, split)
        zero = Constant <value = int64 {0}> ()
        y = SequenceAt (s, zero)
    }""")
    before = to_proto(model)
    FoldConstants()(model)  # no exception escapes
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds = {"x": np.arange(12, dtype=np.float32).reshape(6, 2), "split": np.array([2, 2, 2])}
    assert np.array_equal(run_onnx(proto, feeds)["y"], run_onnx(before, feeds)["y"])


@pytest.mark.slow
def test_scan_body_identity_compiles_to_the_right_numbers(tmp_path) -> None:
    """ONNX's Scan sum case, whose body outputs Identity copies (wrong numbers before)."""
    from onnx.backend.test.case.node import scan as _  # noqa: F401 - registers the case

    from tests.conformance.cases import node_cases

    case = next(c for c in node_cases() if c.name == "test_scan9_sum")
    edgec.compile(case.model, output=tmp_path / "b", backend="onnxruntime", inputs=case.inputs)
    got = edgec.load(tmp_path / "b").run(case.inputs)
    for name, expected in case.outputs.items():
        np.testing.assert_allclose(got[name], expected, rtol=1e-5)
