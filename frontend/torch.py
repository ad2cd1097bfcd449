"""PyTorch -> IR: `torch.export`, then `torch.onnx.export(dynamo=True)`.

Shapes are static unless the user names dynamic axes. Node names are rewritten to the torch
module path the exporter records (`blocks.0.conv/conv2d_1`), so reports and per-op profiles
read in the user's own terms.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from edgec.core.errors import OptionError, SourceError
from edgec.core.specs import TensorSpec

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
log = logging.getLogger(__name__)

_SCOPES = "pkg.torch.onnx.name_scopes"


def forward_input_names(module: torch.nn.Module) -> list[str]:
    params = inspect.signature(module.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def example_tensors(
    module: torch.nn.Module, specs: dict[str | None, TensorSpec], seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs for `forward` from named (or a single unnamed) shapes."""
    names = forward_input_names(module)
    if None in specs:
        if len(specs) != 1:
            raise OptionError("name every --input-shape when the model has several inputs")
        specs = {names[0] if names else "input": specs[None]}
    unknown = [n for n in specs if n not in names]
    if unknown:
        raise OptionError(
            f"--input-shape names '{unknown[0]}', which is not an input of "
            f"{type(module).__name__}.forward ({', '.join(names)})"
        )
    rng = np.random.default_rng(seed)
    tensors = []
    for name in names:
        if name not in specs:
            break  # trailing inputs with defaults are left to their defaults
        spec = specs[name]
        dtype = spec.dtype or "float32"
        if dtype.startswith("float"):
            arr = np.asarray(rng.standard_normal(spec.shape)).astype(dtype)
        elif dtype == "bool":
            arr = np.asarray(rng.integers(0, 2, spec.shape)).astype(bool)
        else:  # indices: 0 and 1 are valid for any embedding table
            arr = np.asarray(rng.integers(0, 2, spec.shape)).astype(dtype)
        tensors.append(torch.from_numpy(arr))
    missing = [n for n in names[len(tensors) :] if n not in specs]
    required = [
        p.name
        for p in inspect.signature(module.forward).parameters.values()
        if p.default is p.empty and p.name in missing
    ]
    if required:
        raise OptionError(f"input '{required[0]}' needs a shape: --input-shape {required[0]}=...")
    return tuple(tensors)


def _dynamic_shapes(
    args: Sequence[torch.Tensor], names: list[str], axes: list[tuple[str, int, str]]
) -> dict[str, dict[int, torch.export.Dim]] | None:
    if not axes:
        return None
    spec: dict[str, dict[int, torch.export.Dim]] = {n: {} for n in names[: len(args)]}
    for name, axis, symbol in axes:
        if name not in spec:
            raise OptionError(
                f"--dynamic-axis names '{name}', which is not an input ({', '.join(spec)})"
            )
        rank = args[names.index(name)].dim()
        if axis >= rank:
            raise OptionError(f"--dynamic-axis {name}:{axis}: input '{name}' has rank {rank}")
        spec[name][axis] = torch.export.Dim(symbol)
    return spec


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's exporters warn about their own internals (pytree deprecations) and print the
    graph they failed on to stderr before raising: not the user's concern, and noise around
    edgec's one-line error. What they print goes to edgec's debug log instead."""
    printed = io.StringIO()
    # torch's loggers have handlers of their own and reset their levels on export: their
    # warnings are held back at the handlers, unless edgec itself logs (-v)
    handlers = [] if log.isEnabledFor(logging.INFO) else _torch_handlers()
    for handler in handlers:
        handler.addFilter(_errors_only)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stderr(printed),
            contextlib.redirect_stdout(printed),
        ):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(_errors_only)
        if printed.getvalue().strip():
            log.debug("torch printed:\n%s", printed.getvalue())


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def _torch_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger("torch")] + [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name.startswith("torch.") and isinstance(logger, logging.Logger)
    ]
    return list({id(h): h for logger in loggers for h in logger.handlers}.values())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def export_program(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic_axes: list[tuple[str, int, str]] | None = None,
    label: str = "model",
) -> torch.export.ExportedProgram:
    names = forward_input_names(module)
    try:
        with _quiet():
            return torch.export.export(
                module, args, dynamic_shapes=_dynamic_shapes(args, names, dynamic_axes or [])
            )
    except OptionError:
        raise
    except Exception as e:
        raise SourceError(f"torch.export cannot export '{label}': {_first_line(e)}") from None


def lower_program(
    program: torch.export.ExportedProgram,
    label: str = "model",
    dynamic_axes: list[tuple[str, int, str]] | None = None,
) -> ir.Model:
    """ExportedProgram -> ONNX IR, nodes named by their torch module path, dynamic axes
    named by the user's symbols."""
    return lower_program_traced(program, label, dynamic_axes)[0]


