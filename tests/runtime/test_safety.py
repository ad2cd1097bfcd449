"""Nothing trusted: a bundle's manifest, reference and files are checked before use (exit 2
with the thing at fault named); signals and concurrent writers leave nothing half written or
stray; the libraries underneath stay quiet unless asked (-v)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgec.core.errors import BundleError
from edgec.runtime import Bundle
from edgec.runtime.bundle import (
    MANIFEST,
    REFERENCE,
    consistent_read,
    finalize_manifest,
    load_reference,
)
from edgec.runtime.staging import staged_bundle, sweep_stale
from tests.conftest import tree_digest

EDGEC = str(Path(sys.executable).with_name("edgec"))


def copy(bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(bundle, dest)
    return dest


def edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    raw = json.loads((bundle / MANIFEST).read_text())
    edit(raw)
    (bundle / MANIFEST).write_text(json.dumps(raw))


def rehash(bundle: Path, name: str) -> None:
    """Record `name`'s current sha256 (a consistent forgery: checksums alone pass)."""
    digest = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    edit_manifest(bundle, lambda raw: raw["files"].__setitem__(name, digest))


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return edit


OUT = "linear"  # the output of conftest's TinyNet, as torch's exporter names it
MANIFEST_EDITS = {
    "no reference": (lambda raw: raw.pop("reference"), "'reference' is missing"),
    "reference a string": (_set("reference", "x"), "'reference' is not a map"),
    "tolerance nan": (_set("reference.tolerance", float("nan")), "tolerance nan"),
    "tolerance negative": (_set("reference.tolerance", -1), "tolerance -1"),
    "inputs a string": (_set("inputs", "x"), "'inputs' is not a list"),
    "no outputs": (_set("outputs", []), "'outputs' is not a list of at least one"),
    "shape a string": (
        lambda raw: raw["inputs"][0].__setitem__("shape", "abc"),
        "input 'x' has a malformed shape",
    ),
    "negative size": (
        lambda raw: raw["inputs"][0].__setitem__("shape", [-1, 3, 16, 16]),
        "malformed shape",
    ),
    "unknown dtype": (
        lambda raw: raw["outputs"][0].__setitem__("dtype", "floaty"),
        "unknown dtype 'floaty'",
    ),
    "unknown kind": (lambda raw: raw["inputs"][0].__setitem__("kind", "weird"), "unknown kind"),
    "backend a number": (_set("backend", 3), "'backend' is not a string"),
    "unknown optimization level": (
        _set("backend_options.graph_optimization_level", "ULTRA"),
        "unknown onnxruntime optimization level 'ULTRA'",
    ),
    "unknown ort option": (
        _set("backend_options.config_entries", {"session.x": "1"}),
        "unknown onnxruntime option 'config_entries'",
    ),
    "no model artifact": (_set("artifacts", {}), "needs the artifact 'model'"),
    "not a checksum": (
        lambda raw: raw["files"].__setitem__("model.onnx", "abc"),
        "checksum of 'model.onnx' is not a sha256",
    ),
    "unknown field": (_set("surprise", 1), "unknown field 'surprise'"),
    "format_version a string": (_set("format_version", "1"), "format_version"),
    "passes a map": (_set("passes", {}), "'passes' is not a list of maps"),
    "reference unchecked": (
        lambda raw: raw["files"].pop(REFERENCE),
        f"file '{REFERENCE}' is not listed",
    ),
    "output renamed": (
        lambda raw: raw["outputs"][0].__setitem__("name", "q"),
        f"reference.npz holds the outputs ['{OUT}']",
    ),
    "input renamed": (
        lambda raw: raw["inputs"][0].__setitem__("name", "q"),
        "reference.npz holds the inputs ['x']",
    ),
    "huge input": (
        lambda raw: raw["inputs"][0].__setitem__("shape", [1 << 40, 3, 16, 16]),
        "reference.npz input 'x' has shape (1, 3, 16, 16)",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
@pytest.mark.parametrize("command", ["verify", "profile", "inspect"])
def test_a_malformed_manifest_exits_2_naming_the_field(
    cli, tiny_bundle: Path, tmp_path: Path, case: str, command: str
) -> None:
    b = copy(tiny_bundle, tmp_path)
    edit, message = MANIFEST_EDITS[case]
    edit_manifest(b, edit)
    before = tree_digest(b)
    args = [command, b] + (["--runs", "2", "--warmup", "0"] if command == "profile" else [])
    r = cli(*args)
    assert r.code == 2, r.err
    assert message in one_line(r.err) and str(b) in r.err
    assert tree_digest(b) == before


def _save(path: Path, arrays: dict[str, np.ndarray], allow_pickle: bool = False) -> None:
    with open(path, "wb") as f:
        np.savez(f, allow_pickle=allow_pickle, **arrays)  # type: ignore[arg-type]


x = np.zeros((1, 3, 16, 16), np.float32)
y = np.zeros((1, 5), np.float32)
REFERENCE_EDITS: dict[str, tuple[Callable[[Path], None], str]] = {
    "garbage": (lambda p: p.write_bytes(b"garbage" * 9), "is not an npz archive"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:200]), f"{REFERENCE} is"),
    "other names": (
        lambda p: _save(p, {"input/q": x, f"output/{OUT}": y}),
        "holds the inputs ['q']; manifest.json declares ['x']",
    ),
    "other shape": (
        lambda p: _save(p, {"input/x": x[:, :1], f"output/{OUT}": y}),
        "input 'x' has shape (1, 1, 16, 16)",
    ),
    "other dtype": (
        lambda p: _save(p, {"input/x": x, f"output/{OUT}": y.astype(np.float64)}),
        f"output '{OUT}' has dtype float64",
    ),
    "a sequence length without items": (
        lambda p: _save(p, {"input/x": x, f"output.seqlen/{OUT}": np.asarray(3)}),
        "is unreadable",
    ),
    "a pickled array": (
        lambda p: _save(p, {"input/x": np.array([None], object), f"output/{OUT}": y}, True),
        "is unreadable (Object arrays cannot be loaded",
    ),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_EDITS))
