"""Run ONNX's conformance cases through edgec as a user would, and classify each outcome.

    python -m tests.conformance.harness [--filter SUBSTRING] [--json OUT] [--limit N]
                                        [--target cpu|mobile|...]

For every case that onnxruntime itself runs correctly (all graph optimizations, the case's
own inputs, the case's rtol/atol):

- with inputs: `edgec.compile(model, target=TARGET, inputs=...)` (TARGET `cpu` with the
  onnxruntime back end, unless --target names another: `mobile`, `tensorrt`), then
  `edgec.load(bundle).run(inputs)` (a tensorrt bundle: its ONNX in onnxruntime, as its
  compile checks it; polygraphy's lint is skipped, for time), compared with the case's
  expected outputs;
- without inputs: the same compile with generated inputs must end in a bundle or a clean
  `EdgecError` with exit code 2, never an internal fault.

Outcomes: pass, wrong (ran, but not the expected numbers), refused (a clean exit-2 error),
crash (anything else). `expected_outcomes` in `exceptions.py` lists every case allowed not to
pass, with its reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import edgec
from edgec.core.errors import EdgecError
from edgec.runtime import Bundle
from edgec.targets import get_target, tensorrt
from tests.conformance.cases import Case, all_cases


@dataclass
class Outcome:
    name: str
    ort_ok: bool
    with_inputs: str = ""  # pass | wrong | refused | crash
    without_inputs: str = ""  # ok | refused | crash
    detail: str = ""


def _close(actual: Any, expected: Any, rtol: float, atol: float) -> bool:
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(_close(a, e, rtol, atol) for a, e in zip(actual, expected, strict=True))
        )
    if expected is None:
        return actual is None
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        return False
    if e.dtype == object or a.dtype == object:
        return bool(np.array_equal(a, e))
    if not np.issubdtype(e.dtype, np.number) and e.dtype != np.bool_:
        # ml_dtypes floats (bfloat16, float8): compare as float32
        a, e = a.astype(np.float32), e.astype(np.float32)
    if e.dtype == np.bool_ or np.issubdtype(e.dtype, np.integer):
        return bool(np.array_equal(a, e))
    try:
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError:
        return False
    return True


def ort_runs(case: Case) -> bool:
    """Does onnxruntime (all optimizations) run the unmodified case correctly?"""
    try:
        sess = ort.InferenceSession(
            case.model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in sess.get_outputs()]
        got = dict(zip(names, sess.run(names, case.inputs), strict=True))
    except Exception:
        return False
    return all(_close(got.get(k), v, case.rtol, case.atol) for k, v in case.outputs.items())


def _classify(e: BaseException) -> str:
    if isinstance(e, EdgecError) and e.exit_code == 2:
        return "refused"
    return "crash"


def _describe(e: BaseException) -> str:
    where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}{at}: {text}"[:300]


def _run_bundle(out: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    bundle = Bundle.open(out)
    if bundle.manifest.backend != "tensorrt":
        return dict(edgec.load(out).run(inputs))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(out / bundle.manifest.artifacts["model"]), so)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def run_case(case: Case, workdir: Path, target: str = "cpu") -> Outcome:
    outcome = Outcome(case.name, ort_runs(case))
    if not outcome.ort_ok:
        return outcome
    out = workdir / "bundle"
    backend = "onnxruntime" if target == "cpu" else get_target(target).backend
    try:
        edgec.compile(case.model, target, out, backend=backend, inputs=case.inputs)
        got = _run_bundle(out, case.inputs)
        ok = all(_close(got.get(k), v, case.rtol, case.atol) for k, v in case.outputs.items())
        outcome.with_inputs = "pass" if ok else "wrong"
        if not ok:
            outcome.detail = "outputs differ from the case's expected values"
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        outcome.with_inputs = _classify(e)
        outcome.detail = _describe(e)
    shutil.rmtree(out, ignore_errors=True)
    try:
        edgec.compile(case.model, target, out, backend=backend)
        outcome.without_inputs = "ok"
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        outcome.without_inputs = _classify(e)
        if outcome.without_inputs == "crash":
            outcome.detail += f" | without inputs: {_describe(e)}"
    shutil.rmtree(out, ignore_errors=True)
    return outcome


def run_all(
    name_filter: str = "", limit: int = 0, target: str = "cpu", prefixes: tuple[str, ...] = ()
) -> list[Outcome]:
    """Every case whose name holds `name_filter` (and starts with one of `prefixes`, if any)."""
    logging.getLogger("edgec").setLevel(logging.ERROR)
    cases = [
        c
        for c in all_cases()
        if name_filter in c.name and (not prefixes or c.name.startswith(prefixes))
    ]
    if limit:
        cases = cases[:limit]
    lint = tensorrt.lint
    # polygraphy's lint costs seconds a case; restored after, for whatever runs next
    tensorrt.lint = lambda path: {"ran": False, "why": "skipped by the conformance harness"}
    try:
        with tempfile.TemporaryDirectory(prefix="edgec-conformance-") as tmp:
            return [run_case(c, Path(tmp), target) for c in cases]
    finally:
        tensorrt.lint = lint


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    runnable = [o for o in outcomes if o.ort_ok]
    return {
        "cases": len(outcomes),
        "onnxruntime_runs": len(runnable),
        "with_inputs": dict(Counter(o.with_inputs for o in runnable)),
        "without_inputs": dict(Counter(o.without_inputs for o in runnable)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--target", default="cpu")
    args = parser.parse_args()
    start = time.perf_counter()
    outcomes = run_all(args.filter, args.limit, args.target)
    result = summary(outcomes)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))
    for o in outcomes:
        if o.ort_ok and (o.with_inputs != "pass" or o.without_inputs == "crash"):
            print(f"{o.name}: {o.with_inputs}/{o.without_inputs}: {o.detail}")
    if args.json:
        args.json.write_text(json.dumps([vars(o) for o in outcomes], indent=1))


if __name__ == "__main__":
    main()
