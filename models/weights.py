"""Loading a user's weights into a built-in model: safetensors, or a torch file read with
`weights_only=True` (never arbitrary pickles). Mismatches are one-line errors naming the key."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from edgec.core.errors import SourceError


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"weights file '{p}' does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"cannot read weights '{p}': {first}") from None
    for key in ("model", "state_dict", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SourceError(f"weights '{p}' hold no state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load `path` into `model`, requiring the same keys and shapes."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise SourceError(
            f"weights '{path}' lack '{missing[0]}'"
            + (f" and {len(missing) - 1} more keys" if len(missing) > 1 else "")
        )
    if unexpected:
        raise SourceError(
            f"weights '{path}' have '{unexpected[0]}', which the model does not"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise SourceError(
                f"weights '{path}': '{key}' has shape {tuple(state[key].shape)}; "
                f"the model expects {tuple(value.shape)}"
            )
    model.load_state_dict(state, strict=True)
