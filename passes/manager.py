"""Runs a pipeline over the IR on onnx_ir's pass infrastructure, reports every pass, and
with `verify` proves each one.

With verify on, onnxruntime runs the graph before the first pass and after every pass on
the same inputs; a pass whose outputs differ from the graph before it by more than the
tolerance (relative error, see `edgec.runtime.compare`) stops the compile with an error that
names it. The IR is checked with `onnx.checker` after every pass, too.

With `explain` (True, or a pass name for that pass alone) every report also lists what the
pass looked at: each rewrite that fired and each candidate left alone, with its nodes and the
reason (`edgec compile --explain`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.errors import VerificationError
from edgec.core.graph_stats import GraphStats, graph_stats
from edgec.core.irutil import run_onnx
from edgec.passes.base import EdgecPass, Step, leaves
from edgec.runtime.compare import rel_error

DEFAULT_TOLERANCE = 1e-4  # float32


class PassVerificationError(VerificationError):
    """A pass changed the outputs or broke the IR: a compiler fault, so exit code 1."""

    exit_code = 1


@dataclass
class PassReport:
    name: str
    round: int
    rewrites: int
    nodes_before: int
    nodes_after: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    seconds: float
    max_rel_error: float | None = None  # against the graph before this pass, when verified
    explained: list[dict[str, Any]] | None = None  # with explain: fired / left alone and why

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.explained is None:
            del d["explained"]
        return d


class PassManager:
    """edgec's wrapper around onnx_ir's pass infrastructure: the steps run as an
    `ir.passes.PassManager` (a `FixedPoint` is one, with rounds until nothing fires), and
    this manager watches every pass run (`EdgecPass.monitor`) to report, verify and explain it.
    """

    def __init__(
        self,
        steps: Sequence[Step],
        verify: bool = False,
        tolerance: float = DEFAULT_TOLERANCE,
        inputs: dict[str, np.ndarray] | None = None,
        explain: bool | str = False,
    ) -> None:
        if verify and inputs is None:
            raise ValueError("verify needs inputs")
        self.explain = explain
        self.steps = list(steps)
        self.verify = verify
        self.tolerance = tolerance
        self.inputs = inputs or {}
        self.reports: list[PassReport] = []
        self._outputs: dict[str, np.ndarray] = {}
        self._rounds: dict[int, int] = {}
        self._started: tuple[GraphStats, float] | None = None

    def run(self, model: ir.Model) -> list[PassReport]:
        self.reports = []
        self._rounds = {}
        if self.verify:
            self._outputs = run_onnx(model, self.inputs)
        if not self.steps:
            return self.reports
        for pass_ in leaves(self.steps):
            pass_.monitor = self
        try:
            ir.passes.PassManager(self.steps, steps=1)(model)
        except ir.passes.PassError as e:
            raise _origin(e) from None
        finally:
            for pass_ in leaves(self.steps):
                pass_.monitor = None
        return self.reports

    def before(self, pass_: EdgecPass, model: ir.Model) -> None:
        pass_.explain = self.explain is True or self.explain == pass_.name
        self._rounds[id(pass_)] = self._rounds.get(id(pass_), 0) + 1
        self._started = graph_stats(model), time.perf_counter()

    def after(self, pass_: EdgecPass, model: ir.Model) -> None:
        assert self._started is not None
        before, start = self._started
        seconds = time.perf_counter() - start
        after = graph_stats(model)
        report = PassReport(
            name=pass_.name,
            round=self._rounds[id(pass_)],
            rewrites=pass_.rewrites,
            nodes_before=before.nodes,
            nodes_after=after.nodes,
            params_before=before.parameters,
            params_after=after.parameters,
            macs_before=before.macs,
            macs_after=after.macs,
            seconds=seconds,
        )
        if pass_.explain:
            report.explained = [c.to_json() for c in pass_.explained]
        self.reports.append(report)
        if self.verify and pass_.rewrites:
            report.max_rel_error = self._check(pass_.name, model)
        elif self.verify:
            report.max_rel_error = 0.0

    def _check(self, name: str, model: ir.Model) -> float:
        proto = ir.serde.serialize_model(model)
        try:
            onnx.checker.check_model(proto)
        except Exception as e:
            first = str(e).strip().splitlines()[0]
            raise PassVerificationError(
                f"pass '{name}' produced an invalid model: {first}"
            ) from None
        outputs = run_onnx(proto, self.inputs)
        errors = {k: rel_error(outputs[k], v) for k, v in self._outputs.items()}
        worst = max(errors, key=lambda k: errors[k], default=None)
        if worst is not None and errors[worst] > self.tolerance:
            raise PassVerificationError(
                f"pass '{name}' changed output '{worst}': max relative error "
                f"{errors[worst]:.2e} > tolerance {self.tolerance:.0e}"
            )
        self._outputs = outputs
        return max(errors.values(), default=0.0)


def _origin(error: BaseException) -> BaseException:
    """The exception a pass raised, out of the PassErrors onnx_ir wraps it in at every level."""
    while isinstance(error, ir.passes.PassError) and error.__cause__ is not None:
        error = error.__cause__
    return error
