"""The target interface: every target compiles the IR after its pipeline into artifacts.

The driver (`edgec.api.compile`) owns what all targets share: the frontend, the pipeline,
the reference pair, the numerical check of the finished bundle (`runtime/bundle_check.py`),
measure-and-pick (`runtime/measure_and_pick.py`), the manifest and the staged write
(`runtime/staging.py`). A target writes only its back end's artifacts into the staging folder
it is given, from the IR and its typed `CompileOptions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import onnx_ir as ir


@dataclass(frozen=True)
class CompileOptions:
    """What a target's compile may take from the user besides the IR."""

    threads: int = 0  # threads the library is built, tuned and measured for (0: all cores)
    mcpu: str | None = None  # TVM targets: the CPU (None: this host's, or arm64 "generic")
    tune: int = 0  # TVM: MetaSchedule trials in all (0: apply the database only)
    tune_time: float | None = None  # TVM: stop tuning after this many seconds
    device: str | None = None  # HOST:PORT to tune a cross target on
    on_progress: Callable[[str], None] | None = None  # a line per tuning step
    # kind of attention block -> form (`--attention-form`; `passes.lower_attention`)
    attention_forms: dict[str, str] = field(default_factory=dict)
    # mobile: the ORT converter's optimization style, "fixed" (CPU, XNNPACK) or "runtime"
    # (NNAPI, Core ML: the rest replayed at load)
    optimization_style: str = "fixed"
    # tensorrt: fp32, fp16 (fp32 guards) or int8-binary (binary layers as INT8 Q/DQ)
    precision: str = "fp32"


@dataclass
class Artifacts:
    """What a target wrote: artifact role -> file name, and how the runtime should open it.

    `fallbacks` are further back-end options, in order of preference, for the driver to try
    when the bundle opened with `backend_options` fails its check against the reference.
    `check_backend` names the back end the driver checks the artifacts with when this host
    cannot run the target's own (a TensorRT bundle's ONNX, in onnxruntime), with
    `check_options`; None: its own. `check_hint` is added to a failed check's message (what
    the user can do about it). `source_model` is the graph the artifacts were built from when
    the target changed the one it was given (TVM lowers attention first), and `kernels` a TVM
    library's kernels with their source nodes: the driver writes both into the bundle's op map
    (`edgec.core.op_map`).
    """

    files: dict[str, str]
    backend_options: dict[str, Any] = field(default_factory=dict)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    check_backend: str | None = None
    check_options: dict[str, Any] = field(default_factory=dict)
    check_hint: str = ""
    source_model: ir.Model | None = None
    kernels: list[dict[str, Any]] | None = None


class Target(Protocol):
    name: str
    backend: str
    pipeline: str
    description: str
    verified: str  # what edgec checks of this target's bundles on this host, and how

    def reason_to_skip(self, model: ir.Model, options: CompileOptions) -> str | None:
        """Why `--backend auto` need not build this model here (None: build it)."""
        ...

    def compile(self, model: ir.Model, options: CompileOptions, stage: Path) -> Artifacts: ...
