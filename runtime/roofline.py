"""The roofline: how far an op, or a whole model, is from what the machine can do.

An op that does F flops (2 x its multiply-accumulates) and moves B bytes cannot take less than

    bound = max(F / peak_flops, B / bandwidth)

on a machine with that sgemm throughput and memory bandwidth; the fraction of the roofline
reached is bound / measured time (1.0: at the limit). An op's bytes are what its inputs and
outputs hold (`edgec.core.op_map`: views move none). Two bandwidth roofs: an op with at most
1 MiB of operands is taken to run from cache (the measured bandwidth of cache-sized vectors),
a larger one from memory. Caches are not that tidy, so an op can read above 1, and so can
edgec's binary ops,
whose MACs count as their float equivalent while popcount does 64 per instruction. A whole
model's bound counts only its compulsory traffic (weights, inputs, outputs: `op_profile.
model_bound_ms`). The peaks (`machine_peaks`) are measured once per host and thread
count and cached in `<cache>/roofline/`; a device measures its own (`RemoteDevice.peaks`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
from pathlib import Path
from typing import Any

from edgec.cache import cache_dir
from edgec.runtime.machine_peaks import (
    CACHE_CHAIN,
    CACHE_ELEMENTS,
    STREAM_ELEMENTS,
    measure,
)


def probe_models() -> tuple[bytes, bytes, bytes]:
    """The three models `machine_peaks.measure` times, float32: MatMul(a, b) of square
    matrices (of any size), Add(x, y) of memory-sized vectors, and a chain of `CACHE_CHAIN`
    Adds of cache-sized ones."""
    import onnx
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT

    def model(nodes: list[Any], shapes: dict[str, list[int]], out: str) -> bytes:
        graph = helper.make_graph(
            nodes,
            "probe",
            [helper.make_tensor_value_info(n, f32, shapes[n]) for n in sorted(shapes)],
            [helper.make_tensor_value_info(out, f32, next(iter(shapes.values())))],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        onnx.checker.check_model(proto)
        return proto.SerializeToString()

    square: list[Any] = ["n", "n"]
    gemm = model(
        [helper.make_node("MatMul", ["a", "b"], ["out"])], {"a": square, "b": square}, "out"
    )
    stream = model(
        [helper.make_node("Add", ["x", "y"], ["out"])],
        {"x": [STREAM_ELEMENTS], "y": [STREAM_ELEMENTS]},
        "out",
    )
    chain = [
        helper.make_node("Add", ["x" if i == 0 else f"t{i}", "y"], [f"t{i + 1}"])
        for i in range(CACHE_CHAIN)
    ]
    cache = model(chain, {"x": [CACHE_ELEMENTS], "y": [CACHE_ELEMENTS]}, f"t{CACHE_CHAIN}")
    return gemm, stream, cache


PEAKS = ("sgemm_gflops", "bandwidth_gbs", "cache_bandwidth_gbs")
# an op whose operands and results take at most this many bytes is taken to run from cache
CACHE_RESIDENT_BYTES = 1 << 20


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return found.group(1).strip() if found else platform.machine()


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text)[:120]


def cached(key: str, threads: int, measure_fn: Any) -> dict[str, Any]:
    """The peaks stored under `key` and `threads`, else `measure_fn(threads)` stored there."""
    path = cache_dir() / "roofline" / f"{_key(key)}-t{threads}.json"
    try:
        peaks = json.loads(path.read_text())
        if all(peaks.get(k, 0) > 0 for k in PEAKS):
            return {**peaks, "cached": True}
    except (OSError, ValueError):
        pass
    peaks = {**measure_fn(threads), "machine": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(peaks))
    tmp.replace(path)
    return {**peaks, "cached": False}


def host_peaks(threads: int) -> dict[str, Any]:
    """This host's peaks with `threads` threads (0: one per core), measured once and cached."""
    count = threads or os.cpu_count() or 1
    models = probe_models()
    key = f"{socket.gethostname()}-{_cpu_name()}"
    return cached(key, count, lambda n: measure(n, *models))


def bound_ms(macs: float, nbytes: float, peaks: dict[str, Any]) -> float:
    """The least time `macs` multiply-accumulates and `nbytes` of traffic can take: traffic of
    at most `CACHE_RESIDENT_BYTES` at the cache's bandwidth, more at memory's."""
    flops_s = 2.0 * macs / (peaks["sgemm_gflops"] * 1e9)
    in_cache = nbytes <= CACHE_RESIDENT_BYTES and peaks.get("cache_bandwidth_gbs")
    bandwidth = peaks["cache_bandwidth_gbs"] if in_cache else peaks["bandwidth_gbs"]
    bytes_s = nbytes / (bandwidth * 1e9)
    return max(flops_s, bytes_s) * 1e3


def fraction(macs: float, nbytes: float, measured_ms: float, peaks: dict[str, Any]) -> float:
    """bound / measured: the share of the roofline limit a measured time reaches."""
    if measured_ms <= 0:
        return 0.0
    return bound_ms(macs, nbytes, peaks) / measured_ms
