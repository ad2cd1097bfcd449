"""The partition report of a mobile bundle: which nodes onnxruntime Mobile's execution
providers would take (NNAPI on Android, Core ML's NeuralNetwork and MLProgram formats on
iOS, XNNPACK on both), and what falls back to the CPU provider.

NNAPI and Core ML come from onnxruntime's own usability checker
(`onnxruntime.tools.mobile_helpers.usability_checker`, the tables it ships), run as its
command line runs it: on the model after onnxruntime's basic optimizations, with shapes
inferred and fixed input sizes required. It has no XNNPACK table; `XNNPACK_OPS` below is
the float kernels XNNPACK's provider registers (onnxruntime 1.2x,
core/providers/xnnpack/xnnpack_execution_provider.cc) with the conditions its support
checker puts on them, activations fused into the node before them counted as taken.
The checker's caveats (attributes it cannot see) stay caveats: the report says "would",
measured partitions need the device.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.tools.mobile_helpers import usability_checker as uc
from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

from edgec.core.irutil import ort_failure

# op -> the condition XNNPACK's provider puts on a float node (node, constant names, ranks)
_Check = Callable[[onnx.NodeProto, set[str], dict[str, int]], bool]


def _rank_is(n: int) -> _Check:
    return lambda node, consts, ranks: ranks.get(node.input[0], -1) == n


def _weights_constant(node: onnx.NodeProto, consts: set[str], ranks: dict[str, int]) -> bool:
    return ranks.get(node.input[0], -1) == 4 and all(i in consts for i in node.input[1:] if i)


def _matmul(node: onnx.NodeProto, consts: set[str], ranks: dict[str, int]) -> bool:
    return node.input[1] in consts and ranks.get(node.input[1], -1) == 2


def _gemm(node: onnx.NodeProto, consts: set[str], ranks: dict[str, int]) -> bool:
    trans_a = any(a.name == "transA" and a.i for a in node.attribute)
    return not trans_a and all(i in consts for i in node.input[1:] if i)


def _softmax(node: onnx.NodeProto, consts: set[str], ranks: dict[str, int]) -> bool:
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    rank = ranks.get(node.input[0], -1)
    return rank > 0 and axis in (-1, rank - 1)


XNNPACK_OPS: dict[str, _Check] = {
    "Conv": _weights_constant,
    "ConvTranspose": _weights_constant,
    "MaxPool": _rank_is(4),
    "AveragePool": _rank_is(4),
    "Resize": _rank_is(4),
    "Softmax": _softmax,
    "Gemm": _gemm,
    "MatMul": _matmul,
}
PROVIDERS = ("NNAPI", "CoreML-NeuralNetwork", "CoreML-MLProgram", "XNNPACK")
XNNPACK_FUSED = {"Relu", "Clip"}  # taken with the Conv, pool, Gemm or MatMul before them


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.input, *graph.value_info, *graph.output]
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }
    ranks.update({t.name: len(t.dims) for t in graph.initializer})
    return ranks


def xnnpack_report(model: onnx.ModelProto) -> dict[str, Any]:
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    ranks = _ranks(model)
    taken: set[str] = set()  # output names of the nodes XNNPACK takes
    fallback: dict[str, int] = {}
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    for node in nodes:
        check = XNNPACK_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        fused = node.op_type in XNNPACK_FUSED and bool(node.input) and node.input[0] in taken
        if (check is not None and check(node, consts, ranks)) or fused:
            taken.update(node.output)
        else:
            fallback[node.op_type] = fallback.get(node.op_type, 0) + 1
    supported = sum(1 for n in nodes if n.output and n.output[0] in taken)
    return {
        "nodes": len(nodes),
        "supported_nodes": supported,
        "cpu_fallback_ops": sorted(fallback),
        "cpu_fallback_nodes": dict(sorted(fallback.items())),
        "source": "edgec's table of XNNPACK's float kernels (onnxruntime 1.2x)",
    }


def _checker_report(check: Callable[[], uc.PartitioningInfo]) -> dict[str, Any]:
    """The checker's partitions for one provider; where the checker itself fails (it does on
    some graphs: no nodes left, unusual value infos), the report says so instead."""
    try:
        info = check()
        suitability = info.suitability().name.lower() if info.num_nodes else "-"
    except Exception as e:  # onnxruntime's tool, not edgec: its fault is reported, not raised
        why = f"the usability checker failed: {type(e).__name__}: {ort_failure(e)}"
        return {"checked": False, "why": why}
    return {
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "partitions": info.num_partitions,
        "cpu_fallback_ops": sorted(info.unsupported_ops),
        # nodes an op table takes but the provider does not: inputs of more dimensions than
        # it handles, or of sizes fixed only at run time
        "rank_too_high_ops": sorted(info.ops_with_unsupported_rank),
        "dynamic_shape_nodes": info.nodes_unsupported_due_to_dynamic_input,
        "suitability": suitability,
        "caveats": info.supported_ops_checker.get_caveats(),
        "source": "onnxruntime.tools.mobile_helpers.usability_checker",
    }


def partition_report(onnx_path: Path) -> dict[str, dict[str, Any]]:
    """Execution provider -> what it would take of the model at `onnx_path`."""
    with tempfile.TemporaryDirectory(prefix="edgec-partitions-") as tmp:
        basic = Path(tmp) / "basic.onnx"
        try:  # as the checker's command line prepares it; strict shape inference can refuse
            optimize_model(onnx_path, basic, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(basic).model_with_shape_info
        except Exception as e:  # onnxruntime's and onnx's tools: reported, not raised
            why = f"preparing the model failed: {type(e).__name__}: {ort_failure(e)}"
            return {key: {"checked": False, "why": why} for key in PROVIDERS}
    coreml = uc.check_coreml_partitions
    return {
        "NNAPI": _checker_report(lambda: uc.check_nnapi_partitions(model, True)),
        "CoreML-NeuralNetwork": _checker_report(
            lambda: coreml(model, True, "coreml_supported_neuralnetwork_ops.md")
        ),
        "CoreML-MLProgram": _checker_report(
            lambda: coreml(model, True, "coreml_supported_mlprogram_ops.md")
        ),
        "XNNPACK": xnnpack_report(model),
    }
