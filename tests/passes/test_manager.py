"""The pass manager: reports, fixed points, and verification that names a wrong pass."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from edgec.core.errors import VerificationError
from edgec.core.irutil import input_specs, random_inputs, run_onnx
from edgec.passes import FixedPoint, PassManager, get_pipeline
from edgec.passes.base import EdgecPass
from edgec.passes.cleanup import DropIdentityNodes, FoldConstants
from edgec.passes.manager import PassVerificationError
from edgec.runtime.compare import max_rel_error
from tests.conftest import make_onnx_model
from tests.passes.helpers import assert_equivalent, to_proto


def small_model() -> ir.Model:
    return ir.serde.deserialize_model(make_onnx_model())


class ScaleFirstWeight(EdgecPass):
    """A wrong pass: multiplies the first initializer by 1.5."""

    name = "scale_first_weight"

    def rewrite(self, model: ir.Model) -> int:
        value = next(iter(model.graph.initializers.values()))
        value.const_value = ir.tensor(value.const_value.numpy() * 1.5)
        return 1


class TinyNudge(EdgecPass):
    """Changes the outputs by ~1e-7 relative: within any sensible float32 tolerance."""

    name = "tiny_nudge"

    def rewrite(self, model: ir.Model) -> int:
        value = model.graph.initializers["fc_b"]
        value.const_value = ir.tensor(value.const_value.numpy() * (1 + 1e-7))
        return 1


class BreakGraph(EdgecPass):
    """A wrong pass: sends the Gemm an input nothing produces."""

    name = "break_graph"

    def rewrite(self, model: ir.Model) -> int:
        gemm = next(n for n in model.graph if n.op_type == "Gemm")
        gemm.replace_input_with(0, ir.Value(name="dangling"))
        return 1


def feeds(model: ir.Model) -> dict[str, np.ndarray]:
    return random_inputs(input_specs(model), seed=0)


def test_reports_every_pass() -> None:
    model = small_model()
    before = to_proto(model)
    reports = PassManager(get_pipeline("cpu")).run(model)
    names = [r.name for r in reports]
    assert names[:5] == [
        "lift_constants",
        "fold_constants",
        "drop_identity_nodes",
        "merge_common_subexpressions",
        "drop_unused_nodes",
    ]
    assert names[-1] == "infer_shapes"
    # the Identity and the duplicated Relu are gone, and the reports account for both
    ops = [n.op_type for n in model.graph]
    assert "Identity" not in ops and ops.count("Relu") == 1
    assert sum(r.rewrites for r in reports) >= 2
    assert reports[0].nodes_before - reports[-1].nodes_after >= 2
    for r in reports:
        assert r.seconds >= 0 and r.params_before >= r.params_after > 0
        assert r.max_rel_error is None  # not verified
    # shapes are known once inferred: Conv 8x16x16 outputs x 3*3*3, Gemm 5 x 8
    assert reports[-1].macs_after == 8 * 16 * 16 * 27 + 5 * 8
    assert_equivalent(before, model)


def test_fixed_point_stops_when_nothing_fires() -> None:
    model = small_model()
    manager = PassManager([FixedPoint("cleanup", [FoldConstants(), DropIdentityNodes()])])
    reports = manager.run(model)
    rounds = max(r.round for r in reports)
    last = [r for r in reports if r.round == rounds]
    assert rounds >= 2 and all(r.rewrites == 0 for r in last)


def test_verify_records_errors() -> None:
    model = small_model()
    reports = PassManager(get_pipeline("cpu"), verify=True, inputs=feeds(model)).run(model)
    assert all(r.max_rel_error is not None and r.max_rel_error <= 1e-6 for r in reports)


def test_verify_names_the_wrong_pass() -> None:
    model = small_model()
    steps = [DropIdentityNodes(), ScaleFirstWeight(), FoldConstants()]
    manager = PassManager(steps, verify=True, inputs=feeds(model))
    with pytest.raises(
        PassVerificationError, match=r"pass 'scale_first_weight' changed output 'y'"
    ):
        manager.run(model)
    assert [r.name for r in manager.reports] == ["drop_identity_nodes", "scale_first_weight"]


def test_verify_tolerance_is_respected() -> None:
    model = small_model()
    PassManager([TinyNudge()], verify=True, tolerance=1e-4, inputs=feeds(model)).run(model)
    model = small_model()
    with pytest.raises(VerificationError, match="tiny_nudge"):
        PassManager([TinyNudge()], verify=True, tolerance=1e-12, inputs=feeds(model)).run(model)


def test_verify_catches_invalid_ir() -> None:
    model = small_model()
    manager = PassManager([BreakGraph()], verify=True, inputs=feeds(model))
    with pytest.raises(PassVerificationError, match="pass 'break_graph' produced an invalid model"):
        manager.run(model)


def test_without_verify_a_wrong_pass_goes_unnoticed_by_the_manager() -> None:
    """The manager itself checks nothing unless asked (compile's final bundle check does):
    the wrong pass runs, changes the outputs, and its report has no error."""
    model = small_model()
    inputs = feeds(model)
    before = run_onnx(to_proto(model), inputs)
    (report,) = PassManager([ScaleFirstWeight()]).run(model)
    after = run_onnx(to_proto(model), inputs)
    assert report.rewrites == 1 and report.max_rel_error is None
    assert max_rel_error(after, before) > 0.01


def test_explain_lists_what_each_pass_saw() -> None:
    """explain=True: each report carries its candidates; explain=NAME: that pass's only."""
    model = small_model()
    reports = PassManager(get_pipeline("cpu"), explain=True).run(model)
    folded = [r for r in reports if r.name == "fold_batchnorm" and r.explained]
    assert folded and folded[0].explained[0]["rule"] == "bn_into_conv"
    assert folded[0].explained[0]["fired"] and folded[0].explained[0]["nodes"] == ["conv", "bn"]
    model = small_model()
    reports = PassManager(get_pipeline("cpu"), explain="fold_batchnorm").run(model)
    assert {r.name for r in reports if r.explained is not None} == {"fold_batchnorm"}
    assert all(r.explained is None for r in PassManager(get_pipeline("cpu")).run(small_model()))


def test_verify_needs_inputs() -> None:
    with pytest.raises(ValueError, match="inputs"):
        PassManager([], verify=True)


class Crash(EdgecPass):
    """A pass with a bug of its own."""

    name = "crash"

    def rewrite(self, model: ir.Model) -> int:
        raise KeyError("a bug")


def test_runs_on_onnx_ir_pass_manager_and_raises_a_pass_bug_as_itself() -> None:
    """A FixedPoint is onnx_ir's PassManager; onnx_ir's PassError wrapping is taken off, so a
    pass's own bug reaches the caller as what it is (the CLI reports it as an internal error)."""
    assert isinstance(FixedPoint("f", [FoldConstants()]), ir.passes.PassManager)
    manager = PassManager([FixedPoint("f", [FoldConstants(), Crash()])])
    with pytest.raises(KeyError, match="a bug"):
        manager.run(small_model())
    assert [r.name for r in manager.reports] == ["fold_constants"]