def lower_program_traced(
    program: torch.export.ExportedProgram,
    label: str = "model",
    dynamic_axes: list[tuple[str, int, str]] | None = None,
) -> tuple[ir.Model, torch.export.ExportedProgram]:
    """`lower_program`, and the decomposed program the exporter translated: its FX nodes
    carry the names of the ONNX values they became (see `intermediate_values`)."""
    try:
        with _quiet():
            onnx_program = torch.onnx.export(program, dynamo=True, optimize=False, verbose=False)
    except Exception as e:
        raise SourceError(f"torch.onnx cannot convert '{label}': {_first_line(e)}") from None
    model = onnx_program.model
    name_nodes_by_module(model.graph)
    rename_symbols(model, dynamic_axes or [])
    return model, onnx_program.exported_program


def intermediate_values(
    program: torch.export.ExportedProgram, args: tuple[torch.Tensor, ...], names: set[str]
) -> dict[str, np.ndarray]:
    """torch's own values of the named FX nodes (= ONNX value names of the export) on `args`,
    computed by running the program node by node in eager mode."""
    captured: dict[str, np.ndarray] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            result = super().run_node(n)
            if n.name in names and isinstance(result, torch.Tensor):
                captured[n.name] = result.detach().cpu().numpy()
            return result

    with torch.no_grad(), _quiet():
        Recorder(program.module()).run(*args)
    return captured


def rename_symbols(model: ir.Model, axes: list[tuple[str, int, str]]) -> None:
    """torch.export names dynamic sizes itself (s77); give them the user's names (batch)."""
    inputs = {v.name: v for v in model.graph.inputs}
    renames: dict[str, str] = {}
    for name, axis, symbol in axes:
        value = inputs.get(name)
        if value is not None and value.shape is not None:
            dim = value.shape[axis]
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                renames[dim.value] = symbol
    if not renames:
        return
    values = [*model.graph.inputs, *model.graph.outputs]
    values += [out for node in model.graph for out in node.outputs]
    for value in values:
        if value.shape is None:
            continue
        if any(isinstance(d, ir.SymbolicDim) and d.value in renames for d in value.shape):
            value.shape = ir.Shape(
                [
                    ir.SymbolicDim(renames[d.value])
                    if isinstance(d, ir.SymbolicDim) and d.value in renames
                    else d
                    for d in value.shape
                ]
            )


def name_nodes_by_module(graph: ir.Graph) -> None:
    """node_conv2d_1 -> blocks.0.conv/conv2d_1, from the exporter's name scopes."""
    taken: set[str] = set()
    for node in graph:
        scopes_text = node.metadata_props.get(_SCOPES)
        if scopes_text:
            try:
                scopes = ast.literal_eval(scopes_text)
            except (ValueError, SyntaxError):
                scopes = []
            path = [s for s in scopes[:-1] if s]
            if scopes and path:
                node.name = f"{path[-1]}/{scopes[-1]}"
        base, k = node.name or node.op_type, 1
        while node.name in taken or not node.name:
            node.name = f"{base}_{k}"
            k += 1
        taken.add(node.name)


def run_eager(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """The independent reference: torch eager, outputs flattened in the exporter's order."""
    with torch.no_grad():
        result = module(*args)
    flat, _ = torch.utils._pytree.tree_flatten(result)
    return [t.detach().cpu().numpy() for t in flat if isinstance(t, torch.Tensor)]
