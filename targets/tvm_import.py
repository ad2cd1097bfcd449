"""The IR into TVM Relax: TVM's ONNX importer, taught edgec's `ai.edgec` ops for one import.

TVM's importer keeps its converters in a private function (`onnx_frontend._get_convert_map`)
and dispatches on op_type alone. For the duration of an import that function is replaced by
one that adds edgec's converters (`converters()`), and put back on any exit,
exceptions and interrupts included. Because the importer does not look at domains, a node of
another domain that shares a name with an edgec op is refused before the import (it would
otherwise be converted as edgec's). A fault in edgec's own converter is an internal error
(`EdgecConverterError`, exit 1), never "TVM cannot take this model": `--backend auto` must not
quietly drop TVM for a bug of edgec's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import onnx_ir as ir

from edgec.core.binary_ops import DOMAIN, FUSED_ATTENTION
from edgec.core.errors import UnsupportedOpError
from edgec.core.irutil import copy_model
from edgec.passes import lower_attention
from edgec.targets.attention_kernel import convert_attention
from edgec.targets.binary_kernels import CONVERTERS as BINARY_CONVERTERS
from edgec.targets.binary_kernels import clear_kernels


def converters() -> dict[str, Callable[..., Any]]:
    """edgec's converters by op name: the binary ops' and the fused attention's (read at each
    import, so that the tables stay the single place that names them)."""
    return {**BINARY_CONVERTERS, FUSED_ATTENTION: convert_attention}


class EdgecConverterError(RuntimeError):
    """edgec's converter of an ai.edgec op failed inside TVM's importer: a bug of edgec's."""


def _guarded(op_type: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def convert(bb: Any, inputs: list[Any], attr: dict[str, Any]) -> Any:
        try:
            return fn(bb, inputs, attr)
        except Exception as e:
            raise EdgecConverterError(
                f"edgec's TVM converter for {DOMAIN}::{op_type} failed: {type(e).__name__}: {e}"
            ) from e

    return convert


@contextlib.contextmanager
def edgec_converters() -> Iterator[None]:
    """TVM's ONNX importer with edgec's converters added, for the `with` block only."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map

    def converter_class(op_type: str, fn: Callable[..., Any]) -> type:
        convert = _guarded(op_type, fn)

        class Converter(onnx_frontend.OnnxOpConverter):
            @classmethod
            def _impl_v1(cls, bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
                return convert(bb, list(inputs), attr)

        return Converter

    extra = {name: converter_class(name, fn) for name, fn in converters().items()}
    onnx_frontend._get_convert_map = lambda: {**original(), **extra}
    clear_kernels()
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
        clear_kernels()


def _check_domains(model: ir.Model) -> None:
    """An op named like one of edgec's but of another domain cannot go through the importer."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in converters() and node.domain != DOMAIN:
            raise UnsupportedOpError(
                f"unsupported op '{node.domain or 'ai.onnx'}::{node.op_type}' (node "
                f"'{node.name}'): TVM's importer would take it for {DOMAIN}::{node.op_type}"
            )


def lower_for_tvm(
    model: ir.Model, requested: dict[str, str] | None = None
) -> tuple[ir.Model, list[dict[str, Any]]]:
    """A copy of `model` with its attention blocks lowered for TVM (the IR is shared by the
    back ends), and the form chosen per block; `model` itself when it has none.

    Softmax attention becomes edgec's fused template (`attention_kernel`): TVM's own
    attention op legalizes to an unfused form on CPU (shared ATTENTION.md). Linear attention
    takes the cheaper product order; hashed attention the form with fewer multiply-adds,
    the codes' products as popcount kernels for short sequences. `requested` (kind -> form,
    `--attention-form`) overrides the choice where the form exists for the block.
    """
    if not lower_attention.attention_nodes(model):
        return model, []
    model = copy_model(model)
    choose = lower_attention.forced(
        lower_attention.cheapest, requested or {}, lower_attention.tvm_forms
    )
    return model, lower_attention.lower(model, choose)


def import_onnx(model: ir.Model) -> Any:
    """The IR as a Relax module (weights bound as constants).

    TVM's importer reads only the `value` form of Constant (`value_ints` and the like fail with
    "no value in Constant"), so every Constant becomes an initializer first: the same values.
    Attention blocks still in the IR are lowered first (`lower_for_tvm`).
    """
    from onnx_ir.passes import common
    from tvm.relax.frontend.onnx import from_onnx

    model, _ = lower_for_tvm(model)
    _check_domains(model)
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    proto = ir.serde.serialize_model(model)
    try:
        with edgec_converters():
            return from_onnx(proto, keep_params_in_input=False)
    except EdgecConverterError:
        raise
    except Exception as e:  # the importer names the op it could not convert in its message
        cause = e.__cause__ or e.__context__
        if isinstance(cause, EdgecConverterError):
            raise cause from None
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedOpError(f"TVM's ONNX importer cannot take this model: {text}") from None
