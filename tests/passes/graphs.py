"""A small builder for pass tests: graphs from onnx.helper with numpy weights, run through one
pass, checked against onnxruntime on the unmodified graph."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from edgec.core.irutil import input_specs, random_inputs, run_onnx
from edgec.passes.base import Candidate, EdgecPass
from edgec.runtime.compare import max_rel_error

TOL = 1e-4  # float32, relative to the output's scale


class Graph:
    def __init__(self, shape: tuple[int, ...], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.shape = shape
        self._n = itertools.count()

    def w(self, *shape: int, scale: float = 0.5) -> str:
        return self.const(self.rng.standard_normal(shape).astype(np.float32) * scale)

    def const(self, array: np.ndarray) -> str:
        name = f"c{next(self._n)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        out = f"t{next(self._n)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"n_{out}", **attrs))
        return out

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        groups: int = 1,
        stride: int = 1,
        pad: int | None = None,
        dilation: int = 1,
        bias: bool = True,
    ) -> str:
        pad = (k // 2) * dilation if pad is None else pad
        inputs = [x, self.w(cout, cin // groups, k, k)] + ([self.w(cout)] if bias else [])
        return self.op(
            "Conv",
            *inputs,
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=groups,
            dilations=[dilation, dilation],
        )

    def bn(self, x: str, c: int, eps: float = 1e-5) -> str:
        r = self.rng
        return self.op(
            "BatchNormalization",
            x,
            self.const((r.random(c) + 0.5).astype(np.float32)),
            self.const((r.standard_normal(c) * 0.3).astype(np.float32)),
            self.const((r.standard_normal(c) * 0.3).astype(np.float32)),
            self.const((r.random(c) + 0.5).astype(np.float32)),
            epsilon=eps,
        )

    def model(self, *outputs: str, opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(self.shape))],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def apply(pass_: EdgecPass, proto: onnx.ModelProto) -> tuple[ir.Model, int]:
    model = ir.serde.deserialize_model(proto)
    pass_(model)
    return model, pass_.rewrites


def explain(pass_: EdgecPass, proto: onnx.ModelProto) -> tuple[ir.Model, list[Candidate]]:
    """Run `pass_` with explain on: the model and every candidate it fired or left alone."""
    model = ir.serde.deserialize_model(proto)
    pass_.explain = True
    pass_(model)
    return model, pass_.explained


def reasons(candidates: list[Candidate], rule: str) -> list[str]:
    """Why `rule` left its candidates alone (fired ones have no reason)."""
    return [c.reason for c in candidates if c.rule == rule and not c.fired]


def check(before: onnx.ModelProto, after: ir.Model, tol: float = TOL) -> float:
    """The rewritten model is valid and computes what onnxruntime computes on the original."""
    proto = ir.serde.serialize_model(after)
    onnx.checker.check_model(proto, full_check=True)
    feeds = random_inputs(input_specs(after), seed=11)
    error = max_rel_error(run_onnx(proto, feeds), run_onnx(before, feeds))
    assert error <= tol, error
    return error


def ops(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]
