"""Resolving what the user names into something a frontend can lower.

A source is one of:

- an `nn.Module` (with example inputs or input shapes) or a `torch.export.ExportedProgram`,
- an ONNX model: a path to an `.onnx` file (external data beside it), or an in-memory
  `onnx.ModelProto` / `onnx_ir.Model`,
- `path/to/file.py:factory` or `package.module:factory`, a callable returning an
  `nn.Module`, an `ExportedProgram`, or `(module, example_inputs)`,
- the name of a built-in model (`edgec models`).

Importing a user's file never writes bytecode beside it: edgec leaves the user's files as
they were.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgec.core.errors import OptionError, SourceError
from edgec.core.specs import TensorSpec

_DTYPES = (
    "float32",
    "float16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)


def parse_input_shape(text: str) -> tuple[str | None, TensorSpec]:
    """`x=1x3x224x224`, `ids=1x128:int64`, `n=scalar:int64` (rank 0) or a bare `1x3x224x224`
    (for a single input)."""
    m = re.fullmatch(r"(?:([A-Za-z_][\w.]*)=)?(scalar|\d+(?:x\d+)*)(?::(\w+))?", text.strip())
    if not m:
        raise OptionError(
            f"malformed input shape '{text}': write NAME=DxDx...[:DTYPE] (or NAME=scalar), "
            "e.g. x=1x3x224x224"
        )
    name, dims, dtype = m.groups()
    if dtype is not None and dtype not in _DTYPES:
        raise OptionError(f"input shape '{text}': unknown dtype '{dtype}' ({', '.join(_DTYPES)})")
    shape = () if dims == "scalar" else tuple(int(d) for d in dims.split("x"))
    return name, TensorSpec.requested(shape, dtype)


def parse_dynamic_axis(text: str) -> tuple[str, int, str]:
    """`x:0` or `x:0=batch` -> (input name, axis, symbol)."""
    m = re.fullmatch(r"([A-Za-z_][\w.]*):(\d+)(?:=([A-Za-z_]\w*))?", text.strip())
    if not m:
        raise OptionError(f"malformed dynamic axis '{text}': write NAME:AXIS[=SYMBOL], e.g. x:0")
    name, axis, symbol = m.groups()
    return name, int(axis), symbol or f"{name}_dim{axis}"


def normalize_input_shapes(
    shapes: dict[str, Any] | list[str] | tuple[str, ...] | None,
) -> dict[str | None, TensorSpec]:
    """Accept CLI strings, or a dict name -> shape tuple | TensorSpec | string."""
    if not shapes:
        return {}
    if isinstance(shapes, (list, tuple)):
        parsed = [parse_input_shape(s) for s in shapes]
        if len(parsed) > 1 and any(name is None for name, _ in parsed):
            raise OptionError("with several --input-shape options, name each: NAME=DxDx...")
        return dict(parsed)
    out: dict[str | None, TensorSpec] = {}
    for name, value in shapes.items():
        if isinstance(value, TensorSpec):
            out[name] = value
        elif isinstance(value, str):
            out[name] = parse_input_shape(value)[1]
        else:
            out[name] = TensorSpec.requested(tuple(int(d) for d in value))
    return out


@contextlib.contextmanager
def _no_bytecode() -> Iterator[None]:
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = saved


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise SourceError(f"model file '{path}' does not exist")
    name = f"_edgec_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SourceError(f"cannot import '{path}' as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))  # so the file can import its neighbours
    try:
        with _no_bytecode(), _no_exit(f"importing '{path}'"):
            spec.loader.exec_module(module)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"importing '{path}' failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(path.parent.resolve()))
    return module


def _import_module(name: str) -> Any:
    try:
        with _no_bytecode():
            return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise SourceError(f"cannot import module '{name}': {e}") from None
    except Exception as e:
        raise SourceError(f"importing module '{name}' failed: {type(e).__name__}: {e}") from None


def resolve_factory(source: str) -> tuple[Any, str]:
    """`file.py:factory` or `package.module:factory` -> (the factory's result, label)."""
    where, _, attr = source.rpartition(":")
    module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    factory = getattr(module, attr, None)
    if factory is None:
        raise SourceError(f"'{where}' has no attribute '{attr}'")
    if not callable(factory):
        return factory, source
    try:
        with _no_exit(f"calling '{source}'"):
            return factory(), source
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"calling '{source}' failed: {type(e).__name__}: {e}") from None


@contextlib.contextmanager
def _no_exit(doing: str) -> Iterator[None]:
    """The user's code must not end edgec: sys.exit() (argparse's too) becomes a SourceError,
    and what it printed on the way out (argparse's usage) goes into the message, not to the
    terminal as if it were edgec's."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except SystemExit as e:
        said = captured.getvalue().strip().splitlines()
        tail = f": {said[-1]}" if said else ""
        raise SourceError(f"{doing} called sys.exit({e.code}){tail}") from None
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())  # what the user's code says otherwise is theirs


def classify(source: Any) -> str:
    """Which frontend takes `source`.

    One of 'torch', 'exported', 'onnx', 'onnx_file', 'factory', 'builtin'.
    """
    import onnx
    import onnx_ir as ir
    import torch

    if isinstance(source, torch.export.ExportedProgram):
        return "exported"
    if isinstance(source, torch.nn.Module):
        return "torch"
    if isinstance(source, (onnx.ModelProto, ir.Model)):
        return "onnx"
    if not isinstance(source, (str, os.PathLike)):
        raise SourceError(f"cannot compile a {type(source).__name__}: not a model source")
    text = os.fspath(source)
    if text.endswith(".onnx") or Path(text).is_file():
        return "onnx_file"
    if re.fullmatch(r".+:[A-Za-z_]\w*", text) and not re.match(r"^[A-Za-z]:\\", text):
        return "factory"
    from edgec.models import list_models

    if text in list_models():
        return "builtin"
    raise SourceError(
        f"unknown source '{text}': not an .onnx file, a file.py:factory, a module:factory, "
        "or a built-in model (see `edgec models`)"
    )
