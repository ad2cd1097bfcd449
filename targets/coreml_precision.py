"""How a Core ML program is computed at `--precision fp16`: which MIL ops stay in float32.

Core ML computes an ML program in float16 unless told otherwise (coremltools inserts casts
around every op); edgec says per op. Ops whose sums, squares or exponents leave float16's
range (65504) or precision stay float32 (`FP32_GUARDS`). In a model with binary layers every
float op feeds a binarization threshold, and float16 rounding moves activations across it
(bit_bert_tiny: 0.52 relative error with only the usual guards): there only the products of
codes are float16, where they are exact (integer sums up to 2048).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# MIL ops kept in float32 in an fp16 program: their sums, squares and exponents leave fp16's
# range (65504) or its precision (normalization statistics)
FP32_GUARDS = frozenset({
    "layer_norm", "instance_norm", "batch_norm", "l2_norm", "softmax", "reduce_mean",
    "reduce_sum", "reduce_sum_square", "reduce_l2_norm", "reduce_log_sum_exp", "pow", "exp",
})  # fmt: skip
# marks (a suffix of the op's name) the products of +-1 / {0, 1} codes that an fp16 program
# computes in float16 (`targets/coreml_ops_edgec.py`)
EXACT_IN_FP16 = "__exact_fp16"
FP16_EXACT_INTEGERS = 2048


def fp16_selector(binary: bool) -> Callable[[Any], bool]:
    """Which MIL ops an fp16 program computes in float16 (the module docstring says why)."""
    if binary:
        return lambda op: op.name.endswith(EXACT_IN_FP16)
    return lambda op: op.op_type not in FP32_GUARDS


def compute_precision(precision: str, binary: bool) -> str:
    if precision == "fp32":
        return "float32 throughout"
    if binary:
        return (
            "float16 for the products of binary codes (exact: integer sums up to 2048), "
            "float32 elsewhere (float16 rounding would flip binary activations)"
        )
    return "float16, with float32 kept for: " + ", ".join(sorted(FP32_GUARDS))
