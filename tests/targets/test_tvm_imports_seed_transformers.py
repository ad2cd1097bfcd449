"""Every seed transformer imports into TVM Relax after the cpu pipeline (slab_swin_tiny did not:
torch.roll's shift was a Shape expression until the shapes were folded)."""

from __future__ import annotations

import pytest

from edgec import frontend
from edgec.passes import PassManager, get_pipeline
from edgec.passes.cleanup import InferShapes
from edgec.targets.tvm_import import import_onnx

pytestmark = pytest.mark.slow  # five imports


@pytest.mark.parametrize(
    "name",
    ["tiny_vit_5m", "slab_deit_tiny", "slab_swin_tiny", "pvt_v2_b0_ecoformer", "fmvit_tiny"],
)
def test_imports_into_tvm(name: str) -> None:
    model = frontend.prepare(name).model
    InferShapes()(model)
    PassManager(get_pipeline("cpu")).run(model)
    assert "Shape" not in {n.op_type for n in model.graph}
    module = import_onnx(model)
    assert "main" in [gv.name_hint for gv in module.functions]
