"""Per-op timers that run where the model runs: a Relax VM's calls, onnxruntime's kernels.

The Relax VM of this TVM (0.27) has no profiler of its own, but it calls an instrument before
and after each Call instruction (`VirtualMachine.set_instrument`). The instrument here reads
the clock on both sides, so each call's time is the kernel's plus a function-call overhead
(about a microsecond), measured in the process that runs the VM: on a device, the device's
clock. onnxruntime's own profiler writes a trace of every kernel run; `ort_kernel_times` sums
it per node. Needs only the standard library (and the runtime that is timed), so that the
device server (`device_server.py`, which runs beside this file on a device without edgec)
uses it too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def profile_calls(vm: Any, args: list[Any], runs: int, warmup: int = 1) -> list[dict[str, Any]]:
    """Run `main` `warmup` + `runs` times; returns one record per call position of a run:
    {"name": symbol, "mean_ms": mean over the runs}."""
    clock = time.perf_counter
    state: dict[str, Any] = {"t0": 0.0, "calls": []}

    def instrument(func: Any, symbol: str, before_run: bool, ret: Any, *rest: Any) -> int:
        if before_run:
            state["t0"] = clock()
        else:
            state["calls"].append((str(symbol), clock() - state["t0"]))
        return 0

    vm.set_input("main", *args)
    for _ in range(warmup):
        vm.invoke_stateful("main")
    vm.set_instrument(instrument)
    totals: list[list[Any]] = []
    try:
        for _ in range(runs):
            state["calls"] = []
            vm.invoke_stateful("main")
            if not totals:
                totals = [[name, 0.0] for name, _ in state["calls"]]
            for slot, (_, seconds) in zip(totals, state["calls"], strict=False):
                slot[1] += seconds
    finally:
        vm.set_instrument(None)
    return [{"name": n, "mean_ms": s * 1e3 / runs} for n, s in totals]


def ort_kernel_times(trace: str | Path, runs: int) -> list[dict[str, Any]]:
    """onnxruntime's profile trace (`end_profiling()`'s file) -> one record per node:
    {"name", "op", "mean_ms" over `runs`, "calls" per run}, in the order the nodes first ran."""
    events = json.loads(Path(trace).read_text())
    records: dict[str, dict[str, Any]] = {}
    for ev in events:
        name = ev.get("name", "")
        if ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        record = records.setdefault(
            node,
            {"name": node, "op": ev.get("args", {}).get("op_name", ""), "mean_ms": 0.0, "calls": 0},
        )
        record["mean_ms"] += ev["dur"] / 1e3 / runs
        record["calls"] += 1
    for record in records.values():
        record["calls"] = max(1, round(record["calls"] / runs))
    return list(records.values())
