"""The bundle format: a folder with `manifest.json`, the back end's artifacts and a reference.

    out/my_model/
      manifest.json    format and edgec versions, target, back end, inputs/outputs,
                       passes with their reports, sha256 of every other file
      model.onnx       the artifact(s) of the back end
      reference.npz    one input and the unmodified model's output, for `edgec verify`

A bundle is written to a staging folder and swapped into place whole (`runtime/staging.py`);
readers notice a swap made while they read and read again (`consistent_read`). This module
needs only numpy and the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np

from edgec.core.errors import BundleError, EdgecError, InputError
from edgec.core.specs import TensorSpec
from edgec.runtime import manifest_schema
from edgec.version import BUNDLE_FORMAT_VERSION, __version__

MANIFEST = "manifest.json"
FORMAT_MARKER = "edgec-bundle"  # manifest["format"]: what tells an edgec bundle from a folder
REFERENCE = "reference.npz"

T = TypeVar("T")


@dataclass
class Manifest:
    """What `manifest.json` holds; see the module docstring."""

    target: str
    backend: str
    artifacts: dict[str, str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    backend_options: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    compile: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = BUNDLE_FORMAT_VERSION
    edgec_version: str = __version__
    format: str = FORMAT_MARKER

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [t.to_json() for t in self.inputs]
        d["outputs"] = [t.to_json() for t in self.outputs]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        d = dict(d)
        d["inputs"] = [TensorSpec.from_json(t) for t in d["inputs"]]
        d["outputs"] = [TensorSpec.from_json(t) for t in d["outputs"]]
        return cls(**d)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and sanity-check a bundle's manifest; BundleError names what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"bundle '{folder}' does not exist or is not a folder")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"'{folder}' is not an edgec bundle: {MANIFEST} is missing")
    try:
        raw = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"bundle '{folder}': {MANIFEST} is malformed ({e})") from None
    if not marked(raw):
        raise BundleError(f"'{folder}' is not an edgec bundle: its {MANIFEST} is not edgec's")
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"bundle '{folder}': {MANIFEST} is malformed (no integer format_version)")
    if version > BUNDLE_FORMAT_VERSION:
        raise BundleError(
            f"bundle '{folder}' has format version {version}; this edgec ({__version__}) "
            f"reads up to {BUNDLE_FORMAT_VERSION}: upgrade edgec"
        )
    reason = manifest_schema.problem(raw)
    unknown = set(raw) - {f.name for f in fields(Manifest)}
    if reason is None and unknown:
        reason = f"unknown field '{sorted(unknown)[0]}'"
    if reason is not None:
        raise BundleError(f"bundle '{folder}': {MANIFEST} is malformed ({reason})")
    manifest = Manifest.from_json(raw)
    for name in [*manifest.files, *manifest.artifacts.values()]:
        if not _inside(name):
            raise BundleError(
                f"bundle '{folder}': {MANIFEST} names the file '{name}', which is not inside "
                "the bundle"
            )
    return manifest


def _inside(name: object) -> bool:
    """A relative path of the bundle's own: no absolute path, no '..', no backslash."""
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and all(part not in ("", ".", "..") for part in path.parts)


def marked(raw: object) -> bool:
    """Does this parsed manifest carry edgec's format marker? (Bundles written before the
    marker existed are recognised by their edgec version, format version and checksums.)"""
    if not isinstance(raw, dict):
        return False
    if "format" in raw:
        return raw["format"] == FORMAT_MARKER
    return (
        isinstance(raw.get("format_version"), int)
        and isinstance(raw.get("edgec_version"), str)
        and isinstance(raw.get("files"), dict)
        and isinstance(raw.get("artifacts"), dict)
    )


