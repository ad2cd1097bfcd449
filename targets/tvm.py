"""Targets `x86_64` and `arm64`: the IR after the cpu pipeline, imported into TVM Relax, built
with LLVM and exported as `model.so` (the Relax VM executable), cross-compiled for arm64.

Untuned, every kernel keeps TVM's default schedule; measured on these machines (shared
BACKENDS.md) that runs float32 models tens of times slower than onnxruntime. `--tune TRIALS` /
`--tune-time SECONDS` runs MetaSchedule (see `edgec.targets.tuning`) into a database that later
compiles reuse. An arm64 compile cannot measure kernels on this host: without a device it
applies the records tuned for the host where the workloads match, and the manifest says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgec.core.binary_ops import has_binary_ops
from edgec.core.errors import TargetError
from edgec.runtime.tvm_backend import host_triple
from edgec.targets import tuning
from edgec.targets.base import Artifacts, CompileOptions
from edgec.targets.tvm_import import import_onnx, lower_for_tvm
from edgec.targets.tvm_targets import arm64_target, host_target

CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_PACKAGE = "gcc-aarch64-linux-gnu"


class TvmTarget:
    """One TVM target: a target dict, a compiler for the shared library, a tuning policy."""

    name = ""
    backend = "tvm"
    pipeline = "cpu"
    description = ""
    verified = ""
    triple = ""

    def target_dict(self, options: CompileOptions) -> dict[str, Any]:
        raise NotImplementedError

    def export_cc(self) -> str | None:
        """The C compiler that links model.so (None: TVM's default, the host's)."""
        return None

    def reason_to_skip(self, model: ir.Model, options: CompileOptions) -> str | None:
        """Why measure-and-pick need not build this model for TVM (None: build it). Untuned
        float kernels run tens of times slower than onnxruntime's (shared BACKENDS.md): a
        build can win only with edgec's popcount kernels, with tuning, or with tuning
        records that cover every kernel."""
        if options.tune or options.tune_time or has_binary_ops(model):
            return None
        try:
            lowered, _ = lower_for_tvm(model, options.attention_forms)
            missing = tuning.untuned_tasks(import_onnx(lowered), self.target_dict(options))
        except Exception:  # TVM cannot take the model: the build says why, as a failure
            return None
        if missing is None:
            return "no tuning records on this host and no binary ops: untuned TVM cannot win"
        if missing:
            return (
                f"{len(missing)} kernels without a tuning record ({', '.join(missing[:3])}"
                + (", ..." if len(missing) > 3 else "")
                + "): untuned TVM cannot win; --tune builds and tunes it"
            )
        return None

    def compile(self, model: ir.Model, options: CompileOptions, stage: Path) -> Artifacts:
        import tvm
        from tvm import relax

        from edgec.targets.binary_kernels import schedule_untuned

        target = self.target_dict(options)
        cc = self.export_cc()
        model, attention = lower_for_tvm(model, options.attention_forms)
        names: list[str] = []
        kernels: list[dict[str, Any]] = []
        mod = import_onnx(model, names)
        mod, tuned = tuning.schedule(
            mod, target, options, cross=self.triple != host_triple(), kernels=kernels
        )
        mod = schedule_untuned(mod, target)  # binary kernels without a tuning record
        executable = relax.build(mod, target=tvm.target.Target(target))
        path = stage / "model.so"
        if cc is None:
            executable.export_library(str(path))
        else:
            from tvm.support import cc as tvm_cc

            executable.export_library(str(path), fcompile=tvm_cc.cross_compiler(cc))
        return Artifacts(
            {"model": "model.so"},
            {
                "target": target,
                "triple": self.triple,
                "tvm_version": tvm.__version__,
                "tuning": tuned,
                **({"attention": attention} if attention else {}),
            },
            source_model=model,
            kernels=[
                {"kernel": k["kernel"], "nodes": [names[i] for i in k["nodes"] if i < len(names)]}
                for k in kernels
            ],
        )


class TvmX86Target(TvmTarget):
    name = "x86_64"
    triple = "x86_64-linux-gnu"
    description = (
        "x86_64 CPU through TVM Relax (LLVM; --mcpu, the host's by default), model.so; with "
        "--backend auto (the default) also onnxruntime, keeping the faster"
    )
    verified = "each bundle run here and checked against the reference when compiled"

    def target_dict(self, options: CompileOptions) -> dict[str, Any]:
        return host_target(options.mcpu, options.threads)


class TvmArm64Target(TvmTarget):
    name = "arm64"
    triple = "aarch64-linux-gnu"
    description = (
        "aarch64 Linux through TVM Relax (LLVM, NEON; --mcpu cortex-a55 etc.), "
        "cross-compiled model.so"
    )
    verified = (
        "checked against the reference on an arm64 device (--device HOST:PORT; an emulated "
        "one here: `edgec device emulate arm64`), not on this x86_64 host"
    )

    def target_dict(self, options: CompileOptions) -> dict[str, Any]:
        return arm64_target(options.mcpu, options.threads)

    def export_cc(self) -> str:
        if shutil.which(CROSS_CC) is None:
            raise TargetError(
                f"the arm64 target needs the cross compiler '{CROSS_CC}' (Debian package "
                f"{CROSS_PACKAGE}; `make install` installs it)"
            )
        return CROSS_CC
