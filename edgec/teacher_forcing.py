"""The check for binarized models: teacher forcing, telling a binarization tie from a
miscompile.

A binarized network is discontinuous: an activation that lies within rounding of its
threshold takes one code in torch and the other in onnxruntime or TVM (a LayerNorm output
within an ulp of zero), and one flipped code moves a random-weight network's output by tens
of percent. Comparing outputs end to end cannot tell that from a wrong kernel. So, when a
bundle of a torch source with `ai.edgec` binary ops fails the plain check:

1. every value that a binary op binarizes (its data inputs) becomes a cut: in a copy of
   the compiled IR, the binary ops read a new input fed with the teacher's value instead,
   and the value as the bundle computes it becomes an extra output. The teacher is torch
   (the exported program run node by node, values matched by name); for a value edgec made
   itself (a float operand it transposed) it is onnxruntime without optimizations on the
   compiled IR's function bodies, fed torch's values at the other cuts;
2. that copy is built with the same target and run: each segment between cuts is computed
   from torch's own inputs, so no decision can differ, and every cut and model output must
   match torch's within the tolerance. A wrong bit in a packed weight, a wrong scale or a
   wrong float op fails here, naming the first value at fault;
3. the free-running compiled IR (onnxruntime on its function bodies) is compared with torch
   at every cut: codes that differ where the float inputs agree within the tolerance are
   the ties, reported with the first layer where one occurred.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.core.errors import VerificationError
from edgec.core.irutil import copy_model, input_specs, output_specs, run_onnx
from edgec.runtime.bundle import Bundle, Manifest
from edgec.runtime.compare import rel_error
from edgec.runtime.session import Session

BINARY_DOMAIN = "ai.edgec"
# which inputs of each binary op are binarized at run time, with their attribute prefix
_BINARIZED = {"BinaryLinear": {0: ""}, "BinaryMatMul": {0: "a_", 1: "b_"}}
FORCED = "__forced"


class TeacherForcingError(VerificationError):
    """The bundle differs from torch even with every binarized input forced: a miscompile."""

    exit_code = 1


@dataclass
class Cut:
    value: str  # the IR value's name (= the torch FX node's)
    layer: str  # the binary op that reads it
    node: ir.Node
    index: int


@dataclass
class TieReport:
    cuts: int
    max_error: float  # of the forced run, over cuts and outputs
    ties: int  # binarization codes that differ between the free run and torch
    first_tie: str  # the layer where the first tie occurred ('' if none)

    def note(self) -> str:
        forced = (
            f"teacher-forced check: with torch's own inputs at its {self.cuts} binarized "
            f"inputs, every segment matches torch (max relative error {self.max_error:.1e})"
        )
        if not self.ties:
            return (
                f"{forced}; the free-running output differs from torch through binarization "
                "ties in the back end's own float arithmetic (onnxruntime's run of the "
                "compiled IR met none)"
            )
        return (
            f"{forced}; the free-running output differs from torch by {self.ties} "
            f"binarization tie(s), the first at {self.first_tie} (activations within rounding "
            "of a threshold, which onnxruntime and torch round to different sides)"
        )


def find_cuts(model: ir.Model) -> list[Cut]:
    """Every value a binary op binarizes at run time, in graph order."""
    cuts = []
    for node in model.graph:
        if node.domain != BINARY_DOMAIN:
            continue
        for index in _BINARIZED.get(node.op_type, {}):
            value = node.inputs[index] if index < len(node.inputs) else None
            if value is not None and value.name and value.const_value is None:
                cuts.append(Cut(value.name, (node.name or "").split("/")[0], node, index))
    return cuts


def forced_copy(
    model: ir.Model, cuts: list[Cut], extra_outputs: set[str] | None = None
) -> ir.Model:
    """A copy of `model` where the cut inputs of binary ops read `NAME__forced` graph inputs
    and the cut values (and `extra_outputs`) are also outputs."""
    copy = copy_model(model)
    position = {id(node): i for i, node in enumerate(model.graph)}
    wanted = {(position[id(c.node)], c.index) for c in cuts}  # serialization keeps the order
    forced: dict[str, ir.Value] = {}
    values = {}
    for at, node in enumerate(copy.graph):
        for index, value in enumerate(node.inputs):
            if (at, index) not in wanted or value is None or value.name is None:
                continue
            if value.name not in forced:
                forced[value.name] = ir.Value(
                    name=value.name + FORCED, shape=value.shape, type=value.type
                )
                copy.graph.inputs.append(forced[value.name])
                values[value.name] = value
            node.replace_input_with(index, forced[value.name])
    if extra_outputs:
        made = {v.name: v for n in copy.graph for v in n.outputs}
        values.update({k: made[k] for k in extra_outputs if k in made})
    outputs = {v.name for v in copy.graph.outputs}
    for name, value in values.items():
        if name not in outputs:
            copy.graph.outputs.append(value)
    return copy


def check(
    model: ir.Model,
    build: Callable[[ir.Model, Path], Bundle],
    inputs: dict[str, Any],
    reference: dict[str, Any],
    intermediates: Callable[[set[str]], dict[str, np.ndarray]],
    tolerance: dict[str, float],
    threads: int,
    backend_options: list[dict[str, Any]],
) -> tuple[TieReport, dict[str, Any]]:
    """Teacher-force the compiled IR `model` against torch (see the module docstring).

    build(ir, folder) builds a bundle of the same target from an IR; it is run with each of
    `backend_options` in turn (the target's preferred options, then its fallbacks) and the
    first that passes is returned with the report. `reference` holds torch's outputs, for
    those the exported program does not name. Raises TeacherForcingError naming the first
    value that differs from torch.
    """
    outputs = [v.name or "" for v in model.graph.outputs]
    everything = find_cuts(model)
    teacher = intermediates({c.value for c in everything} | set(outputs))
    for name in outputs:
        if name not in teacher and name in reference:
            teacher[name] = reference[name]
    named = [c for c in everything if c.value in teacher and _same_shape(c, teacher)]
    if not named:
        raise TeacherForcingError(
            "the bundle differs from torch and no binarized input could be matched with "
            "torch's values to tell a binarization tie from a miscompile"
        )
    # A binarized value edgec made (a transposed float operand) has no torch name: its
    # teacher is the reference executor's value computed from torch's values at the others.
    unnamed = [c for c in everything if c.value not in teacher]
    if unnamed:
        executor = forced_copy(model, named, extra_outputs={c.value for c in unnamed})
        feeds = {**inputs, **{c.value + FORCED: teacher[c.value] for c in named}}
        made = run_onnx(executor, feeds)
        teacher.update({c.value: made[c.value] for c in unnamed if c.value in made})
    cuts = named + [c for c in unnamed if c.value in teacher]
    forced = forced_copy(model, cuts)
    feeds = {**inputs, **{c.value + FORCED: teacher[c.value] for c in cuts}}
    order = list(dict.fromkeys([c.value for c in cuts] + outputs))
    first_error = ""
    with tempfile.TemporaryDirectory(prefix="edgec-teacher-") as tmp:
        bundle = build(forced, Path(tmp))
        for options in backend_options:
            bundle.manifest.backend_options = dict(options)
            got = Session(bundle, threads).run(feeds)
            errors = {k: rel_error(got[k], teacher[k]) for k in order if k in teacher and k in got}
            failure = _first_failure(order, errors, tolerance, cuts)
            if failure is None:
                ties, first = _ties(model, cuts, inputs, teacher)
                report = TieReport(len(cuts), max(errors.values(), default=0.0), ties, first)
                return report, dict(options)
            first_error = first_error or failure
    raise TeacherForcingError(first_error)


def _first_failure(
    order: list[str], errors: dict[str, float], tolerance: dict[str, float], cuts: list[Cut]
) -> str | None:
    for name in order:
        limit = tolerance.get(name, min(tolerance.values(), default=1e-4))
        if name in errors and not errors[name] <= limit:
            layer = next((c.layer for c in cuts if c.value == name), "")
            what = f"the input of {layer}" if layer else "an output"
            return (
                f"teacher-forced check: value '{name}' ({what}) differs from torch by "
                f"{errors[name]:.2e} > {limit:.0e} even with torch's own values at every "
                "binarized input: a miscompile, not a binarization tie"
            )
    return None


def build_like(
    compile_ir: Callable[[ir.Model, Path], Any], target: str, backend: str
) -> Callable[[ir.Model, Path], Bundle]:
    """A `build` for `check` from a target's compile(ir, folder) -> Artifacts."""

    def build(model: ir.Model, folder: Path) -> Bundle:
        artifacts = compile_ir(model, folder)
        manifest = Manifest(
            target=target,
            backend=backend,
            artifacts=artifacts.files,
            inputs=input_specs(model),
            outputs=output_specs(model),
            backend_options=artifacts.backend_options,
        )
        return Bundle(folder, manifest)

    return build


def _same_shape(cut: Cut, teacher: dict[str, np.ndarray]) -> bool:
    value = cut.node.inputs[cut.index]
    shape = value.shape if value is not None else None
    array = teacher[cut.value]
    if shape is None or len(shape) != array.ndim:
        return False
    return all(not isinstance(d, int) or d == s for d, s in zip(shape, array.shape, strict=True))


def _codes(x: np.ndarray, node: ir.Node, index: int) -> np.ndarray:
    prefix = _BINARIZED[node.op_type][index]
    a = node.attributes
    step = a.get_float(prefix + "step", 1.0)
    threshold = a.get_float(prefix + "threshold", 0.0)
    offset = 0.0
    if node.op_type == "BinaryLinear" and len(node.inputs) > 4 and node.inputs[4] is not None:
        const = node.inputs[4].const_value
        offset = const.numpy() if const is not None else 0.0
    return (((x + offset) / step) >= threshold).astype(np.float32)


def _ties(
    model: ir.Model, cuts: list[Cut], inputs: dict[str, Any], teacher: dict[str, np.ndarray]
) -> tuple[int, str]:
    """Codes that differ between the free-running IR and torch at cuts whose float values
    agree (within 1e-4 of their scale): the ties, and the first layer with one."""
    copy = copy_model(model)
    outputs = {v.name for v in copy.graph.outputs}
    by_name = {v.name: v for n in copy.graph for v in n.outputs}
    for c in dict.fromkeys(c.value for c in cuts):
        if c not in outputs and c in by_name:
            copy.graph.outputs.append(by_name[c])
    free = run_onnx(copy, inputs)
    ties, first = 0, ""
    for c in cuts:
        mine = free.get(c.value)
        if mine is None or rel_error(mine, teacher[c.value]) > 1e-4:
            continue
        theirs = _codes(teacher[c.value], c.node, c.index)
        flips = int(np.sum(_codes(mine, c.node, c.index) != theirs))
        if flips and not first:
            first = c.layer
        ties += flips
    return ties, first
