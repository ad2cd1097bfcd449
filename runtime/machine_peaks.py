"""What a machine can do at most: sgemm throughput and memory bandwidth, measured.

All three are timed with onnxruntime on tiny models the caller hands over as bytes (built with
`onnx` on the host: a device needs only onnxruntime and numpy, and runs this file beside the
device server without edgec): a float32 MatMul of N x N matrices (2 N^3 flops; MLAS's sgemm,
which is what onnxruntime bundles run; the best of several N), an Add of two float32 vectors
far larger than the caches (read two, write one), and a chain of Adds on vectors small enough
to stay in cache (the bandwidth of operands already there). Each is the best of the runs made
in about a second (at least five) with `threads` intra-op threads: a peak, not a typical
figure. An emulated device times smaller matrices, fewer times (qemu runs a 1024 x 1024 sgemm
in about ten seconds).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

GEMM_SIZES = (256, 512, 1024)  # the sgemm peak is the best of these (blocking favours some)
STREAM_ELEMENTS = 8 * 1024 * 1024  # 32 MiB per operand: memory
CACHE_ELEMENTS = 32 * 1024  # 128 KiB per operand: in cache (L2 on most cores)
CACHE_CHAIN = 16  # Adds in the cache model, so that one run is not mostly call overhead


def _best_seconds(
    session: Any, feeds: dict[str, np.ndarray], repeats: int, budget_s: float
) -> float:
    """The fastest of at least `repeats` runs, going on until `budget_s` has passed: on a
    shared machine a peak needs runs that met a quiet moment."""
    session.run(None, feeds)
    best = float("inf")
    start = time.perf_counter()
    done = 0
    while done < repeats or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - t0)
        done += 1
    return best


def measure(
    threads: int,
    gemm_model: bytes,
    stream_model: bytes,
    cache_model: bytes,
    gemm_sizes: tuple[int, ...] = GEMM_SIZES,
    repeats: int = 5,
    budget_s: float = 1.0,
) -> dict:
    """{"sgemm_gflops", "bandwidth_gbs", "cache_bandwidth_gbs", "threads"} with `threads`
    onnxruntime threads (the MatMul model on square matrices of each of `gemm_sizes`, the best
    of them; the cache model a chain of `CACHE_CHAIN` Adds); each figure the best of `repeats`
    runs or more, for `budget_s` seconds each."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    rng = np.random.default_rng(0)
    gemm = ort.InferenceSession(gemm_model, so, providers=["CPUExecutionProvider"])
    gflops = 0.0
    for n in gemm_sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        seconds = _best_seconds(gemm, {"a": a, "b": a}, repeats, budget_s / len(gemm_sizes))
        gflops = max(gflops, 2.0 * n**3 / seconds / 1e9)
    stream = ort.InferenceSession(stream_model, so, providers=["CPUExecutionProvider"])
    x = np.ones(STREAM_ELEMENTS, dtype=np.float32)
    stream_s = _best_seconds(stream, {"x": x, "y": x}, repeats, budget_s)
    cache = ort.InferenceSession(cache_model, so, providers=["CPUExecutionProvider"])
    c = np.ones(CACHE_ELEMENTS, dtype=np.float32)
    cache_s = _best_seconds(cache, {"x": c, "y": c}, repeats, budget_s)
    return {
        "sgemm_gflops": gflops,
        "bandwidth_gbs": 3.0 * x.nbytes / stream_s / 1e9,
        "cache_bandwidth_gbs": 3.0 * c.nbytes * CACHE_CHAIN / cache_s / 1e9,
        "threads": threads,
    }
