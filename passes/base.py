"""The pass interface: an onnx_ir in-place pass that has a name and counts its rewrites."""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir


class EdgecPass(ir.passes.InPlacePass):
    """Subclasses implement `rewrite(model) -> int`, the number of rewrites that fired.

    `modified` is reported honestly: True exactly when at least one rewrite fired.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.rewrites = 0

    def rewrite(self, model: ir.Model) -> int:
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.rewrites = self.rewrite(model)
        return ir.passes.PassResult(model, modified=self.rewrites > 0)


class FixedPoint:
    """Run `passes` in order, again and again, until a round changes nothing."""

    def __init__(self, name: str, passes: list[EdgecPass], max_rounds: int = 8) -> None:
        self.name = name
        self.passes = passes
        self.max_rounds = max_rounds


Step = EdgecPass | FixedPoint
