"""Every target's pass pipeline, in one place: a reader sees at a glance what runs for each.

Pipelines are factories (passes hold per-run state such as their rewrite counts).
"""

from __future__ import annotations

from collections.abc import Callable

from edgec.core.errors import OptionError, TargetError
from edgec.passes.base import FixedPoint, Step, leaves
from edgec.passes.binarize_embedding import BinarizeEmbedding
from edgec.passes.binarize_linear import BinarizeLinear
from edgec.passes.binarize_matmul import BinarizeMatmul
from edgec.passes.cleanup import (
    DeduplicateInitializers,
    DropIdentityNodes,
    DropUnusedNodes,
    FoldConstants,
    InferShapes,
    LiftConstants,
    MergeCommonSubexpressions,
)
from edgec.passes.drop_identity_activations import DropIdentityActivations
from edgec.passes.fold_batchnorm import FoldBatchnorm
from edgec.passes.fold_channel_affine import FoldChannelAffine
from edgec.passes.fold_repbn import FoldRepbn
from edgec.passes.fold_square_sum import FoldSquareSum
from edgec.passes.lower_binary_ops import LowerBinaryOps
from edgec.passes.map_attention import MapAttention
from edgec.passes.map_linear_attention import MapLinearAttention
from edgec.passes.merge_affine_terms import MergeAffineTerms
from edgec.passes.merge_parallel_branches import MergeParallelBranches
from edgec.passes.merge_serial_linear import MergeSerialLinear
from edgec.passes.narrow_int64 import NarrowInt64


def cleanup() -> FixedPoint:
    return FixedPoint(
        "cleanup",
        [
            # first: every later pass finds constants as initializers, never as Constant nodes
            LiftConstants(),
            FoldConstants(),
            DropIdentityNodes(),
            MergeCommonSubexpressions(),
            DropUnusedNodes(),
        ],
    )


def reparameterize() -> FixedPoint:
    """Fold training-only structure; the clean-ups run in every round, until nothing fires."""
    return FixedPoint(
        "reparameterize",
        [
            DropIdentityActivations(),
            # BN first: conv pairs and branches then have nothing between them
            FoldBatchnorm(),
            # a BN left in a sum or on tokens becomes an affine, for fold_channel_affine
            FoldRepbn(),
            # x + s * (f(x) - BN(x)): after fold_repbn's two-term sums, before the affine folds
            MergeAffineTerms(),
            FoldChannelAffine(),
            # branches before serial merges: a merged branch sum may start a serial pair
            MergeParallelBranches(),
            MergeSerialLinear(),
            *cleanup().passes,
        ],
    )


def binarize() -> list[Step]:
    """Binarized computation -> ai.edgec bit-packed ops (linear layers before activation
    products, so that a weight's codes are never taken for a run-time operand)."""
    return [BinarizeLinear(), BinarizeEmbedding(), BinarizeMatmul(), cleanup()]


def cpu() -> list[Step]:
    return [
        cleanup(),
        reparameterize(),
        *binarize(),
        # after binarization: binary Q K^T products stay popcount kernels
        MapAttention(),
        MapLinearAttention(),
        FoldSquareSum(),
        # every shape is known now: Shape ops on static tensors fold (torch.roll's shift in
        # slab_swin_tiny, which TVM's importer cannot take as an expression)
        InferShapes(),
        cleanup(),
        # after folding, so that folded results are lifted too
        LiftConstants(),
        DeduplicateInitializers(),
        InferShapes(),
    ]


def mobile() -> list[Step]:
    """The cpu pipeline, then the binary ops as int8 integer arithmetic (a reduced onnxruntime
    build runs no edgec kernels)."""
    return [*cpu(), LowerBinaryOps(), cleanup(), InferShapes()]


def tensorrt() -> list[Step]:
    """The cpu pipeline, then INT64 constants narrowed to INT32 where exact (the target lowers
    attention and binary ops by precision, and checks every op against TensorRT's table)."""
    return [*cpu(), NarrowInt64(), InferShapes()]


def coreml() -> list[Step]:
    """The cpu pipeline as it is: the target lowers attention and the binary ops to MIL itself
    (`targets/coreml_lowering.py`)."""
    return cpu()


def none() -> list[Step]:
    """No rewrites: the frontend's IR as it is (for comparisons and debugging)."""
    return []


PIPELINES: dict[str, Callable[[], list[Step]]] = {
    "cpu": cpu,
    "mobile": mobile,
    "tensorrt": tensorrt,
    "coreml": coreml,
    "none": none,
}


def pass_names(steps: list[Step]) -> list[str]:
    """The names of the passes `steps` run, each once, in order."""
    return list(dict.fromkeys(p.name for p in leaves(steps)))


def check_explain(pipeline: str, explain: bool | str) -> None:
    """OptionError unless `explain` is a bool or the name of a pass the pipeline runs."""
    if isinstance(explain, bool):
        return
    names = pass_names(get_pipeline(pipeline))
    if explain not in names:
        raise OptionError(
            f"--explain: the '{pipeline}' pipeline runs no pass '{explain}'; it runs "
            + ", ".join(names)
        )


def get_pipeline(name: str) -> list[Step]:
    factory = PIPELINES.get(name)
    if factory is None:
        raise TargetError(f"unknown pipeline '{name}'; known: {', '.join(PIPELINES)}")
    return factory()
