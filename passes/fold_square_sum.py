"""ReduceSum(Pow(x, 2)) -> ReduceSumSquare(x): one pass over x instead of writing x^2 out.

Squared distances are written this way in model code (`((x - a) ** 2).sum(-1)`: EcoFormer's
kernelized hash, k-means and RBF kernels); the intermediate x^2 is as large as x, which for
EcoFormer's hash is [tokens, anchors, dims]. onnxruntime computes Pow(x, 2) as x * x, as
ReduceSumSquare does: the same values (checked on the seed models against torch).

Left alone, with the reason: another exponent, x^2 read elsewhere (the rewriter's own
check), a model below opset 18 (ReduceSumSquare takes its axes as an attribute there).
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
from onnxscript.rewriter._basics import MatchResult

from edgec.passes._ir import const
from edgec.passes.rules import Rule, RulePass


class SquareSum(Rule):
    name = "square_sum"

    def pattern(self, op: Any, x: ir.Value, two: ir.Value) -> ir.Value:
        return op.ReduceSum(op.Pow(x, two), _allow_other_inputs=True, _outputs=["total"])

    def check(self, context: Any, x: ir.Value, two: ir.Value, total: ir.Value) -> MatchResult:
        exponent = const(two)
        if exponent is None or exponent.size != 1 or float(exponent.reshape(())) != 2.0:
            return self.unlike("the exponent is not the constant 2")
        if x.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16):
            return self.fail(f"x is {x.dtype}, not floating point")
        graph = context.graph_or_function
        if graph is None or graph.opset_imports.get("", 0) < 18:
            return self.fail("below opset 18 ReduceSumSquare takes its axes as an attribute")
        return self.ok()

    def rewrite(self, op: Any, x: ir.Value, two: ir.Value, total: ir.Value) -> ir.Value:
        node = total.producer()
        assert node is not None
        axes = node.inputs[1:]
        return op.ReduceSumSquare(x, *axes, **node.attributes)


class FoldSquareSum(RulePass):
    name = "fold_square_sum"
    rules = (SquareSum,)
