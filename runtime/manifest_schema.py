"""What a well-formed `manifest.json` holds, checked before any of its fields is used.

`problem(raw)` returns None for a manifest edgec can rely on, else a short reason naming the
field at fault (`read_manifest` turns it into a one-line BundleError). Checked strictly: every
field the runtime reads (inputs, outputs, artifacts, files, the reference, the back end's
options). The descriptive fields (source, passes, stats, compile, selection) must be of the
right container type; `edgec inspect` reports a malformed one when it cannot print it.
This module needs only numpy and the standard library.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

KINDS = ("tensor", "sequence", "optional", "optional_sequence")
ORT_LEVELS = ("disable", "basic", "extended", "all")
# the artifacts each back end loads; a back end not listed here is refused when loaded
REQUIRED_ARTIFACTS = {"onnxruntime": ("model",), "tvm": ("model",), "tensorrt": ("model",)}
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8-binary")

_SHA256 = re.compile(r"[0-9a-f]{64}")
# "attention": the form chosen per attention block, with its timings (informational);
# the mobile target's ORT-format model: "format" ("onnx" or "ort"), "saved_runtime_optimizations"
# (replayed at load), and what it reports (optimization style, platform, partitions, sizes,
# the binary ops' form)
ORT_OPTIONS = ("graph_optimization_level", "disabled_optimizers", "attention", "format",
               "saved_runtime_optimizations", "optimization_style", "target_platform",
               "partitions", "size", "binary_form", "binary_ops")  # fmt: skip
ORT_FORMATS = ("onnx", "ort")
REQUIRED = ("target", "backend", "artifacts", "files", "backend_options", "reference",
            "inputs", "outputs", "format_version", "edgec_version")  # fmt: skip
_STRINGS = ("target", "backend", "edgec_version", "format")
_MAPS = ("artifacts", "files", "backend_options", "source", "reference", "stats", "compile",
         "selection")  # fmt: skip


def problem(raw: dict[str, Any]) -> str | None:
    """None if `raw` (a parsed manifest) is well formed, else what is wrong with it."""
    for key in REQUIRED:
        if key not in raw:
            return f"'{key}' is missing"
    for key in _STRINGS:
        if key in raw and not isinstance(raw[key], str):
            return f"'{key}' is not a string"
    for key in _MAPS:
        if key in raw and not isinstance(raw[key], dict):
            return f"'{key}' is not a map"
    if not isinstance(raw.get("passes", []), list) or not all(
        isinstance(p, dict) for p in raw.get("passes", [])
    ):
        return "'passes' is not a list of maps"
    return (
        _tensors(raw, "inputs")
        or _tensors(raw, "outputs")
        or _files(raw["files"])
        or _artifacts(raw["backend"], raw["artifacts"])
        or _reference(raw["reference"])
        or _backend_options(raw["backend"], raw["backend_options"])
    )


def _tensors(raw: dict[str, Any], role: str) -> str | None:
    specs = raw[role]
    if not isinstance(specs, list) or (role == "outputs" and not specs):
        return f"'{role}' is not a list" + (" of at least one" if role == "outputs" else "")
    names = set()
    for i, spec in enumerate(specs):
        where = f"{role}[{i}]"
        if not isinstance(spec, dict):
            return f"{where} is not a map"
        unknown = set(spec) - {"name", "shape", "dtype", "kind"}
        if unknown:
            return f"{where} has the unknown field '{sorted(unknown)[0]}'"
        name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("dtype")
        kind = spec.get("kind", "tensor")
        if not isinstance(name, str) or not name:
            return f"{where} has no name"
        if name in names:
            return f"{role} name '{name}' appears twice"
        names.add(name)
        if kind not in KINDS:
            return f"{role[:-1]} '{name}' has the unknown kind {kind!r}"
        if not isinstance(shape, list) or not all(_is_dim(d) for d in shape):
            return f"{role[:-1]} '{name}' has a malformed shape {shape!r}"
        if kind != "tensor" and shape:
            return f"{role[:-1]} '{name}' is a {kind} and has a shape"
        if not _is_dtype(dtype):
            return f"{role[:-1]} '{name}' has the unknown dtype {dtype!r}"
    return None


def _is_dim(d: object) -> bool:
    if isinstance(d, str):
        return bool(d)
    return isinstance(d, int) and not isinstance(d, bool) and d >= 0


def _is_dtype(dtype: object) -> bool:
    if not isinstance(dtype, str):
        return False
    try:
        return str(np.dtype(dtype)) == dtype and np.dtype(dtype).kind in "biufcO"
    except TypeError:
        return False


def _files(files: dict[str, Any]) -> str | None:
    for name, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            return f"the checksum of '{name}' is not a sha256"
    return None


def _artifacts(backend: str, artifacts: dict[str, Any]) -> str | None:
    for key, name in artifacts.items():
        if not isinstance(name, str):
            return f"artifact '{key}' is not a file name"
    for key in REQUIRED_ARTIFACTS.get(backend, ()):
        if key not in artifacts:
            return f"the {backend} back end needs the artifact '{key}'"
    return None


def _reference(reference: dict[str, Any]) -> str | None:
    tolerance = reference.get("tolerance")
    if not _is_number(tolerance) or not tolerance > 0:
        return f"reference tolerance {tolerance!r} is not a positive number"
    error = reference.get("max_rel_error")
    if error is not None and not _is_number(error):
        return f"reference max_rel_error {error!r} is not a number"
    if error is None and not isinstance(reference.get("note"), str):
        return "the reference has no error and no note saying why"
    if not isinstance(reference.get("against", ""), str):
        return "reference 'against' is not a string"
    return None


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _backend_options(backend: str, options: dict[str, Any]) -> str | None:
    if backend == "onnxruntime":
        level = options.get("graph_optimization_level", "all")
        if level not in ORT_LEVELS:
            return f"unknown onnxruntime optimization level {level!r}"
        unknown = set(options) - set(ORT_OPTIONS)
        if unknown:
            return f"unknown onnxruntime option '{sorted(unknown)[0]}'"
        if options.get("format", "onnx") not in ORT_FORMATS:
            return f"unknown onnxruntime model format {options['format']!r}"
        if not isinstance(options.get("saved_runtime_optimizations", False), bool):
            return "onnxruntime saved_runtime_optimizations is not true or false"
        disabled = options.get("disabled_optimizers")
        if disabled is not None and (
            not isinstance(disabled, list) or not all(isinstance(o, str) for o in disabled)
        ):
            return "onnxruntime disabled_optimizers is not a list of names"
    if backend == "tensorrt" and options.get("precision", "fp32") not in TENSORRT_PRECISIONS:
        return f"unknown TensorRT precision {options['precision']!r}"
    if backend == "tvm" and not isinstance(options.get("triple", ""), str):
        return "the TVM triple is not a string"
    return None
