"""Runs a pipeline over the IR, reports every pass, and with `verify` proves each one.

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
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.errors import VerificationError
from edgec.core.graph_stats import graph_stats
from edgec.core.irutil import run_onnx
from edgec.passes.base import EdgecPass, FixedPoint, Step
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
    def __init__(
        self,
        steps: list[Step],
        verify: bool = False,
        tolerance: float = DEFAULT_TOLERANCE,
        inputs: dict[str, np.ndarray] | None = None,
        explain: bool | str = False,
    ) -> None:
        if verify and inputs is None:
            raise ValueError("verify needs inputs")
        self.explain = explain
        self.steps = steps
        self.verify = verify
        self.tolerance = tolerance
        self.inputs = inputs or {}
        self.reports: list[PassReport] = []
        self._outputs: dict[str, np.ndarray] = {}

    def run(self, model: ir.Model) -> list[PassReport]:
        self.reports = []
        if self.verify:
            self._outputs = run_onnx(model, self.inputs)
        for step in self.steps:
            if isinstance(step, FixedPoint):
                for round_ in range(1, step.max_rounds + 1):
                    fired = sum(self._run_pass(p, model, round_) for p in step.passes)
                    if not fired:
                        break
            else:
                self._run_pass(step, model, 1)
        return self.reports

    def _explains(self, pass_: EdgecPass) -> bool:
        return self.explain is True or self.explain == pass_.name

    def _run_pass(self, pass_: EdgecPass, model: ir.Model, round_: int) -> int:
        before = graph_stats(model)
        pass_.explain = self._explains(pass_)
        start = time.perf_counter()
        pass_(model)
        seconds = time.perf_counter() - start
        after = graph_stats(model)
        report = PassReport(
            name=pass_.name,
            round=round_,
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
        return pass_.rewrites

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