def test_a_forged_reference_exits_2(cli, tiny_bundle: Path, tmp_path: Path, case: str) -> None:
    """reference.npz rewritten and its checksum updated: the contents are still checked
    against the manifest, and never unpickled."""
    b = copy(tiny_bundle, tmp_path)
    write, message = REFERENCE_EDITS[case]
    write(b / REFERENCE)
    rehash(b, REFERENCE)
    r = cli("verify", b)
    assert r.code == 2 and message in one_line(r.err), r.err


def test_a_file_added_to_a_bundle_is_refused(cli, tiny_bundle: Path, tmp_path: Path) -> None:
    """A file the manifest does not list would be read unchecked (ONNX external data)."""
    b = copy(tiny_bundle, tmp_path)
    (b / "weights.bin").write_bytes(b"\0" * 64)
    r = cli("verify", b)
    assert r.code == 2 and "file 'weights.bin' is not listed in manifest.json" in one_line(r.err)


def test_external_data_outside_the_bundle_is_never_read(
    cli, tiny_bundle: Path, tmp_path: Path
) -> None:
    """A forged model (checksum updated) whose weights point at '../secret.bin'."""
    b = copy(tiny_bundle, tmp_path)
    np.arange(4, dtype=np.float32).tofile(tmp_path / "secret.bin")
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1, 4])
    w.data_location = TensorProto.EXTERNAL
    for key, value in {"location": "../secret.bin", "offset": "0", "length": "16"}.items():
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (b / "model.onnx").write_bytes(model.SerializeToString())
    rehash(b, "model.onnx")
    r = cli("verify", b)
    assert r.code == 2 and "escapes model directory" in one_line(r.err), r.err


