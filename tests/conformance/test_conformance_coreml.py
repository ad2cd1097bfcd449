"""ONNX's conformance cases of the common vision and transformer operators through the
`coreml` target (the IR lowered to MIL, run by edgec's MIL evaluator): each case compiles and
matches its expected outputs with its own inputs, or is refused in one line (an operator or
attribute Core ML has no lowering for, or sizes decided at run time); none crashes and none
is wrong. The whole corpus: `python -m tests.conformance.harness --target coreml`."""

from __future__ import annotations

import pytest

from tests.conformance.harness import run_all, summary

pytestmark = pytest.mark.slow

PREFIXES = (
    "test_conv", "test_averagepool", "test_maxpool", "test_gemm", "test_matmul_",
    "test_layer_normalization_2d", "test_softmax", "test_resize_upsample", "test_slice",
    "test_gather_", "test_split_", "test_concat", "test_transpose", "test_reshape",
    "test_where", "test_gelu", "test_hardswish", "test_reduce_mean", "test_einsum",
    "test_depthtospace", "test_spacetodepth", "test_instancenorm", "test_batchnorm",
    "test_clip", "test_prelu",
)  # fmt: skip


@pytest.fixture(scope="module")
def outcomes():
    return run_all(target="coreml", prefixes=PREFIXES)


def test_vision_and_transformer_cases_pass_or_are_refused(outcomes) -> None:
    runnable = [o for o in outcomes if o.ort_ok]
    bad = [
        f"{o.name}: {o.with_inputs}/{o.without_inputs} {o.detail}"
        for o in runnable
        if o.with_inputs in ("wrong", "crash") or o.without_inputs == "crash"
    ]
    assert not bad, "\n".join(bad)
    s = summary(outcomes)
    # measured: 144 of 239 pass (the rest: run-time sizes, dilated or ceil pooling Core ML sizes
    # differently, operators without a lowering)
    assert s["onnxruntime_runs"] > 200 and s["with_inputs"].get("pass", 0) >= 140, s
