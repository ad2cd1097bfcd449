"""The target interface: every target compiles the IR after its pipeline into artifacts.

The driver (`edgec.api.compile`) owns what all targets share: the frontend, the pipeline,
the reference pair, the numerical check of the finished bundle, the manifest and the atomic
rename. A target writes only its back end's artifacts into the staging folder it is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import onnx_ir as ir


@dataclass
class CompileOptions:
    threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artifacts:
    """What a target wrote: artifact role -> file name, and how the runtime should open it.

    `fallbacks` are further back-end options, in order of preference, for the driver to try
    when the bundle opened with `backend_options` fails its check against the reference.
    """

    files: dict[str, str]
    backend_options: dict[str, Any] = field(default_factory=dict)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)


class Target(Protocol):
    name: str
    backend: str
    pipeline: str
    description: str

    def compile(self, model: ir.Model, options: CompileOptions, stage: Path) -> Artifacts: ...
