"""TVM target dicts for the CPUs edgec builds for: this x86_64 host, and arm64 cores by name.

TVM takes a target as a dict (it rejects CLI-style strings for these options).
"""

from __future__ import annotations

import os
from typing import Any

from edgec.core.errors import TargetError

# -mattr per arm64 CPU: NEON everywhere; the dot-product (and fp16) extensions where the core
# has them (Arm's technical reference manuals).
ARM64_CPUS: dict[str, list[str]] = {
    "generic": ["+neon"],
    "cortex-a53": ["+neon"],
    "cortex-a72": ["+neon"],
    "cortex-a55": ["+neon", "+dotprod", "+fullfp16"],
    "cortex-a76": ["+neon", "+dotprod", "+fullfp16"],
    "cortex-a78": ["+neon", "+dotprod", "+fullfp16"],
    "cortex-x1": ["+neon", "+dotprod", "+fullfp16"],
    "neoverse-n1": ["+neon", "+dotprod", "+fullfp16"],
    "neoverse-v1": ["+neon", "+dotprod", "+fullfp16", "+i8mm"],
    "neoverse-n2": ["+neon", "+dotprod", "+fullfp16", "+i8mm"],
    "apple-m1": ["+neon", "+dotprod", "+fullfp16"],
}


def host_target(mcpu: str | None = None, threads: int = 0) -> dict[str, Any]:
    """The TVM target dict for this machine (TVM rejects CLI-style strings)."""
    import tvm

    return {
        "kind": "llvm",
        "mtriple": "x86_64-linux-gnu",
        "mcpu": mcpu or tvm.target.codegen.llvm_get_system_cpu(),
        "num-cores": threads or os.cpu_count() or 1,
    }


def arm64_target(mcpu: str | None = None, threads: int = 0) -> dict[str, Any]:
    cpu = mcpu or "generic"
    if cpu not in ARM64_CPUS:
        raise TargetError(f"unknown arm64 --mcpu '{cpu}'; known: {', '.join(ARM64_CPUS)}")
    return {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": cpu,
        "mattr": list(ARM64_CPUS[cpu]),
        "num-cores": threads or 4,
    }
