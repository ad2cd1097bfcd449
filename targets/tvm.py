"""Target `x86_64`: the IR after the cpu pipeline, imported into TVM Relax, built with LLVM for
the host CPU and exported as `model.so` (the Relax VM executable).

Untuned: every kernel uses TVM's default schedules. Measured on these machines (shared
BACKENDS.md), untuned TVM runs float32 models tens of times slower than onnxruntime; it is here
for the back ends and devices onnxruntime does not serve, and MetaSchedule tuning is what makes
it competitive. The manifest says `tuned: false`.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx_ir as ir

from edgec.errors import UnsupportedOpError
from edgec.targets.base import Artifacts, CompileOptions


def host_target(mcpu: str | None = None, threads: int = 0) -> dict[str, object]:
    """The TVM target dict for this machine (TVM rejects CLI-style strings)."""
    import tvm

    return {
        "kind": "llvm",
        "mtriple": "x86_64-linux-gnu",
        "mcpu": mcpu or tvm.target.codegen.llvm_get_system_cpu(),
        "num-cores": threads or os.cpu_count() or 1,
    }


class TvmX86Target:
    name = "x86_64"
    backend = "tvm"
    pipeline = "cpu"
    description = "host x86_64 CPU through TVM Relax (LLVM, untuned), exported as model.so"

    def compile(self, model: ir.Model, options: CompileOptions, stage: Path) -> Artifacts:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        proto = ir.serde.serialize_model(model)
        try:
            mod = from_onnx(proto, keep_params_in_input=False)
        except Exception as e:  # the importer lists the ops it lacks in its message
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "not supported" in text or "NotImplemented" in type(e).__name__:
                raise UnsupportedOpError(
                    f"TVM's ONNX importer cannot take this model: {text}"
                ) from None
            raise
        target = host_target(options.extra.get("mcpu"), options.threads)
        executable = relax.build(mod, target=tvm.target.Target(target))
        executable.export_library(str(stage / "model.so"))
        return Artifacts(
            {"model": "model.so"},
            {"target": target, "tvm_version": tvm.__version__, "tuned": False},
        )
