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

import re
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_ir as ir

from edgec.passes._ir import bypass, const, initializer, is_op, live_nodes, only_consumer
from edgec.passes.base import EdgecPass
from edgec.passes.binary_ops import DOMAIN, binary_dot, code_bits, ensure_function, pack_bits


@dataclass
class LayerError:
    name: str
    kind: str
    in_features: int
    out_features: int
    max_rel_error: float  # of the layer's output on the sample inputs, its own input given

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def layer_name(node: ir.Node) -> str:
    return (node.name or "").split("/")[0]


@dataclass
class _Layer:
    node: ir.Node  # MatMul, Gemm or Conv
    last: ir.Node  # the node whose output the layer's output is
    weight: np.ndarray  # (N, K)
    bias: np.ndarray  # (N,)
    kind: str


def _linear(node: ir.Node) -> _Layer | None:
    if is_op(node, "Gemm"):
        a = node.attributes
        w, c = const(node.inputs[1]), const(node.inputs[2]) if len(node.inputs) > 2 else None
        if w is None or a.get_int("transA", 0) or (c is not None and c.ndim > 1):
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None and c is None:
            return None
        w = (w if a.get_int("transB", 0) else w.T) * a.get_float("alpha", 1.0)
        b = np.zeros(w.shape[0]) if c is None else np.broadcast_to(c, (w.shape[0],))
        return _Layer(node, node, w, b * a.get_float("beta", 1.0), "linear")
    if is_op(node, "MatMul"):
        w = const(node.inputs[1])
        if w is None or w.ndim != 2:
            return None
        bias, last = np.zeros(w.shape[1]), node
        add = only_consumer(node.outputs[0])
        if is_op(add, "Add") and add is not None:
            other = add.inputs[1] if add.inputs[0] is node.outputs[0] else add.inputs[0]
            c = const(other)
            if c is not None and c.ndim <= 1 and c.size in (1, w.shape[1]):
                bias, last = np.broadcast_to(c, (w.shape[1],)), add
        return _Layer(node, last, w.T, bias, "linear")
    if is_op(node, "Conv"):
        w = const(node.inputs[1])
        a = node.attributes
        if w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or a.get_int("group", 1) != 1:
            return None
        if any(s != 1 for s in a.get_ints("strides", [1, 1])) or any(
            p != 0 for p in a.get_ints("pads", [0, 0, 0, 0])
        ):
            return None
        if a.get_string("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
        c = const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if len(node.inputs) > 2 and node.inputs[2] is not None and c is None:
            return None
        b = np.zeros(w.shape[0]) if c is None else c
        return _Layer(node, node, w[:, :, 0, 0], b, "conv1x1")
    return None


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
            if layer is not None and np.issubdtype(layer.weight.dtype, np.floating):
                found.append(layer)
        return found

    def rewrite(self, model: ir.Model) -> int:
        layers = self.candidates(model)
        if not layers:
            return 0
        samples = self._samples(model, layers)
        for layer in layers:
            x, y = samples[id(layer)]
            self._replace(model, layer, x, y)
        return len(layers)

    def _samples(
        self, model: ir.Model, layers: list[_Layer]
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Each layer's input and output on the sample inputs (one onnxruntime run)."""
        from edgec.irutil import run_onnx

        proto = ir.serde.serialize_model(model)
        names = {}
        for layer in layers:
            x, y = layer.node.inputs[0], layer.last.outputs[0]
            assert x is not None
            names[id(layer)] = (x.name, y.name)
        present = {o.name for o in proto.graph.output}
        for pair in names.values():
            for name in pair:
                if name not in present:
                    proto.graph.output.append(
                        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                    )
                    present.add(name)
        outputs = run_onnx(proto, self.inputs)
        result = {}
        for key, (xn, yn) in names.items():
            x, y = outputs[xn], outputs[yn]
            layer = next(la for la in layers if id(la) == key)
            if layer.kind == "conv1x1":  # channels last, as the BinaryLinear sees them
                x, y = np.moveaxis(x, 1, -1), np.moveaxis(y, 1, -1)
            result[key] = (x, y)
        return result

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
        packed = pack_bits(codes)
        # the layer as it will run, on its sample input
        xb = pack_bits(code_bits(x.reshape(-1, k).astype(np.float32), offset=offset))
        dot = binary_dot(xb, packed, k, -1.0, -1.0).astype(np.float32)
        approx = (dot * scale + bias).reshape(y.shape)
        name = layer_name(layer.node)
        self.layers.append(LayerError(name, layer.kind, k, n, rel_error(approx, y)))

        graph = model.graph
        source = layer.node.inputs[0]
        assert source is not None
        if layer.kind == "conv1x1":
            source = self._transpose(graph, layer.node, source, [0, 2, 3, 1])
        node = ir.Node(
            DOMAIN,
            "BinaryLinear",
            [
                source,
                initializer(graph, packed, f"{name}.weight_bits"),
                initializer(graph, scale, f"{name}.scale"),
                initializer(graph, bias, f"{name}.bias"),
                initializer(graph, offset, f"{name}.offset"),
            ],
            attributes=[
                ir.AttrInt64("in_features", k),
                ir.AttrFloat32("step", 1.0),
                ir.AttrFloat32("threshold", 0.0),
                ir.AttrFloat32("low", -1.0),
            ],
            name=f"{name}/binarized",
        )
        graph.insert_before(layer.node, node)
        node.outputs[0].dtype = ir.DataType.FLOAT
        result = node.outputs[0]
        if layer.kind == "conv1x1":
            result = self._transpose(graph, layer.node, result, [0, 3, 1, 2])
        ensure_function(model, "BinaryLinear")
        chain = [layer.node] if layer.last is layer.node else [layer.node, layer.last]
        bypass(layer.last, result)
        for dead in reversed(chain[:-1]):
            graph.remove(dead, safe=True)

    @staticmethod
    def _transpose(graph: ir.Graph, before: ir.Node, value: ir.Value, perm: list[int]) -> ir.Value:
        node = ir.Node("", "Transpose", [value], attributes=[ir.AttrInt64s("perm", perm)])
        graph.insert_before(before, node)
        node.outputs[0].dtype = ir.DataType.FLOAT
        return node.outputs[0]
