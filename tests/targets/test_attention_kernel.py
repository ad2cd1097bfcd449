"""TVM's fused softmax-attention template against NumPy in float64: bias shapes broadcast over
each axis or none, key counts on and off the vector width; and in a compiled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

import torch
import tvm

import edgec
from edgec.targets import attention_kernel as A
from edgec.targets.tvm_targets import host_target
from tests.targets.test_tvm import TinyTransformer

pytestmark = pytest.mark.slow  # TVM kernel builds


def _reference(q, k, v, bias, scale):
    s = np.einsum("bnih,bnjh->bnij", q, k).astype(np.float64) * scale
    if bias is not None:
        s = s + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)


@pytest.mark.parametrize(
    ("b", "n", "s", "t", "h", "hv", "bias"),
    [
        (1, 2, 8, 8, 16, 16, None),
        (2, 3, 7, 11, 8, 5, (1, 3, 7, 11)),  # odd counts, a relative-position bias per head
        (2, 2, 5, 9, 4, 4, (2, 1, 1, 9)),  # a padding mask per batch
        (4, 1, 49, 49, 32, 32, (4, 1, 49, 49)),  # Swin's shift mask per window
        (1, 4, 49, 1, 32, 32, None),  # one key (FMViT's pooled keys): unit loops
        (1, 1, 1, 3, 1, 1, None),
    ],
)
def test_fused_attention_matches_numpy(b, n, s, t, h, hv, bias) -> None:
    rng = np.random.default_rng(s * t)
    q = rng.standard_normal((b, n, s, h)).astype(np.float32)
    k = rng.standard_normal((b, n, t, h)).astype(np.float32)
    v = rng.standard_normal((b, n, t, hv)).astype(np.float32)
    scale = float(h**-0.5)
    func = A.schedule(A.attention_func(b, n, s, t, h, hv, bias, scale))
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(host_target(None, 1)))
    arrays = [q, np.ascontiguousarray(np.swapaxes(k, -1, -2)), v]
    bias_values = None
    if bias is not None:
        bias_values = (rng.standard_normal(bias) * 3).astype(np.float32)
        bias_values[..., 0] = -1e9  # a masked key
        arrays.append(bias_values)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    out = tvm.runtime.tensor(np.zeros((b, n, s, hv), np.float32), dev)
    lib["main"](*args, out)
    want = _reference(q, k, v, bias_values, scale)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6)


def test_tvm_bundles_take_the_fused_template(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bundle = edgec.compile(
        TinyTransformer().eval(),
        target="x86_64",
        backend="tvm",
        output=tmp_path / "b",
        input_shapes=["x=2x16x32"],
    )
    forms = [c["form"] for c in bundle.manifest.backend_options["attention"]]
    assert forms == ["fused", "fused"]
    assert bundle.manifest.reference["max_rel_error"] <= 1e-4  # vs torch eager
