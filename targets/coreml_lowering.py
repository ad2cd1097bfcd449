"""The IR (after the `coreml` pipeline) -> a MIL program, with coremltools' MIL builder.

Every node is lowered by the rule its operator has in one of the family tables
(`coreml_ops_math`, `coreml_ops_nn`, `coreml_ops_shape`, `coreml_ops_edgec`); a node whose
operator has none is an error naming it, found before anything is built. The program's
deployment target is the lowest the ops it uses allow: iOS 17 / macOS 14, or iOS 18 / macOS 15
for `scaled_dot_product_attention`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import coremltools as ct
import onnx_ir as ir
from coremltools.converters.mil.mil import Builder as mb
from coremltools.converters.mil.mil import Function, Program

from edgec.core.binary_ops import ATTENTION
from edgec.core.binary_ops import DOMAIN as EDGEC_DOMAIN
from edgec.core.errors import UnsupportedOpError
from edgec.core.irutil import graph_inputs
from edgec.targets import coreml_ops_edgec, coreml_ops_math, coreml_ops_nn, coreml_ops_shape
from edgec.targets.coreml_context import MIL_TYPES, Context, Rule, mil_name

ONNX_RULES: dict[str, Rule] = {
    **coreml_ops_math.RULES,
    **coreml_ops_nn.RULES,
    **coreml_ops_shape.RULES,
}
EDGEC_RULES: dict[str, Rule] = coreml_ops_edgec.RULES
IOS17, IOS18 = 8, 9  # coremltools' AvailableTarget values
DEPLOYMENT = {IOS17: ("iOS17", "macOS14"), IOS18: ("iOS18", "macOS15")}


def rule_for(node: ir.Node) -> Rule | None:
    if node.domain in ("", "ai.onnx"):
        return ONNX_RULES.get(node.op_type)
    if node.domain == EDGEC_DOMAIN:
        return EDGEC_RULES.get(node.op_type)
    return None


def unsupported(model: ir.Model) -> list[str]:
    """Every node Core ML has no lowering for, as "'Op' (node 'name')"."""
    found = []
    for node in model.graph:
        if rule_for(node) is None:
            domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            found.append(f"'{domain}{node.op_type}' (node '{node.name}')")
    for role, values in (("input", graph_inputs(model)), ("output", model.graph.outputs)):
        for value in values:
            if not isinstance(value.type, ir.TensorType) or value.dtype not in MIL_TYPES:
                found.append(f"{role} '{value.name}' of type {value.type}")
            elif role == "input" and value.shape is not None and len(value.shape) == 0:
                found.append(f"input '{value.name}', a scalar (Core ML inputs have rank 1 to 5)")
    return found


def deployment_opset(model: ir.Model) -> int:
    """The lowest deployment target the program's ops allow."""
    sdpa = any(n.domain == EDGEC_DOMAIN and n.op_type == ATTENTION for n in model.graph)
    return IOS18 if sdpa else IOS17


@dataclass
class Lowered:
    program: Program
    opset: int
    inputs: dict[str, str]  # ONNX input name -> Core ML feature name
    outputs: dict[str, str] = field(default_factory=dict)
    min_opset: dict[str, int] = field(default_factory=dict)  # op -> deployment target it needs


def lower(model: ir.Model) -> Lowered:
    """Lower `model` to a MIL program (raises UnsupportedOpError naming the first node that
    has no lowering, before building anything)."""
    found = unsupported(model)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UnsupportedOpError(f"Core ML has no lowering for {found[0]}{more}")
    opset = deployment_opset(model)
    ctx = Context(opset)
    # inputs with an initializer (IR < 4 defaults) are the constants the bundle runs with
    fed = graph_inputs(model)
    names = {v.name: mil_name(v.name) for v in fed}
    specs = {}
    for value in fed:
        shape = ctx.shape(value)
        specs[names[value.name]] = mb.placeholder(shape=shape, dtype=MIL_TYPES[value.dtype])
    outputs: dict[str, str] = {}
    with Function(specs, opset_version=target_of(opset)) as func:
        for value in fed:
            ctx.bind(value, func.inputs[names[value.name]])
        for node in model.graph:
            rule = rule_for(node)
            assert rule is not None  # checked above
            try:
                results = rule(ctx, node)
            except UnsupportedOpError:
                raise
            # coremltools' builder checks each op as it is added; its type inference raises
            # more than ValueError on inputs it does not take
            except (ValueError, TypeError, NotImplementedError, IndexError, AssertionError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UnsupportedOpError(
                    f"Core ML cannot build {node.op_type} node '{node.name}': {first}"
                ) from None
            for value, result in zip(node.outputs, results, strict=False):
                ctx.bind(value, result)
        results = []
        for value in model.graph.outputs:
            wanted = mil_name(value.name)
            var = ctx.x(value)
            if getattr(var, "name", None) != wanted or value in model.graph.inputs:
                var = mb.identity(x=var, name=wanted)
            outputs[value.name] = wanted
            results.append(var)
        func.set_outputs(results)
    program = Program()
    program.add_function("main", func)
    return Lowered(program, opset, names, outputs, ctx.min_opset)


def target_of(opset: int) -> ct.target:
    """coremltools' deployment target enum of an opset number."""
    return ct.target.iOS18 if opset == IOS18 else ct.target.iOS17
