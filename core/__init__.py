"""The bottom of edgec's layering: what every other part may import and that imports none of
them. The errors users see (`errors`), IR utilities (`irutil`: specs of an IR's inputs and
outputs, running it in onnxruntime), graph statistics (`graph_stats`), the `ai.edgec` operator
contract shared by the passes that emit the ops and the targets that lower them
(`binary_ops`), and the tensor specs (`specs`).

Nothing is imported here: `edgec.core.errors` must stay importable without onnx or torch.
"""
