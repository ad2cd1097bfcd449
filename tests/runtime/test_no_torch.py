"""The runtime must load, verify and profile a bundle with neither torch nor the compiler."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# a script's first lines: torch and the compiler's parts cannot be imported after them
BLOCK_COMPILER = """
import sys

class Block:
    BLOCKED = ("torch", "onnx_ir", "onnxscript", "tvm", "edgec.frontend", "edgec.passes",
               "edgec.targets", "edgec.models", "edgec.api")
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in self.BLOCKED):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
"""
SCRIPT = (
    BLOCK_COMPILER
    + """

import edgec
from edgec.runtime import load, profile

session = load(sys.argv[1])
report = session.verify()
assert report.ok, report
p = profile(session, runs=3, warmup=1, threads=1)
assert p.p50_ms > 0
loaded = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx_ir", "onnxscript")]
assert not loaded, loaded
print("ok", report.max_error)
"""
)


def test_runtime_without_torch(tiny_bundle: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(tiny_bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
