"""What the benchmark scripts share: the peers (onnxruntime on torch's default export, or on
a given model) and the writer."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from edgec.core.ort_options import session_options


def plain_session(model: ir.Model, threads: int = 1) -> ort.InferenceSession:
    """onnxruntime with all graph optimizations on the model as exported: the peer."""
    so = session_options({"graph_optimization_level": "all"}, threads)
    proto = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"])


def default_export(module: torch.nn.Module, feeds: dict[str, np.ndarray]) -> ir.Model:
    """`torch.onnx.export(module, args, dynamo=True)` with torch's defaults (`optimize=True`
    included): the export users have."""
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    with torch.no_grad():
        return torch.onnx.export(module.eval(), args, dynamo=True, verbose=False).model


def default_export_session(
    module: torch.nn.Module,
    feeds: dict[str, np.ndarray],
    threads: int = 1,
    exported: ir.Model | None = None,
) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    """The peer users have: `default_export` in onnxruntime with all graph optimizations.
    Returns the session and `feeds` (in the module's argument order) under the export's input
    names."""
    model = exported if exported is not None else default_export(module, feeds)
    session = plain_session(model, threads)
    names = [i.name for i in session.get_inputs()]
    return session, dict(zip(names, feeds.values(), strict=True))


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, runs: int) -> dict[str, float]:
    """Median milliseconds of each function, timed in interleaved rounds (two warm-up calls
    each first), so that the machine's noise falls on all of them alike."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def write_results(
    out: Path, name: str, data: object, header: list[str], rows: list[list[str]]
) -> str:
    """Write NAME.json and a markdown table NAME.md under `out`; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(table)
    return table
