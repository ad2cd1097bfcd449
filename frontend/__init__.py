"""Frontends: any model source -> the IR (an `onnx_ir.Model`), with a reference pair.

    model = edgec.frontend.load("net.onnx")
    prepared = edgec.frontend.prepare(module, input_shapes={"x": (1, 3, 224, 224)})

`prepare` also returns one input and the output of an independent reference on it (torch
eager for torch sources, onnxruntime on the unmodified model for ONNX sources): the pair a
bundle keeps so that `edgec verify` can check it anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.core.errors import InputError, ModelFormatError, OptionError, SourceError
from edgec.core.irutil import graph_inputs, input_specs, ort_failure, ort_session, run_onnx
from edgec.core.specs import TensorSpec
from edgec.frontend.sources import classify, normalize_input_shapes, parse_dynamic_axis
from edgec.runtime.compare import rel_error

__all__ = ["Prepared", "load", "prepare"]


@dataclass
class Prepared:
    """A source lowered to the IR, plus a reference input and output."""

    model: ir.Model
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    source: dict[str, Any] = field(default_factory=dict)
    # onnxruntime with all its graph optimizations on the unmodified model, against the
    # reference, per output: the noise floor below which edgec cannot tell its own error
    noise: dict[str, float] = field(default_factory=dict)
    # for torch sources: the reference's own values of named IR values, on `inputs`
    intermediates: Callable[[set[str]], dict[str, np.ndarray]] | None = None


def load(source: Any, **options: Any) -> ir.Model:
    """Resolve a source into the IR; see `prepare` for the options."""
    return prepare(source, reference=False, **options).model


def prepare(
    source: Any,
    *,
    inputs: Mapping[str, Any] | None = None,
    example_inputs: tuple[Any, ...] | None = None,
    input_shapes: dict[str, Any] | list[str] | None = None,
    dynamic_axes: list[str] | list[tuple[str, int, str]] | None = None,
    seed: int = 0,
    reference: bool = True,
    model_options: dict[str, Any] | None = None,
) -> Prepared:
    """Lower `source` to the IR.

    inputs: sample input values by name (numpy arrays): used for the reference pair, for
      `--verify` and for timing; inputs not given are generated (`edgec.frontend.samples`).
    example_inputs: the same, by position (tensors for a torch module's forward).
    input_shapes: {"x": (1, 3, 224, 224)} or CLI strings ["x=1x3x224x224"].
    dynamic_axes: ["x:0"], ["x:0=batch"] or [("x", 0, "batch")]; static shapes otherwise.
    model_options: keyword arguments for a built-in model (num_classes, seed, weights).
    """
    shapes = normalize_input_shapes(input_shapes)
    axes = [a if isinstance(a, tuple) else parse_dynamic_axis(a) for a in dynamic_axes or []]
    kind = classify(source)
    label = os.fspath(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__

    if inputs is not None and example_inputs is not None:
        raise OptionError("give sample inputs by name (inputs) or by position, not both")
    if model_options and kind != "builtin":
        raise OptionError(
            f"model options ({', '.join(model_options)}) apply to built-in models only"
        )
    if kind == "factory":
        from edgec.frontend.sources import resolve_factory

        produced, label = resolve_factory(os.fspath(source))
        if isinstance(produced, tuple) and len(produced) == 2:
            produced, example_inputs = produced
        return _prepare_object(
            produced, label, "factory", inputs, example_inputs, shapes, axes, seed, reference
        )
    if kind == "builtin":
        from edgec import models

        info = models.get_info(label)
        module = models.create(label, **{"seed": seed, **(model_options or {})})
        merged: dict[str | None, TensorSpec] = dict(info.inputs)
        if None in shapes:
            shapes = {next(iter(info.inputs)): shapes[None]}
        for name, spec in shapes.items():  # a shape without a dtype keeps the model's dtype
            declared = info.inputs.get(name)
            dtype = spec.dtype or (declared.dtype if declared is not None else None)
            merged[name] = TensorSpec.requested(spec.shape, dtype)
        prepared = _prepare_torch(
            module, label, inputs, example_inputs, merged, axes, seed, reference
        )
        prepared.source["kind"] = "builtin"
        return prepared
    return _prepare_object(
        source, label, kind, inputs, example_inputs, shapes, axes, seed, reference
    )


def _prepare_object(
    obj: Any,
    label: str,
    kind: str,
    inputs: Mapping[str, Any] | None,
    example_inputs: tuple[Any, ...] | None,
    shapes: dict[str | None, TensorSpec],
    axes: list[tuple[str, int, str]],
    seed: int,
    reference: bool,
) -> Prepared:
    import onnx
    import torch

    if isinstance(obj, torch.nn.Module):
        prepared = _prepare_torch(obj, label, inputs, example_inputs, shapes, axes, seed, reference)
    elif isinstance(obj, torch.export.ExportedProgram):
        if inputs is not None:
            example_inputs = _by_position(_exported_names(obj), inputs, label)
        prepared = _prepare_exported(obj, label, example_inputs, seed, reference)
    elif isinstance(obj, (onnx.ModelProto, ir.Model)) or kind == "onnx_file":
        prepared = _prepare_onnx(obj, label, inputs, example_inputs, shapes, axes, seed, reference)
    else:
        raise SourceError(
            f"'{label}' returned a {type(obj).__name__}; expected an nn.Module, an "
            "ExportedProgram, (module, example_inputs) or an ONNX model"
        )
    if kind == "factory":
        prepared.source["kind"] = "factory"
    return prepared


def _exported_names(program: Any) -> list[str]:
    from torch.export.graph_signature import InputKind

    return [
        s.arg.name
        for s in program.graph_signature.input_specs
        if s.kind == InputKind.USER_INPUT and hasattr(s.arg, "name")
    ]


def _by_position(names: list[str], inputs: Mapping[str, Any], label: str) -> tuple[Any, ...]:
    """Named sample inputs -> positional arguments, in the order of `names`."""
    unknown = [n for n in inputs if n not in names]
    if unknown:
        raise InputError(
            f"input '{unknown[0]}' is not an input of {label} ({', '.join(names) or 'none'})"
        )
    args = []
    for name in names:
        if name not in inputs:
            break  # trailing inputs keep their defaults
        args.append(inputs[name])
    missing = [n for n in inputs if n not in names[: len(args)]]
    if missing:
        raise InputError(
            f"input '{missing[0]}' is given but an input before it "
            f"('{names[len(args)]}') is not: give inputs in order"
        )
    return tuple(args)


def _as_tensors(example_inputs: tuple[Any, ...] | Any) -> tuple[Any, ...]:
    import torch

    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    return tuple(
        t if isinstance(t, torch.Tensor) else torch.from_numpy(np.asarray(t))
        for t in example_inputs
    )


def _prepare_torch(
    module: Any,
    label: str,
    inputs: Mapping[str, Any] | None,
    example_inputs: tuple[Any, ...] | None,
    shapes: dict[str | None, TensorSpec],
    axes: list[tuple[str, int, str]],
    seed: int,
    reference: bool,
) -> Prepared:
    from edgec.frontend import torch as torch_frontend

    module = module.eval()
    if inputs is not None:
        example_inputs = _by_position(torch_frontend.forward_input_names(module), inputs, label)
    if example_inputs is not None:
        args = _as_tensors(example_inputs)
    elif shapes:
        args = torch_frontend.example_tensors(module, shapes, seed)
    else:
        raise SourceError(
            f"'{label}' is a torch module: give its input shapes (--input-shape x=1x3x224x224)"
        )
    program = torch_frontend.export_program(module, args, axes, label)
    model, decomposed = torch_frontend.lower_program_traced(program, label, axes)
    prepared = _with_torch_reference(model, module, args, label, "torch", reference)
    prepared.intermediates = partial(torch_frontend.intermediate_values, decomposed, args)
    return prepared


def _prepare_exported(
    program: Any, label: str, example_inputs: tuple[Any, ...] | None, seed: int, reference: bool
) -> Prepared:
    from edgec.frontend import torch as torch_frontend

    if example_inputs is not None:
        args = _as_tensors(example_inputs)
    elif getattr(program, "example_inputs", None):
        args = tuple(program.example_inputs[0])
    else:
        raise SourceError(f"'{label}' is an ExportedProgram without example inputs: pass some")
    model, decomposed = torch_frontend.lower_program_traced(program, label)
    prepared = _with_torch_reference(model, program.module(), args, label, "exported", reference)
    prepared.intermediates = partial(torch_frontend.intermediate_values, decomposed, args)
    return prepared


def _with_torch_reference(
    model: ir.Model, module: Any, args: tuple[Any, ...], label: str, kind: str, reference: bool
) -> Prepared:
    from edgec.frontend import torch as torch_frontend

    names = [v.name or "" for v in graph_inputs(model)]
    inputs = {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=False)}
    outputs: dict[str, np.ndarray] = {}
    noise: dict[str, float] = {}
    if reference:
        flat = torch_frontend.run_eager(module, args)
        outputs = {v.name or "": o for v, o in zip(model.graph.outputs, flat, strict=True)}
        noise = _noise(model, inputs, outputs)
    source = {"kind": kind, "name": label, "reference": f"torch {_torch_version()} eager"}
    return Prepared(model, inputs, outputs, source, noise)


def _torch_version() -> str:
    import torch

    return torch.__version__


def _prepare_onnx(
    obj: Any,
    label: str,
    inputs: Mapping[str, Any] | None,
    example_inputs: tuple[Any, ...] | None,
    shapes: dict[str | None, TensorSpec],
    axes: list[tuple[str, int, str]],
    seed: int,
    reference: bool,
) -> Prepared:
    import onnxruntime

    from edgec.frontend import onnx as onnx_frontend
    from edgec.frontend import samples

    if isinstance(obj, (str, os.PathLike)):
        model = onnx_frontend.load_file(obj)
    else:
        model = onnx_frontend.from_memory(obj, label)
    onnx_frontend.set_input_shapes(model, shapes, axes)
    onnx_frontend.check_io_types(model, label)
    specs = input_specs(model)
    if example_inputs is not None:
        if len(example_inputs) > len(specs):
            raise InputError(
                f"{len(example_inputs)} inputs given; {label} takes {len(specs)} "
                f"({', '.join(s.name for s in specs)})"
            )
        inputs = {s.name: v for s, v in zip(specs, example_inputs, strict=False)}
    given = samples.check_given(inputs or {}, specs)
    if not reference:  # the IR alone (inspect): nothing to run, nothing to generate
        return Prepared(model, given, {}, {"kind": "onnx", "name": label})
    feeds = {**samples.generate(model, [s for s in specs if s.name not in given], seed), **given}
    feeds = {s.name: feeds[s.name] for s in specs}
    outputs = _reference_run(model, feeds, label, generated=set(feeds) - set(given))
    noise = _noise(model, feeds, outputs)
    source = {
        "kind": "onnx",
        "name": label,
        "reference": f"onnxruntime {onnxruntime.__version__} on the unmodified model",
        "inputs": "given"
        if not set(feeds) - set(given)
        else ("generated" if not given else "partly given"),
    }
    return Prepared(model, feeds, outputs, source, noise)


def _reference_run(
    model: ir.Model, feeds: dict[str, np.ndarray], label: str, generated: set[str]
) -> dict[str, np.ndarray]:
    """onnxruntime on the unmodified model; a failure is the model's or its inputs' fault."""
    from edgec.core.errors import EdgecError

    try:
        session = ort_session(model)
    except EdgecError:
        raise
    except Exception as e:
        raise ModelFormatError(f"onnxruntime cannot load {label}: {ort_failure(e)}") from None
    names = [o.name for o in session.get_outputs()]
    try:
        results = session.run(names, feeds)
    except Exception as e:
        hint = ""
        if generated:
            dynamic = [
                s.name
                for s in input_specs(model)
                if s.name in generated and any(isinstance(d, str) for d in s.shape)
            ]
            hint = (
                f"; the inputs {', '.join(sorted(generated))} were generated"
                + (f" (dynamic axes of {', '.join(dynamic)} as 1)" if dynamic else "")
                + ": give real ones with --input NAME=FILE.npy"
                + (" or their sizes with --input-shape" if dynamic else "")
            )
        raise InputError(f"the reference run of {label} failed: {ort_failure(e)}{hint}") from None
    return dict(zip(names, results, strict=True))


def _noise(
    model: ir.Model, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
) -> dict[str, float]:
    """Per output, how far onnxruntime with all its graph optimizations is from the reference
    on the unmodified model: error edgec cannot be blamed for. Empty if that run fails."""
    try:
        optimized = run_onnx(model, feeds, optimize=True)
    except Exception:
        return {}
    return {k: rel_error(optimized[k], v) for k, v in outputs.items() if k in optimized}
