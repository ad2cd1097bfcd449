"""Passes: rewrites of the IR that keep its numerics, and the manager that proves it."""

from edgec.passes.base import EdgecPass, FixedPoint
from edgec.passes.manager import DEFAULT_TOLERANCE, PassManager, PassReport
from edgec.passes.pipelines import PIPELINES, get_pipeline

__all__ = [
    "DEFAULT_TOLERANCE",
    "PIPELINES",
    "EdgecPass",
    "FixedPoint",
    "PassManager",
    "PassReport",
    "get_pipeline",
]
