"""binarize_layers (`--binarize REGEX`): post-training binarization of chosen float layers.

The one pass that changes what the model computes, on purpose. For every Linear (MatMul with
a constant weight, its bias Add, or Gemm) and 1x1 Conv whose layer name (the exporter's module
path, e.g. `blocks.3.mlp.fc1`) matches the pattern, with statistics from sample inputs:

    x ~ mu + alpha * sign(x - mu)        mu per input feature, alpha = mean |x - mu|
    W_n ~ m_n * sign(W_n)                m_n = mean |W_n| per output channel
    x W^T + b ~ alpha m_n (sign(x - mu) . sign(W_n)) + (mu . m_n sign(W_n) + b_n)

i.e. one BinaryLinear with offset -mu, scale alpha m and the constant term folded into the
bias. Each layer's output error on the sample inputs (relative, as `edgec.runtime.compare`)
is reported, so a user sees what binarizing it costs. A 1x1 Conv runs as a BinaryLinear over
the channel axis between two Transposes.

Left alone: layers already binary, convolutions with other kernels, strides, padding or groups,
weights that are not constant.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec.core.binary_ops import (
    MIN_OPSET,
    binary_dot,
    code_bits,
    insert_binary_linear,
    pack_bits,
    supports_functions,
)
from edgec.core.errors import OptionError
from edgec.core.irutil import run_onnx
from edgec.passes._ir import bypass, dense_params, is_op, layer_name, live_nodes, weight_bias
from edgec.passes.base import EdgecPass
from edgec.passes.cleanup import InferShapes
from edgec.passes.manager import PassManager, PassReport
from edgec.runtime.compare import rel_error

log = logging.getLogger("edgec")


@dataclass
class LayerError:
    name: str
    kind: str
    in_features: int
    out_features: int
    max_rel_error: float  # of the layer's output on the sample inputs, its own input given

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Layer:
    node: ir.Node  # MatMul, Gemm or Conv
    last: ir.Node  # the node whose output the layer's output is
    weight: np.ndarray  # (N, K)
    bias: np.ndarray  # (N,)
    kind: str


def _linear(node: ir.Node) -> _Layer | str | None:
    """The layer `node` starts, with its weight as (N, K) and its bias; why not, for a Conv or
    a product with a non-constant weight; None for other ops."""
    dense = dense_params(node)
    if dense is not None:
        w, b, last = dense
        return _Layer(node, last, w.T, np.zeros(w.shape[1]) if b is None else b, "linear")
    if is_op(node, "MatMul", "Gemm"):
        return "the product's weight or bias is not a float32 constant (or transA)"
    if not is_op(node, "Conv"):
        return None
    params = weight_bias(node)
    a = node.attributes
    if params is None:
        return "the Conv's weight or bias is not a float32 constant"
    if params[0].ndim != 4 or params[0].shape[2:] != (1, 1):
        return "a Conv that is not 1x1 (binarized layers are Linear and 1x1 Conv)"
    if a.get_int("group", 1) != 1 or a.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return "a grouped Conv, or one padded by auto_pad"
    if any(s != 1 for s in a.get_ints("strides", [1, 1])) or any(
        p != 0 for p in a.get_ints("pads", [0, 0, 0, 0])
    ):
        return "a 1x1 Conv with a stride or padding"
    w, b = params
    return _Layer(node, node, w[:, :, 0, 0], np.zeros(w.shape[0]) if b is None else b, "conv1x1")


RULE = "binarize_layer"


class BinarizeLayers(EdgecPass):
    name = "binarize_layers"

    def __init__(self, pattern: str, inputs: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)
        self.inputs = inputs
        self.layers: list[LayerError] = []

    def candidates(self, model: ir.Model) -> list[_Layer]:
        found = []
        for node in live_nodes(model):
            if node.domain not in ("", "ai.onnx") or not self.pattern.search(layer_name(node)):
                continue
            layer = _linear(node)
            if isinstance(layer, str):
                self.left_alone(RULE, [node], layer)
            elif layer is not None and np.issubdtype(layer.weight.dtype, np.floating):
                found.append(layer)
        return found

    def rewrite(self, model: ir.Model) -> int:
        layers = self.candidates(model)
        if not layers:
            return 0
        for layer, (x, y) in zip(layers, self._samples(model, layers), strict=True):
            self.fired(RULE, [layer.node])
            self._replace(model, layer, x, y)
        return len(layers)

    def _samples(
        self, model: ir.Model, layers: list[_Layer]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each layer's input and output on the sample inputs (one onnxruntime run)."""
        from edgec.core.irutil import run_onnx

        proto = ir.serde.serialize_model(model)
        pairs = []
        for layer in layers:
            x = layer.node.inputs[0]
            assert x is not None
            pairs.append((x.name, layer.last.outputs[0].name))
        present = {o.name for o in proto.graph.output}
        for name in {n for pair in pairs for n in pair} - present:
            proto.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
        outputs = run_onnx(proto, self.inputs)
        samples = []
        for layer, (xn, yn) in zip(layers, pairs, strict=True):
            x, y = outputs[xn], outputs[yn]
            if layer.kind == "conv1x1":  # channels last, as the BinaryLinear sees them
                x, y = np.moveaxis(x, 1, -1), np.moveaxis(y, 1, -1)
            samples.append((x, y))
        return samples

    def _replace(self, model: ir.Model, layer: _Layer, x: np.ndarray, y: np.ndarray) -> None:
        from edgec.runtime.compare import rel_error

        n, k = layer.weight.shape
        flat = x.reshape(-1, k).astype(np.float64)
        mu = flat.mean(axis=0).astype(np.float32)
        alpha = np.float32(np.abs(flat - mu).mean())
        w = layer.weight.astype(np.float64)
        m = np.abs(w).mean(axis=1)
        codes = w >= 0
        signed = np.where(codes, 1.0, -1.0)
        scale = (alpha * m).astype(np.float32)
        bias = (layer.bias + (mu.astype(np.float64) @ (signed * m[:, None]).T)).astype(np.float32)
        offset = (-mu).astype(np.float32)
        # the layer as it will run, on its sample input
        xb = pack_bits(code_bits(x.reshape(-1, k).astype(np.float32), offset=offset))
        dot = binary_dot(xb, pack_bits(codes), k, -1.0, -1.0).astype(np.float32)
        approx = (dot * scale + bias).reshape(y.shape)
        name = layer_name(layer.node)
        self.layers.append(LayerError(name, layer.kind, k, n, rel_error(approx, y)))

        graph = model.graph
        source = layer.node.inputs[0]
        assert source is not None
        if layer.kind == "conv1x1":
            source = self._transpose(graph, layer.node, source, [0, 2, 3, 1])
        result = insert_binary_linear(
            model, layer.node, source, codes, scale, bias, offset, (1.0, 0.0, -1.0), name
        )
        if layer.kind == "conv1x1":
            result = self._transpose(graph, layer.node, result, [0, 3, 1, 2])
        bypass(layer.last, result)
        if layer.last is not layer.node:  # the bias Add went with `last`
            graph.remove(layer.node, safe=True)

    @staticmethod
    def _transpose(graph: ir.Graph, before: ir.Node, value: ir.Value, perm: list[int]) -> ir.Value:
        node = ir.Node("", "Transpose", [value], attributes=[ir.AttrInt64s("perm", perm)])
        graph.insert_before(before, node)
        node.outputs[0].dtype = ir.DataType.FLOAT
        return node.outputs[0]


