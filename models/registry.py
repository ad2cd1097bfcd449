"""The table of built-in architectures: name -> builder, default inputs, description, paper."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from edgec.core.errors import SourceError
from edgec.core.specs import TensorSpec


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    build: Callable[..., nn.Module]
    inputs: dict[str | None, TensorSpec]
    description: str
    paper: str
    defaults: dict[str, object] = field(default_factory=dict)


_REGISTRY: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> None:
    if info.name in _REGISTRY:
        raise ValueError(f"model '{info.name}' registered twice")
    _REGISTRY[info.name] = info


def list_models() -> list[str]:
    return list(_REGISTRY)


def get_info(name: str) -> ModelInfo:
    info = _REGISTRY.get(name)
    if info is None:
        raise SourceError(
            f"unknown model '{name}'; built-in models: {', '.join(_REGISTRY) or '(none)'}"
        )
    return info
