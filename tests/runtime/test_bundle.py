"""The bundle format: round trip, checksums, format version, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.core.errors import BundleError
from edgec.runtime import Bundle, load
from edgec.runtime.bundle import MANIFEST
from edgec.runtime.staging import staged_bundle
from edgec.version import BUNDLE_FORMAT_VERSION, __version__


def copy(bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(bundle, dest)
    return dest


def test_round_trip(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    m = bundle.manifest
    assert (m.format_version, m.edgec_version) == (BUNDLE_FORMAT_VERSION, __version__)
    assert (m.target, m.backend) == ("cpu", "onnxruntime")
    assert m.inputs[0].name == "x" and m.inputs[0].shape == (1, 3, 16, 16)
    assert m.outputs[0].dtype == "float32" and m.outputs[0].shape == (1, 5)
    assert set(m.files) == {"model.onnx", "ops.json", "reference.npz"}
    assert m.backend_options["graph_optimization_level"] == "all"
    assert m.passes and all("rewrites" in p for p in m.passes)
    assert m.reference["max_rel_error"] <= m.reference["tolerance"]
    assert m.reference["against"].startswith("torch")
    on_disk = json.loads((tiny_bundle / MANIFEST).read_text())
    assert on_disk["files"]["model.onnx"] == m.files["model.onnx"]
    session = load(tiny_bundle)
    ref_in, ref_out = session.reference()
    got = session.run(ref_in)
    np.testing.assert_allclose(
        got[m.outputs[0].name], ref_out[m.outputs[0].name], rtol=1e-5, atol=1e-6
    )


def test_tampered_model_fails(tiny_bundle: Path, tmp_path: Path) -> None:
    b = copy(tiny_bundle, tmp_path)
    data = bytearray((b / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for 'model.onnx'"):
        load(b)


def test_tampered_reference_fails(tiny_bundle: Path, tmp_path: Path) -> None:
    b = copy(tiny_bundle, tmp_path)
    with np.load(b / "reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    key = next(k for k in arrays if k.startswith("output/"))
    arrays[key] = arrays[key] + 1
    np.savez(b / "reference.npz", **arrays)
    with pytest.raises(BundleError, match=r"checksum mismatch for 'reference.npz'"):
        load(b)


def test_missing_file(tiny_bundle: Path, tmp_path: Path) -> None:
    b = copy(tiny_bundle, tmp_path)
    (b / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"file 'model.onnx' is missing"):
        load(b)


def test_newer_format_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    b = copy(tiny_bundle, tmp_path)
    raw = json.loads((b / MANIFEST).read_text())
    raw["format_version"] = BUNDLE_FORMAT_VERSION + 1
    (b / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"format version 2.*upgrade edgec"):
        load(b)


@pytest.mark.parametrize(
    "content", ["{not json", '{"format": "edgec-bundle", "format_version": 1}']
)
def test_malformed_manifest(tiny_bundle: Path, tmp_path: Path, content: str) -> None:
    b = copy(tiny_bundle, tmp_path)
    (b / MANIFEST).write_text(content)
    with pytest.raises(BundleError, match=r"manifest.json is malformed"):
        load(b)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"does not exist"):
        load(tmp_path / "nothing")
    with pytest.raises(BundleError, match=r"not an edgec bundle"):
        load(tmp_path)


def test_staging_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "b"
    with pytest.raises(KeyboardInterrupt), staged_bundle(dest) as stage:
        (stage / "model.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_recompile_replaces_a_bundle(tiny_net, tmp_path: Path) -> None:
    out = tmp_path / "b"
    edgec.compile(tiny_net, output=out, input_shapes=["x=1x3x16x16"])
    first = Bundle.open(out).manifest.files["reference.npz"]
    edgec.compile(tiny_net, output=out, input_shapes=["x=1x3x16x16"], seed=1)
    assert Bundle.open(out).manifest.files["reference.npz"] != first
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no staging or old folders left


def test_never_overwrites_a_users_folder(tiny_net, tmp_path: Path) -> None:
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(BundleError, match=r"exists and is not an edgec bundle"):
        edgec.compile(tiny_net, output=user, input_shapes=["x=1x3x16x16"])
    assert [p.name for p in user.iterdir()] == ["cat.jpg"]


def test_a_project_folder_with_a_manifest_survives(cli, tiny_net, tmp_path: Path) -> None:
    """A web app's manifest.json is not an edgec bundle: compile refuses to replace the
    folder (exit 2) and leaves every byte of it as it was."""
    from tests.conftest import tree_digest

    app = tmp_path / "webapp"
    app.mkdir()
    (app / MANIFEST).write_text(json.dumps({"name": "My App", "icons": [], "start_url": "/"}))
    (app / "index.html").write_text("<html></html>")
    before = tree_digest(app)
    with pytest.raises(BundleError, match=r"exists and is not an edgec bundle"):
        edgec.compile(tiny_net, output=app, input_shapes=["x=1x3x16x16"])
    r = cli("verify", app)
    assert r.code == 2 and "not an edgec bundle" in r.err
    assert tree_digest(app) == before


@pytest.mark.slow
def test_a_bundle_from_before_the_marker_is_still_one(tiny_net, tmp_path: Path) -> None:
    out = tmp_path / "b"
    edgec.compile(tiny_net, output=out, input_shapes=["x=1x3x16x16"])
    raw = json.loads((out / MANIFEST).read_text())
    assert raw.pop("format") == "edgec-bundle"
    (out / MANIFEST).write_text(json.dumps(raw))
    assert load(out).verify().ok
    edgec.compile(tiny_net, output=out, input_shapes=["x=1x3x16x16"], seed=1)  # replaced


@pytest.mark.parametrize("name", ["../outside.onnx", "/tmp/outside.onnx", "a\\..\\b.onnx"])
def test_manifest_cannot_name_files_outside(cli, tiny_bundle: Path, tmp_path: Path, name) -> None:
    b = copy(tiny_bundle, tmp_path)
    raw = json.loads((b / MANIFEST).read_text())
    model = raw["artifacts"]["model"]
    raw["artifacts"]["model"] = name
    raw["files"][name] = raw["files"].pop(model)
    (b / MANIFEST).write_text(json.dumps(raw))
    r = cli("verify", b)
    assert r.code == 2 and "not inside the bundle" in r.err and name in r.err


def test_a_symlink_out_of_the_bundle_is_refused(cli, tiny_bundle: Path, tmp_path: Path) -> None:
    b = copy(tiny_bundle, tmp_path)
    elsewhere = tmp_path / "elsewhere.onnx"
    (b / "model.onnx").rename(elsewhere)
    (b / "model.onnx").symlink_to(elsewhere)
    r = cli("verify", b)
    assert r.code == 2 and "'model.onnx' is a symbolic link" in r.err