def check_files(folder: Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists exists with its recorded sha256, and that the
    folder holds nothing else: no file added after it was written (a back end could read it
    unchecked, as ONNX external data), no symbolic link, nothing but regular files."""
    for parent, dirs, names in os.walk(folder):
        for name in [*dirs, *names]:
            path = Path(parent, name)
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise BundleError(f"bundle '{folder}': '{rel}' is a symbolic link")
            if name in names and rel != MANIFEST and rel not in manifest.files:
                raise BundleError(
                    f"bundle '{folder}': file '{rel}' is not listed in {MANIFEST} "
                    "(added after the bundle was written)"
                )
            if name in names and not path.is_file():
                raise BundleError(f"bundle '{folder}': '{rel}' is not a regular file")
    for name, digest in manifest.files.items():
        p = folder / name
        if not p.is_file():
            raise BundleError(f"bundle '{folder}': file '{name}' is missing")
        if sha256_file(p) != digest:
            raise BundleError(
                f"bundle '{folder}': checksum mismatch for '{name}' (the file was modified)"
            )
    missing = [  # an artifact is a file, or a folder of files (a Core ML .mlpackage)
        a
        for a in [*manifest.artifacts.values(), REFERENCE]
        if a not in manifest.files and not any(f.startswith(f"{a}/") for f in manifest.files)
    ]
    if missing:
        raise BundleError(f"bundle '{folder}': file '{missing[0]}' has no checksum")


def _flatten(role: str, values: dict[str, Any]) -> dict[str, np.ndarray]:
    """Tensors as `ROLE/NAME`; a sequence as its length `ROLE.seqlen/NAME` and its items
    `ROLE.seq/I/NAME`; an absent optional as `ROLE.none/NAME`. Strings as unicode arrays (an
    object array would need pickle to load)."""
    arrays: dict[str, np.ndarray] = {}

    def plain(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return a.astype(str) if a.dtype == object else a

    for name, value in values.items():
        if value is None:
            arrays[f"{role}.none/{name}"] = np.zeros(0)
        elif isinstance(value, (list, tuple)):
            arrays[f"{role}.seqlen/{name}"] = np.asarray(len(value))
            for i, item in enumerate(value):
                arrays[f"{role}.seq/{i}/{name}"] = plain(item)
        else:
            arrays[f"{role}/{name}"] = plain(value)
    return arrays


def _unflatten(role: str, z: Any) -> dict[str, Any]:
    """The inverse of `_flatten`; KeyError/ValueError when the archive is not one of its."""

    def obj(a: np.ndarray) -> np.ndarray:
        return a.astype(object) if a.dtype.kind == "U" else a

    out: dict[str, Any] = {}
    for key in z.files:
        prefix, _, rest = key.partition("/")
        if prefix == role:
            out[rest] = obj(z[key])
        elif prefix == f"{role}.none":
            out[rest] = None
        elif prefix == f"{role}.seqlen":
            count = z[key]
            if count.shape != () or count.dtype.kind not in "iu" or not 0 <= count < 1 << 16:
                raise ValueError(f"'{key}' is not a sequence length")
            out[rest] = [obj(z[f"{role}.seq/{i}/{rest}"]) for i in range(int(count))]
    return out


def save_reference(folder: Path, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
    arrays = {**_flatten("input", inputs), **_flatten("output", outputs)}
    np.savez(folder / REFERENCE, **arrays)  # type: ignore[arg-type]


def load_reference(bundle: Bundle) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored reference input and output, checked against the manifest's inputs and
    outputs (names, kinds, dtypes, static sizes); BundleError names what does not match.
    Read once: `Bundle.open` reads it with the checksums, so both come from one bundle."""
    if bundle.reference is None:
        bundle.reference = _read_reference(bundle)
    return bundle.reference


def _read_reference(bundle: Bundle) -> tuple[dict[str, Any], dict[str, Any]]:
    path = bundle.path / REFERENCE
    if not zipfile.is_zipfile(path):
        raise BundleError(f"bundle '{bundle.path}': {REFERENCE} is not an npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            inputs, outputs = _unflatten("input", z), _unflatten("output", z)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(f"bundle '{bundle.path}': {REFERENCE} is unreadable ({reason})") from None
    m = bundle.manifest
    return _matching(bundle, "input", inputs, m.inputs), _matching(
        bundle, "output", outputs, m.outputs
    )


def _matching(
    bundle: Bundle, role: str, values: dict[str, Any], specs: list[TensorSpec]
) -> dict[str, Any]:
    names = [s.name for s in specs]
    if sorted(values) != sorted(names):
        raise BundleError(
            f"bundle '{bundle.path}': {REFERENCE} holds the {role}s {sorted(values)}; "
            f"{MANIFEST} declares {sorted(names)}"
        )
    try:
        return {s.name: s.coerce(values[s.name], f"{REFERENCE} {role}") for s in specs}
    except InputError as e:
        raise BundleError(f"bundle '{bundle.path}': {e}") from None


def finalize_manifest(stage: Path, manifest: Manifest) -> None:
    """Record the sha256 of every file in `stage`, then write the manifest last."""
    manifest.files = {
        p.relative_to(stage).as_posix(): sha256_file(p)
        for p in sorted(stage.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (stage / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


def consistent_read(folder: Path, read: Callable[[Path], T], patience_s: float = 30.0) -> T:
    """`read(folder)`, read again if the bundle at `folder` was replaced meanwhile (another
    edgec wrote a new one there; `runtime/staging.py` swaps whole folders), so that what is
    returned comes from one bundle, never half of each. Each swap leaves a whole bundle, so a
    reader only fails if writers keep replacing it for `patience_s` seconds; between tries it
    waits a little longer each time (up to 0.2 s) so that it gets a turn. A file system fault
    (OSError) is a BundleError naming the bundle."""
    deadline = time.monotonic() + patience_s
    tries = 0
    while True:
        tries += 1
        before = _identity(folder)
        try:
            result = read(folder)
        except (EdgecError, OSError) as e:
            if _identity(folder) == before:
                if isinstance(e, OSError):
                    raise BundleError(f"cannot read bundle '{folder}': {e}") from None
                raise
        else:
            if _identity(folder) == before:
                return result
        if time.monotonic() >= deadline:
            raise BundleError(
                f"bundle '{folder}' was replaced while it was read, {tries} times "
                f"in {patience_s:g} s"
            )
        time.sleep(min(0.2, 0.001 * 2 ** min(tries, 8)))


@dataclass
class Bundle:
    """A bundle on disk: its folder and manifest. `Bundle.open(path)` checks the manifest,
    every file's checksum and the reference against the manifest, from one bundle even while
    another edgec replaces it."""

    path: Path
    manifest: Manifest
    reference: tuple[dict[str, Any], dict[str, Any]] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], check: bool = True) -> Bundle:
        return consistent_read(Path(path), lambda folder: cls.read(folder, check))

    @classmethod
    def read(cls, folder: Path, check: bool = True) -> Bundle:
        """`open` without the retry: for a caller that reads more under its own
        `consistent_read` (loading the artifacts too)."""
        bundle = cls(folder, read_manifest(folder))
        if check:
            check_files(folder, bundle.manifest)
            load_reference(bundle)
        return bundle
