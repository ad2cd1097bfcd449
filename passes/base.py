"""The pass interface: an onnx_ir in-place pass that has a name, counts its rewrites and
explains itself (every candidate it looked at: fired, or left alone and why)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import onnx_ir as ir


@dataclass(frozen=True)
class Candidate:
    """One place a pass looked at: a rewrite that fired, or one left alone and why."""

    rule: str
    nodes: tuple[str, ...]  # node names (torch module paths where the exporter set them)
    ops: tuple[str, ...]
    fired: bool
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "nodes": list(self.nodes), "ops": list(self.ops)}


def candidate(rule: str, nodes: Sequence[ir.Node], fired: bool, reason: str = "") -> Candidate:
    """A Candidate of these nodes (each once, in the order given); the reason's first line."""
    ordered = list(dict.fromkeys(nodes))
    return Candidate(
        rule,
        tuple(n.name or "" for n in ordered),
        tuple(n.op_type for n in ordered),
        fired,
        reason.strip().splitlines()[0] if reason.strip() else "",
    )


class EdgecPass(ir.passes.InPlacePass):
    """Subclasses implement `rewrite(model) -> int`, the number of rewrites that fired, and
    add to `explained` what they fired and left alone (`left_alone`, `fired`); the
    near misses that cost extra to find are looked for only when `explain` is set.

    `modified` is reported honestly: True exactly when at least one rewrite fired.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.rewrites = 0
        self.explain = False
        self.explained: list[Candidate] = []

    def left_alone(self, rule: str, nodes: Sequence[ir.Node], reason: str) -> bool:
        """Record a candidate left alone and why; returns False (for `return self.left_alone(...)`
        in a check)."""
        self.explained.append(candidate(rule, nodes, False, reason))
        return False

    def fired(self, rule: str, nodes: Sequence[ir.Node]) -> bool:
        self.explained.append(candidate(rule, nodes, True))
        return True

    def rewrite(self, model: ir.Model) -> int:
        raise NotImplementedError

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.explained = []
        self.rewrites = self.rewrite(model)
        return ir.passes.PassResult(model, modified=self.rewrites > 0)


class FixedPoint:
    """Run `passes` in order, again and again, until a round changes nothing."""

    def __init__(self, name: str, passes: list[EdgecPass], max_rounds: int = 8) -> None:
        self.name = name
        self.passes = passes
        self.max_rounds = max_rounds


Step = EdgecPass | FixedPoint
