"""What every `edgec package --embed` project holds besides the model: the bundle's reference
pair as raw files, for the example program to run and be checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.core.errors import OptionError
from edgec.runtime.bundle import Bundle, load_reference


def write_reference(bundle: Bundle, out: Path) -> None:
    """io.txt, inputs/NAME.bin and expected/NAME.bin: the reference pair as raw files."""
    m = bundle.manifest
    inputs, outputs = load_reference(bundle)
    lines = []
    for role, specs, data in (("input", m.inputs, inputs), ("output", m.outputs, outputs)):
        folder = out / ("inputs" if role == "input" else "expected")
        folder.mkdir()
        for s in specs:
            value = np.ascontiguousarray(data[s.name])
            lines.append(" ".join([role, s.name, str(value.dtype), *map(str, value.shape)]))
            value.astype(value.dtype.newbyteorder("<")).tofile(folder / f"{s.name}.bin")
    (out / "io.txt").write_text("\n".join(lines) + "\n")


def check_empty(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptionError(f"--embed folder '{out}' exists and is not empty")