def binarize_step(
    model: ir.Model, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], pattern: str
) -> tuple[PassReport, dict[str, np.ndarray], dict[str, Any]]:
    """`--binarize PATTERN` after the pipeline: binarize the matching layers of `model` in place
    (calibrated on `inputs`). Returns the pass report, the binarized model's outputs (the
    reference the bundle is checked against from here on) and the manifest's `binarization`
    record (each layer's error, the whole model's error against the float `outputs`)."""
    try:
        re.compile(pattern)
    except re.error as e:
        raise OptionError(f"--binarize '{pattern}' is not a regular expression: {e}") from None
    if not supports_functions(model):
        opset = model.opset_imports.get("", 1)
        raise OptionError(
            f"--binarize needs a model of opset {MIN_OPSET} or later (this one is {opset}): "
            "the binary ops' ONNX bodies use ops of that version"
        )
    binarizer = BinarizeLayers(pattern, inputs)
    reports = PassManager([binarizer, InferShapes()]).run(model)
    if not binarizer.rewrites:
        linear = ("MatMul", "Gemm", "Conv")
        names = sorted({layer_name(n) for n in model.graph if n.op_type in linear})
        raise OptionError(
            f"--binarize '{pattern}' matches no Linear or 1x1 Conv layer with constant weights; "
            f"layer names are like: {', '.join(names[:6]) or '(none)'}"
        )
    binarized = run_onnx(model, inputs)
    errors = {k: rel_error(binarized[k], v) for k, v in outputs.items()}
    for layer in binarizer.layers:
        log.info("binarized %s: output error %.2e", layer.name, layer.max_rel_error)
    record = {
        "pattern": pattern,
        "layers": [layer.to_json() for layer in binarizer.layers],
        "output_error_vs_float": max(errors.values(), default=0.0),
    }
    return reports[0], binarized, record
