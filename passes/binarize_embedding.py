"""binarize_embedding: a table lookup whose rows each take two values +-s_r becomes one
`ai.edgec::BinaryGather` with the table packed 1 bit per entry and one scale per row.

    Gather(s[:, None] * C, ids)  =  BinaryGather(pack(C > 0), s, ids)

the form of BiT's word embeddings (codes times the row's mean |W|). The product codes * s is
the one the model computes, so the values are identical.

Left alone, with the reason (`edgec compile --explain`): tables with a row of more than two
values, or not symmetric around 0; Gather on an axis other than 0; tables smaller than 64
entries per row (packing saves little there).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgec.core.binary_ops import (
    DOMAIN,
    WORD_BITS,
    ensure_function,
    pack_bits,
    supports_functions,
)
from edgec.core.irutil import initializer
from edgec.passes._ir import bypass, is_op, layer_name, live_nodes
from edgec.passes.base import EdgecPass
from edgec.passes.binarize_linear import two_level
from edgec.passes.binary_codes import ConstantEvaluator

RULE = "binary_gather"


class BinarizeEmbedding(EdgecPass):
    name = "binarize_embedding"

    def rewrite(self, model: ir.Model) -> int:
        if not supports_functions(model):  # no body to give the ops
            return 0
        evaluate = ConstantEvaluator(model)
        count = 0
        for node in live_nodes(model):
            if not is_op(node, "Gather") or node.attributes.get_int("axis", 0) != 0:
                continue
            table = evaluate(node.inputs[0])
            if table is None or table.ndim != 2 or not np.issubdtype(table.dtype, np.floating):
                continue
            levels = two_level(table)
            if levels is None:
                why = "a row of the table takes more than two values, or two that are not +-s"
                self.left_alone(RULE, [node], why)
                continue
            if table.shape[1] < WORD_BITS:
                why = f"rows of {table.shape[1]} entries, under {WORD_BITS}: packing saves little"
                self.left_alone(RULE, [node], why)
                continue
            bits, scale = levels
            graph = model.graph
            hint = layer_name(node, "embedding")
            binary = ir.Node(
                DOMAIN,
                "BinaryGather",
                [
                    initializer(graph, pack_bits(bits), f"{hint}.weight_bits"),
                    initializer(graph, scale, f"{hint}.scale"),
                    node.inputs[1],
                ],
                attributes=[ir.AttrInt64("dim", table.shape[1])],
                name=f"{hint}/binary_gather",
            )
            graph.insert_before(node, binary)
            binary.outputs[0].shape = node.outputs[0].shape
            binary.outputs[0].dtype = ir.DataType.FLOAT
            ensure_function(model, "BinaryGather")
            bypass(node, binary.outputs[0])
            count += self.fired(RULE, [node])
        return count
