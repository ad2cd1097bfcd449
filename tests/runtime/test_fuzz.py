"""Fuzzing what edgec reads: mutated manifests, model bytes and reference archives at `load`,
`verify` and `inspect`, and mutated .onnx files at `compile`. Whatever the bytes, edgec
answers 0 or 2 with one line (never a traceback, never 1), and reads nothing outside the
bundle: a decoy folder beside it is never opened (an audit hook sees every open).

Checksums are recomputed after each mutation (a consistent forgery), so the mutated content
itself is what edgec must survive, not only the checksum check in front of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgec.runtime.bundle import MANIFEST, REFERENCE

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_opened: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str):
        _opened.append(args[0])


sys.addaudithook(_audit)  # (audit hooks stay for the process; this one only appends paths)

HOSTILE_STRINGS = ["../decoy/secret.bin", "/etc/passwd", "..", "", "model.onnx", "a\\b", "\0"]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=1 << 63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(HOSTILE_STRINGS)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path into a parsed JSON document."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


@st.composite
def manifest_mutations(draw: st.DrawFn, raw: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(raw))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return doc


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "zero"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "flip" and out:
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif out:
            out[at : at + 8] = bytes(len(out[at : at + 8]))
    return bytes(out)


class Sandbox:
    """A copy of a bundle beside a decoy folder it must never read."""

    def __init__(self, bundle: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="edgec-fuzz-"))
        (self.root / "decoy").mkdir()
        (self.root / "decoy" / "secret.bin").write_bytes(b"\0" * 64)
        self.bundle = self.root / "b"
        shutil.copytree(bundle, self.bundle)

    def write(self, name: str, data: bytes) -> None:
        (self.bundle / name).write_bytes(data)
        raw = json.loads((self.bundle / MANIFEST).read_text())
        raw["files"][name] = hashlib.sha256(data).hexdigest()
        (self.bundle / MANIFEST).write_text(json.dumps(raw))

    def run(self, cli, *args: str) -> None:
        """Run edgec; only 0 or 2, one line on error, nothing opened in the decoy folder."""
        _opened.clear()
        r = cli(*args)
        assert r.code in (0, 2), r.err
        if r.code == 2:
            lines = [line for line in r.err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error: "), r.err
        decoy = str(self.root / "decoy")
        assert not [p for p in _opened if "decoy" in p and str(Path(p).resolve()).startswith(decoy)]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


COMMANDS = [("verify",), ("inspect",), ("inspect", "--json")]


@FUZZ
@given(data=st.data())
def test_mutated_manifests(cli, tiny_bundle: Path, data: st.DataObject) -> None:
    raw = json.loads((tiny_bundle / MANIFEST).read_text())
    box = Sandbox(tiny_bundle)
    try:
        mutated = data.draw(manifest_mutations(raw))
        (box.bundle / MANIFEST).write_text(json.dumps(mutated))
        for command in COMMANDS:
            box.run(cli, *command, str(box.bundle))
    finally:
        box.close()


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("name", ["model.onnx", REFERENCE])
def test_mutated_bundle_files(cli, tiny_bundle: Path, name: str, data: st.DataObject) -> None:
    box = Sandbox(tiny_bundle)
    try:
        box.write(name, data.draw(byte_mutations((tiny_bundle / name).read_bytes())))
        box.run(cli, "verify", str(box.bundle))
    finally:
        box.close()


@FUZZ
@given(data=st.data())
def test_mutated_models_at_compile(cli, onnx_file: Path, data: st.DataObject) -> None:
    box = Sandbox(onnx_file.parent)  # (the decoy is beside the model's folder)
    try:
        model = box.bundle / onnx_file.name
        model.write_bytes(data.draw(byte_mutations(onnx_file.read_bytes())))
        before = model.read_bytes()
        out = box.root / "out"
        box.run(cli, "compile", str(model), "--backend", "onnxruntime", "-o", str(out))
        assert model.read_bytes() == before
        assert [p.name for p in box.root.iterdir() if p.name.startswith(".")] == []
    finally:
        box.close()
