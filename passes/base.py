"""The pass interface: an onnx_ir in-place pass that has a name, counts its rewrites and
explains itself (every candidate it looked at: fired, or left alone and why)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

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


class Monitor(Protocol):
    """What watches each pass run (edgec's PassManager: statistics, verification, reports)."""

    def before(self, pass_: EdgecPass, model: ir.Model) -> None: ...

    def after(self, pass_: EdgecPass, model: ir.Model) -> None: ...


class EdgecPass(ir.passes.InPlacePass):
    """Subclasses implement `rewrite(model) -> int`, the number of rewrites that fired, and
    add to `explained` what they fired and left alone (`left_alone`, `fired`); the
    near misses that cost extra to find are looked for only when `explain` is set.

    `modified` is reported honestly: True exactly when at least one rewrite fired. A
    `monitor`, when set, sees the model before and after every run.
    """

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.rewrites = 0
        self.explain = False
        self.explained: list[Candidate] = []
        self.monitor: Monitor | None = None

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
        if self.monitor is not None:
            self.monitor.before(self, model)
        self.rewrites = self.rewrite(model)
        if self.monitor is not None:
            self.monitor.after(self, model)
        return ir.passes.PassResult(model, modified=self.rewrites > 0)


class FixedPoint(ir.passes.PassManager):
    """onnx_ir's PassManager, named: runs `passes` in order, again and again, until a round
    changes nothing (or `max_rounds` rounds ran)."""

    def __init__(self, name: str, passes: Sequence[EdgecPass], max_rounds: int = 8) -> None:
        super().__init__(passes, steps=max_rounds, early_stop=True)
        self.name = name


Step = EdgecPass | FixedPoint


def leaves(steps: Sequence[ir.passes.PassBase]) -> Iterator[EdgecPass]:
    """The edgec passes in `steps`, through any nesting of onnx_ir pass sequences."""
    for step in steps:
        if isinstance(step, ir.passes.Sequential):
            yield from leaves(step.passes)
        elif isinstance(step, EdgecPass):
            yield step
