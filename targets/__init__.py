"""Targets: the IR after a target's pipeline -> a back end's artifacts."""

from edgec.targets.base import Artifacts, CompileOptions, Target
from edgec.targets.registry import get_target, list_targets

__all__ = ["Artifacts", "CompileOptions", "Target", "get_target", "list_targets"]
