"""edgec: a compiler and runtime for efficient neural networks on edge devices.

    import edgec
    bundle = edgec.compile("vanillanet_5", target="cpu", output="out/vn5")
    session = edgec.load("out/vn5")
    outputs = session.run({"x": image})

`compile` needs the compiler (torch, onnx_ir, the passes); `load` needs only the runtime,
so both are imported lazily: `import edgec.runtime` on a device pulls in neither torch
nor the compiler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgec.core.errors import EdgecError
from edgec.version import __version__

if TYPE_CHECKING:
    from edgec.api import compile, explain, load

__all__ = ["EdgecError", "__version__", "compile", "explain", "load"]


def __getattr__(name: str) -> Any:
    if name in ("compile", "explain", "load"):
        from edgec import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgec' has no attribute {name!r}")
