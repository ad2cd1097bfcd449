"""The table of targets: name -> target plugin."""

from __future__ import annotations

from edgec.core.errors import TargetError
from edgec.targets.base import Target
from edgec.targets.coreml import CoremlTarget
from edgec.targets.mobile import MobileTarget
from edgec.targets.onnxruntime import OnnxruntimeTarget
from edgec.targets.tensorrt import TensorrtTarget
from edgec.targets.tvm import TvmArm64Target, TvmX86Target

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        OnnxruntimeTarget(),
        TvmX86Target(),
        TvmArm64Target(),
        MobileTarget(),
        TensorrtTarget(),
        CoremlTarget(),
    )
}


def get_target(name: str) -> Target:
    target = TARGETS.get(name)
    if target is None:
        raise TargetError(f"unknown target '{name}'; known targets: {', '.join(TARGETS)}")
    return target


def list_targets() -> list[Target]:
    return list(TARGETS.values())
