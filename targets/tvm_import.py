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

import collections
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


SOURCE_PREFIX = "edgec_n"  # a binding named edgec_n12 computes (part of) node 12 of the graph


def _naming(converter: type, names: list[str]) -> type:
    """`converter` whose result, and every binding it emits, is named after the node it
    converts (`SOURCE_PREFIX` + the node's index in `names`), so that after fusion each kernel
    can say which nodes it holds (`kernel_sources`)."""
    from tvm import relax

    class Named(converter):  # type: ignore[misc, valid-type]
        @classmethod
        def get_converter(cls, opset: int) -> Callable[..., Any]:
            convert = converter.get_converter(opset)

            def run(bb: Any, inputs: Any, attr: dict[str, Any], params: Any) -> Any:
                names.append(str(attr.get("tvm_custom", {}).get("name", "")))
                hint = f"{SOURCE_PREFIX}{len(names) - 1}"
                emit = bb.emit
                bb.emit = lambda expr, name_hint="": emit(expr, name_hint or hint)
                try:
                    result = convert(bb, inputs, attr, params)
                finally:
                    del bb.emit
                if isinstance(result, relax.Call):
                    result = emit(result, hint)
                return result

            return run

    return Named


@contextlib.contextmanager
def edgec_converters(names: list[str] | None = None) -> Iterator[None]:
    """TVM's ONNX importer with edgec's converters added, for the `with` block only; with
    `names`, every converter names its bindings after its node (`_naming`), and `names`
    receives the node names by index."""
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

    table = {**original(), **extra}  # the importer asks for it once per node: built once
    if names is not None:
        table = {op: _naming(cls, names) for op, cls in table.items()}

    def convert_map() -> dict[str, type]:
        return table

    onnx_frontend._get_convert_map = convert_map
    clear_kernels()
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original
        clear_kernels()


def _source_index(name: str) -> int | None:
    tail = name[len(SOURCE_PREFIX) :]
    return int(tail) if name.startswith(SOURCE_PREFIX) and tail.isdigit() else None


def _bindings(fn: Any) -> list[Any]:
    return [b for block in getattr(fn.body, "blocks", []) for b in block.bindings]


def _callee(value: Any) -> str:
    """The name of the function a binding calls: call_tir's PrimFunc, or a Relax function."""
    from tvm import relax

    if not isinstance(value, relax.Call):
        return ""
    callee = value.args[0] if getattr(value.op, "name", "") == "relax.call_tir" else value.op
    return str(callee.name_hint) if isinstance(callee, relax.GlobalVar) else ""


def last_source(mod: Any) -> int | None:
    """The highest source index `main` binds as imported (before passes rename the output)."""
    found = [_source_index(str(b.var.name)) for b in _bindings(mod["main"])]
    return max((i for i in found if i is not None), default=None)


def binding_owners(mod: Any, last: int | None) -> list[tuple[str, int | None]]:
    """Before fusion: `main`'s calls in order, each with the source node index it computes. A
    binding the importer left unnamed (an operand a converter built, an op a legalization
    added) belongs to the next named one, which consumes it; a trailing one (the graph's
    outputs, renamed `gv` by binding canonicalization) to `last` (`last_source`)."""
    calls: list[tuple[str, int | None]] = []
    pending: list[int] = []
    for binding in _bindings(mod["main"]):
        callee = _callee(binding.value)
        index = _source_index(str(binding.var.name))
        if callee:
            calls.append((callee, index))
            if index is None:
                pending.append(len(calls) - 1)
        if index is not None:
            for p in pending:
                calls[p] = (calls[p][0], index)
            pending = []
    for p in pending:
        calls[p] = (calls[p][0], last)
    return calls


def kernel_sources(mod: Any, before: list[tuple[str, int | None]]) -> list[dict[str, Any]]:
    """After FuseOps (before FuseTIR): the kernels `main` calls, in call order, each with the
    indices of the source nodes it computes. Fusion renames the bindings it moves, so each
    call inside a fused function is matched to the earliest unmatched call of the same
    PrimFunc before fusion (`binding_owners`): fusion keeps the calls' order."""
    from tvm import relax

    queues: dict[str, collections.deque[int | None]] = collections.defaultdict(collections.deque)
    for name, index in before:
        queues[name].append(index)

    def owner(callee: str) -> int | None:
        queue = queues.get(callee)
        return queue.popleft() if queue else None

    kernels: list[dict[str, Any]] = []
    for binding in _bindings(mod["main"]):
        callee = _callee(binding.value)
        if not callee:
            continue
        fn = mod[callee]
        inner = [_callee(b.value) for b in _bindings(fn)] if isinstance(fn, relax.Function) else []
        found: list[int] = []
        for name in inner or [callee]:
            index = owner(name)
            if index is not None and index not in found:
                found.append(index)
        kernels.append({"kernel": callee, "nodes": sorted(found)})
    return kernels


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


def import_onnx(model: ir.Model, names: list[str] | None = None) -> Any:
    """The IR as a Relax module (weights bound as constants).

    TVM's importer reads only the `value` form of Constant (`value_ints` and the like fail with
    "no value in Constant"), so every Constant becomes an initializer first: the same values.
    Attention blocks still in the IR are lowered first (`lower_for_tvm`). With `names`, the
    bindings are named after their source nodes, whose names `names` receives (`_naming`).
    """
    from onnx_ir.passes import common
    from tvm.relax.frontend.onnx import from_onnx

    model, _ = lower_for_tvm(model)
    _check_domains(model)
    common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    proto = ir.serde.serialize_model(model)
    try:
        with edgec_converters(names):
            return from_onnx(proto, keep_params_in_input=False)
    except EdgecConverterError:
        raise
    except Exception as e:  # the importer names the op it could not convert in its message
        cause = e.__cause__ or e.__context__
        if isinstance(cause, EdgecConverterError):
            raise cause from None
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedOpError(f"TVM's ONNX importer cannot take this model: {text}") from None