def _model(opset: int, op: str = "Relu", domain: str = "") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], domain=domain)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_model(99), "imports opset 99 of ai.onnx; the newest this edgec knows"),
        (
            _model(17, "FooBar", "com.microsoft"),
            "com.microsoft:FooBar(-1) is not a registered function/op",
        ),
    ],
    ids=["opset 99", "unknown com.microsoft op"],
)
def test_models_nothing_can_run_exit_2(
    cli, tmp_path: Path, model: onnx.ModelProto, message: str
) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    r = cli("compile", path, "-o", tmp_path / "out")
    assert r.code == 2 and message in one_line(r.err), r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# -- signals ---------------------------------------------------------------------------------


def _staging(parent: Path) -> list[Path]:
    return list(parent.glob(".*.staging-*")) if parent.exists() else []


def _compile_until_staged(onnx_file: Path, out: Path) -> subprocess.Popen[str]:
    """`edgec compile` in a subprocess, returned once its staging folder exists (the TVM
    build inside it takes seconds)."""
    proc = subprocess.Popen(
        [EDGEC, "compile", str(onnx_file), "--target", "x86_64", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not _staging(out.parent):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


@pytest.mark.slow
def test_sigterm_removes_the_staging_folder(onnx_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundles" / "net"
    before = tree_digest(onnx_file.parent)
    proc = _compile_until_staged(onnx_file, out)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated: nothing was written" in err
    assert list(out.parent.iterdir()) == []
    assert tree_digest(onnx_file.parent) == before


@pytest.mark.slow
def test_a_killed_writers_staging_folder_is_swept(onnx_file: Path, tmp_path: Path) -> None:
    """SIGKILL leaves a staging folder; the next write to that output removes it, and never
    one a live writer holds."""
    out = tmp_path / "bundles" / "net"
    proc = _compile_until_staged(onnx_file, out)
    proc.kill()
    proc.wait()
    (stale,) = _staging(out.parent)
    with staged_bundle(out) as stage:
        assert not stale.exists()
        assert sweep_stale(out) == []  # this writer's own staging folder is held
        assert stage.exists()
    assert _staging(out.parent) == []


# -- concurrency -----------------------------------------------------------------------------


def _write_bundle(template: Path, dest: Path, seed: int) -> None:
    """A bundle like `template` with another reference (so every version has other bytes)."""
    manifest = Bundle.open(template).manifest
    rng = np.random.default_rng(seed)
    with staged_bundle(dest) as stage:
        for name in manifest.artifacts.values():
            shutil.copyfile(template / name, stage / name)
        ref_in = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
        ref_out = rng.standard_normal((1, 5)).astype(np.float32)
        _save(stage / REFERENCE, {"input/x": ref_in["x"], f"output/{OUT}": ref_out})
        finalize_manifest(stage, manifest)


def test_concurrent_writers_and_readers(tiny_bundle: Path, tmp_path: Path) -> None:
    """Two writers replace one bundle over and over while a reader opens it: every write
    lands whole, every read sees one whole bundle (no false checksum mismatch), and no
    staging or old folder is left."""
    dest = tmp_path / "shared" / "b"
    _write_bundle(tiny_bundle, dest, 0)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(k: int) -> None:
        try:
            for i in range(25):
                _write_bundle(tiny_bundle, dest, 1000 * k + i)
        except BaseException as e:  # reported below
            errors.append(e)

    reads = 0

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                bundle = Bundle.open(dest)
                assert load_reference(bundle)[0]["x"].shape == (1, 3, 16, 16)
                reads += 1
            except BaseException as e:
                errors.append(e)
                return

    writers = [threading.Thread(target=writer, args=(k,)) for k in (1, 2)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert errors == [] and reads > 0
    assert [p.name for p in dest.parent.iterdir()] == ["b"]
    Bundle.open(dest)


def test_a_reader_that_never_gets_a_whole_bundle_gives_up_naming_it(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A writer that replaces the bundle during every read: the reader retries until its
    patience runs out, then says so in one BundleError (it never returns a mixed read)."""
    dest = tmp_path / "b"
    _write_bundle(tiny_bundle, dest, 0)
    seeds = iter(range(1, 1000))

    def read_while_replaced(folder: Path) -> Bundle:
        bundle = Bundle.read(folder)
        _write_bundle(tiny_bundle, dest, next(seeds))
        return bundle

    with pytest.raises(
        BundleError, match=r"'.*b' was replaced while it was read, \d+ times in 0.3 s"
    ):
        consistent_read(dest, read_while_replaced, patience_s=0.3)
    Bundle.open(dest)


def test_a_symlinked_output_is_not_replaced(tiny_bundle: Path, tmp_path: Path) -> None:
    target = copy(tiny_bundle, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(BundleError, match="exists and is not an edgec bundle"):
        _write_bundle(tiny_bundle, link, 1)
    assert link.is_symlink()


# -- noise -----------------------------------------------------------------------------------

UNEXPORTABLE = """
import torch

class Net(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export refuses it
            return x.nonzero()
        return x

def build():
    return Net()
"""


@pytest.mark.slow
def test_a_failed_export_prints_one_line(tmp_path: Path) -> None:
    """torch's exporter prints the graph and logs warnings before raising; the user sees
    edgec's one line (and -v shows more)."""
    (tmp_path / "net.py").write_text(textwrap.dedent(UNEXPORTABLE))
    args = [EDGEC, "compile", f"{tmp_path / 'net.py'}:build", "--input-shape", "x=1x4"]
    r = subprocess.run([*args, "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert one_line(r.stderr).startswith("error: torch.export cannot export")
    verbose = subprocess.run(
        [EDGEC, "-v", *args[1:], "-o", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert verbose.returncode == 2 and "symbolic_shapes" in verbose.stderr


def test_an_old_opset_model_compiles_quietly(cli, tmp_path: Path) -> None:
    """An IR-3 model (initializers listed as graph inputs) made onnx_ir warn on every pass."""
    root = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
    model = root / "test_Conv2d" / "model.onnx"
    assert onnx.load(model).opset_import[0].version <= 7
    r = cli("compile", model, "--backend", "onnxruntime", "-o", tmp_path / "b")
    assert r.code == 0 and r.err.strip() == "", r.err


def test_sigterm_handler_is_restored(cli, tiny_bundle: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert cli("inspect", tiny_bundle).code == 0
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_pickle_as_reference_is_never_loaded(tiny_bundle: Path, tmp_path: Path) -> None:
    b = copy(tiny_bundle, tmp_path)
    (b / REFERENCE).write_bytes(b"\x80\x04K\x01.")  # a pickle of the number 1
    rehash(b, REFERENCE)
    with pytest.raises(BundleError, match="is not an npz archive"):
        Bundle.open(b)


def test_an_unusable_output_dir_exits_2_before_running(
    cli, tiny_bundle: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "afile").write_text("not a folder")
    r = cli(
        "run",
        tiny_bundle,
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--output-dir",
        tmp_path / "afile" / "sub",
    )
    assert r.code == 2 and "cannot write to --output-dir" in one_line(r.err)


def test_an_edited_output_name_cannot_write_outside_the_output_dir(
    cli, tiny_bundle: Path, tmp_path: Path
) -> None:
    """An output named '../escaped' (manifest and reference edited alike, checksum forged)
    is written as a plain file inside --output-dir."""
    b = copy(tiny_bundle, tmp_path)
    edit_manifest(b, lambda raw: raw["outputs"][0].__setitem__("name", "../escaped"))
    _save(b / REFERENCE, {"input/x": x, "output/../escaped": y})
    rehash(b, REFERENCE)
    np.save(tmp_path / "x.npy", x)
    preds = tmp_path / "preds" / "inner"
    r = cli("run", b, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", preds)
    assert r.code == 0, r.err
    assert [p.name for p in preds.iterdir()] == ["_escaped.npy"]
    assert not (tmp_path / "preds" / "escaped.npy").exists()
