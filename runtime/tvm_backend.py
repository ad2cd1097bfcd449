"""The TVM back end of the runtime: a Relax VM executable (`model.so`) on the CPU.

Needs only TVM's runtime (`TVM_USE_RUNTIME_LIB=1` loads nothing else), not the compiler.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgec.core.errors import BundleError
from edgec.runtime.bundle import Bundle
from edgec.runtime.op_timers import profile_calls


def host_triple() -> str:
    """The triple this process runs on, as the TVM targets name it."""
    machine = platform.machine()
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(machine, machine)


def bundle_triple(bundle: Bundle, use: str) -> str:
    """The triple a TVM bundle's library is built for; BundleError if it is not a TVM bundle."""
    m = bundle.manifest
    if m.backend != "tvm":
        raise BundleError(
            f"bundle '{bundle.path}' uses the {m.backend} back end; {use} takes TVM bundles "
            "(compile with --target x86_64 or arm64)"
        )
    return str(m.backend_options.get("triple", "x86_64-linux-gnu"))


def _load_fresh(tvm: Any, path: Path) -> Any:
    """Load the library at `path` as it is now. The dynamic loader keeps a library by its path:
    a bundle rewritten in place (a recompile into the same folder) would otherwise load the
    old code in a process that opened it before. A uniquely named hard link (or copy) is
    loaded instead and removed at once; the mapping stays."""
    with tempfile.TemporaryDirectory(prefix="edgec-lib-") as tmp:
        fresh = Path(tmp) / path.name
        try:
            os.link(path, fresh)
        except OSError:
            shutil.copyfile(path, fresh)
        return tvm.runtime.load_module(str(fresh))


class TvmRunner:
    def __init__(self, path: Path, input_names: list[str], threads: int = 0) -> None:
        import tvm
        from tvm import relax

        if threads > 0:  # (mode 1: big cores first, n threads)
            tvm.get_global_func("runtime.config_threadpool")(1, threads)
        try:
            self.vm = relax.VirtualMachine(_load_fresh(tvm, path), tvm.cpu())
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"TVM cannot load '{path}': {first}") from None
        self.input_names = input_names
        self._tvm = tvm

    def _args(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        return [self._tvm.runtime.tensor(np.ascontiguousarray(feeds[n])) for n in self.input_names]

    def op_profile(self, feeds: dict[str, np.ndarray], runs: int) -> list[dict[str, Any]]:
        """Time of every call `main` makes, mean over `runs` (`op_timers.profile_calls`)."""
        return profile_calls(self.vm, self._args(feeds), runs)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = self._args(feeds)
        out: Any = self.vm["main"](*args)
        outputs = list(out) if not hasattr(out, "numpy") else [out]
        return [o.numpy() for o in outputs]
