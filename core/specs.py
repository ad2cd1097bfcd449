"""Tensor specs: what a model's input or output is (name, shape with static sizes or
dynamic-axis names, numpy dtype, kind), and what a user asked an input to be
(`TensorSpec.requested`: a static shape, and a dtype or None for "as declared"). One type for
both. Needs only numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgec.core.errors import InputError

Dim = int | str  # a static size, or the name of a dynamic axis
Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output: shape (ints, or names for dynamic axes) and numpy dtype.

    `kind` is "tensor", or for ONNX's other value types "sequence" (a list of tensors of
    `dtype`), "optional" (a tensor or None) or "optional_sequence" (a list or None); their
    element shapes are not fixed and `shape` is empty.

    A requested spec (`requested`) may leave `dtype` None: as the model declares it. Its name
    is the key it is given under ("" for a model's only input).
    """

    name: str
    shape: tuple[Dim, ...]
    dtype: str | None
    kind: str = "tensor"

    @classmethod
    def requested(cls, shape: Shape, dtype: str | None = None) -> TensorSpec:
        """A static input shape (and dtype, None for "as declared") that a user asked for."""
        return cls("", tuple(shape), dtype)

    def describe(self) -> str:
        if self.kind != "tensor":
            return f"{self.kind.replace('_', ' ')} of {self.dtype} tensors"
        return "(" + ", ".join(str(d) for d in self.shape) + f") {self.dtype or 'any dtype'}"

    def coerce(self, value: Any, role: str = "input") -> Any:
        """`value` as this spec's kind (arrays for tensors); InputError if it does not fit."""
        if self.kind.startswith("optional") and value is None:
            return None
        if self.kind in ("sequence", "optional_sequence"):
            if not isinstance(value, (list, tuple)):
                raise InputError(
                    f"{role} '{self.name}' is a sequence: give a list of {self.dtype} arrays"
                )
            items = [np.asarray(v) for v in value]
            for item in items:
                if str(item.dtype) != self.dtype:
                    raise InputError(
                        f"{role} '{self.name}' holds a {item.dtype} tensor; expected {self.dtype}"
                    )
            return items
        array = np.asarray(value)
        if array.dtype.kind in "US" and self.dtype == "object":
            array = array.astype(object)
        if self.kind == "optional":
            if str(array.dtype) != self.dtype:
                raise InputError(
                    f"{role} '{self.name}' has dtype {array.dtype}; expected {self.dtype}"
                )
            return array
        self.check(array, role)
        return array

    def check(self, value: np.ndarray, role: str = "input") -> None:
        """Raise InputError naming this tensor if `value` has the wrong dtype or shape."""
        if self.dtype is not None and str(value.dtype) != self.dtype:
            raise InputError(f"{role} '{self.name}' has dtype {value.dtype}; expected {self.dtype}")
        shape_ok = len(value.shape) == len(self.shape) and all(
            isinstance(d, str) or d == s for d, s in zip(self.shape, value.shape, strict=True)
        )
        if not shape_ok:
            got = "(" + ", ".join(str(s) for s in value.shape) + ")"
            want = "(" + ", ".join(str(d) for d in self.shape) + ")"
            raise InputError(f"{role} '{self.name}' has shape {got}; expected {want}")

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.kind != "tensor":
            d["kind"] = self.kind
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"], d.get("kind", "tensor"))
