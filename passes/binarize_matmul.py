"""binarize_matmul: a product of two activations that are both binarized at run time becomes
one `ai.edgec::BinaryMatMul` (BiT's and BiViT's Q K^T and P V).

    MatMul(c_a(A), c_b(B))  =  BinaryMatMul(A, B)     (an exact integer per entry)

The binarizations (sign, the {0, 1} clamp-round form, a {0, 1} cast; see `binary_codes`) are
read from the operands and kept as the op's attributes; data movement between a binarization
and the product (the heads' Transpose, BiViT's unbind) is replayed on the float operand. An
offset is not fused here (the Add stays in the graph).

Left alone, with the reason (`edgec compile --explain`): operands of different ranks or batch
shapes (no broadcasting), dynamic shapes, products where only one side is binarized.
"""

from __future__ import annotations

import onnx_ir as ir

from edgec.core.binary_ops import DOMAIN, ensure_function, supports_functions
from edgec.passes._ir import bypass, is_op, live_nodes
from edgec.passes.base import EdgecPass
from edgec.passes.binary_codes import activation_code, drop_dead, replay


def _static(value: ir.Value) -> list[int] | None:
    if value.shape is None or not all(isinstance(d, int) for d in value.shape):
        return None
    return [int(d) for d in value.shape]


RULE = "binary_matmul"


class BinarizeMatmul(EdgecPass):
    name = "binarize_matmul"

    def rewrite(self, model: ir.Model) -> int:
        count = 0
        if not supports_functions(model):  # no body to give the ops
            return 0
        for node in live_nodes(model):
            if not is_op(node, "MatMul") or any(i is None for i in node.inputs):
                continue
            a, b = node.inputs[0], node.inputs[1]
            assert a is not None and b is not None
            code_a, code_b = activation_code(a), activation_code(b)
            if code_a is None or code_b is None:
                if code_a is not None or code_b is not None:
                    self.left_alone(RULE, [node], "only one operand is binarized")
                continue
            sa, sb = _static(a), _static(b)
            if sa is None or sb is None:
                self.left_alone(RULE, [node], "an operand's shape is not static")
                continue
            if len(sa) != len(sb) or len(sa) < 2 or sa[:-2] != sb[:-2]:
                why = "the operands' ranks or batch shapes differ (no broadcasting)"
                self.left_alone(RULE, [node], why)
                continue
            binary = ir.Node(
                DOMAIN,
                "BinaryMatMul",
                [replay(code_a, node, fuse_offset=False), replay(code_b, node, fuse_offset=False)],
                attributes=[
                    ir.AttrFloat32("a_step", code_a.step),
                    ir.AttrFloat32("a_threshold", code_a.threshold),
                    ir.AttrFloat32("a_low", code_a.low),
                    ir.AttrFloat32("b_step", code_b.step),
                    ir.AttrFloat32("b_threshold", code_b.threshold),
                    ir.AttrFloat32("b_low", code_b.low),
                ],
                name=f"{node.name or 'matmul'}/binary",
            )
            model.graph.insert_before(node, binary)
            binary.outputs[0].shape = node.outputs[0].shape
            binary.outputs[0].dtype = ir.DataType.FLOAT
            ensure_function(model, "BinaryMatMul")
            bypass(node, binary.outputs[0])
            drop_dead(code_a)
            drop_dead(code_b)
            count += self.fired(RULE, [node])
        return count
