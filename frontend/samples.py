"""Sample inputs for the reference run, `--verify`, back-end timing and calibration.

The user's own inputs (`--input NAME=FILE.npy`, `--inputs FILE.npz`, `inputs=` in the API)
are checked against the model's declared inputs: known names, the declared dtype exactly,
the declared rank and every static size. Inputs not given are generated deterministically,
respecting what the graph says about them:

- floats are N(0, 1), booleans 0/1, a declared scalar stays a scalar;
- an integer input that indexes a table (Gather, GatherElements, the indices of an embedding)
  takes values in [0, size of the indexed axis), never past the table;
- an integer divisor (Div, Mod) is never 0; other integers are 0/1.

Shapes, sizes and positions given as inputs (Reshape's shape, Slice's starts, Resize's
sizes) cannot be guessed: when the reference run fails on generated inputs, the error names
the node and op and asks for `--input`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from edgec.core.errors import InputError
from edgec.core.irutil import graph_inputs, random_inputs
from edgec.core.specs import TensorSpec

_INDEXING = {"Gather": 1, "GatherElements": 1}
_DIVIDING = {"Div": 1, "Mod": 1}


def _index_bound(node: ir.Node) -> int | None:
    data = node.inputs[0] if node.inputs else None
    if data is None or data.shape is None:
        return None
    rank = len(data.shape)
    axis = node.attributes.get_int("axis", 0)
    if not -rank <= axis < rank:
        return None
    size = data.shape[axis]
    return size if isinstance(size, int) and size > 0 else None


def integer_ranges(model: ir.Model) -> dict[str, tuple[int, int]]:
    """Per integer input, the range [low, high) its readers in the graph accept."""
    ranges: dict[str, tuple[int, int]] = {}
    for value in graph_inputs(model):
        dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else None
        if dtype is None or not np.issubdtype(dtype, np.integer):
            continue
        low, high = 0, 2
        bounds = []
        for node, index in value.uses():
            if node.domain in ("", "ai.onnx") and _INDEXING.get(node.op_type) == index:
                bound = _index_bound(node)
                if bound is not None:
                    bounds.append(bound)
            if node.domain in ("", "ai.onnx") and _DIVIDING.get(node.op_type) == index:
                low = 1
        if bounds:
            high = min(bounds)
        ranges[value.name or ""] = (low, max(high, low + 1))
    return ranges


MAX_SAMPLE_BYTES = 4 << 30  # a generated sample larger than this is a mistake, not a sample


def generate(model: ir.Model, specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    for spec in specs:
        count = int(np.prod([d if isinstance(d, int) else 1 for d in spec.shape], dtype=object))
        size = count * np.dtype(spec.dtype).itemsize
        if size > MAX_SAMPLE_BYTES:
            raise InputError(
                f"input '{spec.name}' declares {spec.describe()}: {size / (1 << 30):.0f} GiB, "
                "too large for a sample input; fix its shape with --input-shape"
            )
    return random_inputs(specs, seed, int_ranges=integer_ranges(model))


def check_given(given: Mapping[str, Any], specs: list[TensorSpec]) -> dict[str, Any]:
    """The user's inputs as arrays (lists for sequences), each checked against the model's
    declared input."""
    by_name = {s.name: s for s in specs}
    out: dict[str, np.ndarray] = {}
    for name, value in given.items():
        spec = by_name.get(name)
        if spec is None:
            raise InputError(
                f"input '{name}' is not an input of the model ("
                + (", ".join(by_name) or "it takes none")
                + ")"
            )
        out[name] = spec.coerce(value)
    return out
