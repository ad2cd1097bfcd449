"""Per-op times of any back end, mapped back to the source: one record type for all.

A back end's timer (`op_timers`: onnxruntime's profiler, the Relax VM's instrument) names what
it ran in its own terms: onnxruntime by node name (a node it created by an output value plus a
suffix, `conv_output_0_nchwc`), TVM by kernel (`fused_conv2d_add_relu`, one per call). The
bundle's op map (`ops.json`, `edgec.core.op_map`) turns each into `OpTime`: the source nodes
it computes, their torch module path (`blocks.3.attn`), the passes that made them (a folded
Conv names the BatchNormalization it absorbed) and their multiply-accumulates and bytes, from
which the roofline fraction follows. Runtime work that is no op (the VM's allocations and
checks) is one row per builtin, module `(runtime)`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from edgec.runtime import roofline
from edgec.runtime.bundle import Bundle

TOP_LEVEL = "(top level)"  # the module of nodes the model's own forward made
RUNTIME = "(runtime)"
INSERTED = "(inserted by onnxruntime)"  # layout reorders and the like, no source node
LINEAR_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass
class OpTime:
    """Time in one op as the back end ran it (a node, a fused kernel), mean over the runs."""

    name: str
    op_type: str
    mean_ms: float
    share: float
    module: str = ""  # the source module the op came from, where the exporter kept it
    calls: int = 1  # per run
    nodes: list[str] = field(default_factory=list)  # source nodes it computes
    passes: list[str] = field(default_factory=list)  # what made them ("rule: a + b")
    macs: int = 0
    bytes: int = 0
    roofline_fraction: float | None = None


@dataclass
class ModuleTime:
    module: str
    mean_ms: float
    share: float
    ops: int
    macs: int
    roofline_fraction: float | None = None


def load_op_map(bundle: Bundle) -> dict[str, Any] | None:
    """The bundle's op map, or None for a bundle built before edgec wrote one (or one whose
    map is not one: the profile then names ops as the back end does)."""
    name = bundle.manifest.artifacts.get("ops")
    if name is None or not (bundle.path / name).is_file():
        return None
    try:
        found = json.loads((bundle.path / name).read_text())
    except (OSError, ValueError):
        return None
    shaped = isinstance(found, dict) and isinstance(found.get("nodes"), dict)
    return found if shaped and isinstance(found.get("values", {}), dict) else None


def _anchor(node: str, op_type: str, op_map: dict[str, Any]) -> str:
    """A fused kernel that onnxruntime names after the last node of the chain (Conv + Relu as
    `relu_nchwc`) computes the linear op before it: follow `after` back to that op."""
    nodes = op_map["nodes"]
    if not any(op in op_type for op in LINEAR_OPS):
        return node
    current = node
    for _ in range(4):
        record = nodes.get(current)
        if record is None:
            break
        if record["op"] in LINEAR_OPS:
            return current
        current = record.get("after", "")
    return node


def _node_of(name: str, op_map: dict[str, Any]) -> str | None:
    """onnxruntime's node name -> the op map's node: itself, or the node that made the output
    value it is named after (suffixes `_nchwc`, `/MatMulAddFusion` ... stripped until one is
    known)."""
    nodes, values = op_map["nodes"], op_map["values"]
    candidate = name
    while candidate:
        if candidate in nodes:
            return candidate
        if candidate in values:
            return str(values[candidate])
        cut = max(candidate.rfind("_"), candidate.rfind("/"))
        if cut <= 0:
            break
        candidate = candidate[:cut]
    return None


def _attributed(
    name: str, op_type: str, mean_ms: float, calls: int, nodes: list[str], op_map: dict | None
) -> OpTime:
    records = [op_map["nodes"][n] for n in nodes if n in op_map["nodes"]] if op_map else []
    modules = [r["module"] or TOP_LEVEL for r in records]
    passes: list[str] = []
    for r in records:
        passes += [p for p in r["passes"] if p not in passes]
    # a kernel fused across modules belongs to its anchor: the node with the most MACs
    anchor = max(range(len(records)), key=lambda i: records[i]["macs"], default=None)
    module = modules[anchor] if anchor is not None else name.rpartition("/")[0]
    return OpTime(
        name=name,
        op_type=op_type,
        mean_ms=mean_ms,
        share=0.0,
        module=module,
        calls=calls,
        nodes=nodes,
        passes=passes,
        macs=sum(int(r["macs"]) for r in records),
        bytes=sum(int(r["bytes"]) for r in records),
    )


def _finish(ops: list[OpTime], peaks: dict[str, Any] | None) -> list[OpTime]:
    total = sum(o.mean_ms for o in ops) or 1.0
    for o in ops:
        o.share = o.mean_ms / total
        if peaks is not None and (o.macs or o.bytes):
            o.roofline_fraction = roofline.fraction(o.macs, o.bytes, o.mean_ms, peaks)
    return sorted(ops, key=lambda o: -o.mean_ms)


def from_ort(
    records: list[dict[str, Any]], op_map: dict | None, peaks: dict | None
) -> list[OpTime]:
    """`op_timers.ort_kernel_times` records as OpTimes."""
    ops = []
    for r in records:
        node = _node_of(r["name"], op_map) if op_map else None
        if node is not None and op_map is not None:
            node = _anchor(node, r["op"], op_map)
        nodes = [node] if node else []
        op = _attributed(r["name"], r["op"], r["mean_ms"], r["calls"], nodes, op_map)
        if not nodes and op_map is not None:
            op.module = INSERTED
        ops.append(op)
    return _finish(ops, peaks)


def from_tvm(calls: list[dict[str, Any]], op_map: dict | None, peaks: dict | None) -> list[OpTime]:
    """`op_timers.profile_calls` records as OpTimes: kernels matched to the op map's `kernels`
    by name and occurrence (the k-th call of a kernel is its k-th call in `main`), builtins
    summed per name."""
    kernels: dict[str, list[list[str]]] = defaultdict(list)
    for k in (op_map or {}).get("kernels", []):
        kernels[k["kernel"]].append(list(k["nodes"]))
    seen: dict[str, int] = defaultdict(int)
    builtins: dict[str, list[float]] = {}
    ops: list[OpTime] = []
    for call in calls:
        name = call["name"]
        if name.startswith("vm.builtin.") or name.startswith("vm."):
            slot = builtins.setdefault(name, [0.0, 0])
            slot[0] += call["mean_ms"]
            slot[1] += 1
            continue
        occurrence = seen[name]
        seen[name] += 1
        known = kernels.get(name, [])
        nodes = known[occurrence] if occurrence < len(known) else []
        ops.append(_attributed(name, "kernel", call["mean_ms"], 1, nodes, op_map))
    for name, (ms, count) in builtins.items():
        ops.append(OpTime(name, "runtime", ms, 0.0, RUNTIME, int(count)))
    return _finish(ops, peaks)


def per_module(ops: list[OpTime], peaks: dict[str, Any] | None) -> list[ModuleTime]:
    """The ops' time summed per source module, largest first."""
    acc: dict[str, list[Any]] = {}
    for o in ops:
        slot = acc.setdefault(o.module or TOP_LEVEL, [0.0, 0, 0, 0])
        slot[0] += o.mean_ms
        slot[1] += 1
        slot[2] += o.macs
        slot[3] += o.bytes
    total = sum(o.mean_ms for o in ops) or 1.0
    modules = []
    for name, (ms, count, macs, nbytes) in acc.items():
        frac = roofline.fraction(macs, nbytes, ms, peaks) if peaks and (macs or nbytes) else None
        modules.append(ModuleTime(name, ms, ms / total, count, macs, frac))
    return sorted(modules, key=lambda m: -m.mean_ms)


def model_bound_ms(op_map: dict[str, Any] | None, peaks: dict[str, Any] | None) -> float | None:
    """The least time the whole graph can take: all its multiply-accumulates at the sgemm peak,
    or its compulsory traffic (weights, inputs and outputs, each moved once) at the measured
    bandwidth, whichever is longer. Intermediate values are left out: they may stay in
    cache, and a bound must not count what a good back end avoids."""
    if not op_map or not peaks:
        return None
    macs = sum(int(r["macs"]) for r in op_map["nodes"].values())
    traffic = int(op_map.get("weight_bytes", 0)) + int(op_map.get("io_bytes", 0))
    return roofline.bound_ms(macs, traffic, peaks)
