"""narrow_int64: INT64 constants that every reader also takes as INT32 become INT32, where
their values fit (TensorRT casts INT64 weights down with a warning, clamping what does not
fit; this does it where it is exact and says where).

    Gather(data, indices: int64 constant)  ->  Gather(data, indices: int32 constant)

A reader takes INT32 when the ONNX schema's type parameter of that input allows tensor(int32)
and binds no other input or output of the node (Gather's Tind does; Add's T does not, since
its other input and output would have to change too). Shape-like inputs that ONNX types as
int64 only (Reshape's shape, Slice's starts, Expand's shape) stay as they are: changing them
would make the graph invalid.

Left alone, with the reason: constants with a value outside the int32 range, and constants
one of whose readers needs INT64.
"""

from __future__ import annotations

import numpy as np
import onnx.defs
import onnx_ir as ir

from edgec.core.irutil import initializer
from edgec.passes.base import EdgecPass

RULE = "int64_to_int32"
_INT32 = "tensor(int32)"


def _takes_int32(node: ir.Node, index: int, opset: int) -> bool:
    """Does input `index` of `node` accept INT32 without any other value changing type?"""
    if node.domain not in ("", "ai.onnx"):
        return False
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
    except onnx.defs.SchemaError:
        return False
    formal = schema.inputs[min(index, len(schema.inputs) - 1)]
    if formal.option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return False  # variadic inputs share one type (Concat, Sum)
    param = formal.type_str
    allowed = {c.type_param_str: c.allowed_type_strs for c in schema.type_constraints}
    if param not in allowed:
        return param == _INT32
    others = [p.type_str for i, p in enumerate(schema.inputs) if i != index]
    others += [p.type_str for p in schema.outputs]
    return _INT32 in allowed[param] and param not in others


class NarrowInt64(EdgecPass):
    name = "narrow_int64"

    def rewrite(self, model: ir.Model) -> int:
        graph = model.graph
        opset = model.opset_imports.get("", 1)
        count = 0
        for value in list(graph.initializers.values()):
            tensor = value.const_value
            if tensor is None or tensor.dtype != ir.DataType.INT64 or value.is_graph_output():
                continue
            uses = list(value.uses())
            if not uses or any(u.node.graph is not graph for u in uses):
                continue
            readers = [u.node for u in uses]
            if not all(_takes_int32(u.node, u.idx, opset) for u in uses):
                if self.explain and any(n.op_type in ("Gather", "GatherElements") for n in readers):
                    self.left_alone(RULE, readers, "another reader of the constant needs INT64")
                continue
            array = tensor.numpy()
            info = np.iinfo(np.int32)
            if array.size and (array.min() < info.min or array.max() > info.max):
                self.left_alone(RULE, readers, "a value does not fit in INT32")
                continue
            narrow = initializer(graph, array.astype(np.int32), value.name or "int32")
            for use in uses:
                use.node.replace_input_with(use.idx, narrow)
            if not value.uses():
                graph.initializers.pop(value.name, None)  # type: ignore[arg-type]
            self.fired(RULE, readers)
            count += 1
        return count
