"""Rewrites as onnxscript rewriter rules that say why they did not fire.

A rule is an onnxscript `RewriteRuleClassBase`: `pattern` (the subgraph it looks for), `check`
(a `MatchResult` that fails with a reason a user can read: "BN before a padded Conv with a
nonzero shift: not exact"), `rewrite` (the replacement). edgec's own rules derive from
`Rule`; onnxscript's rules (`onnxscript.rewriter.rules.common`) are used as they are, or
subclassed where edgec checks more.

`RulePass` runs a set of rules as one edgec pass and keeps an `Explanation`: every rewrite that
fired and every candidate left alone, with its nodes (torch module paths where the exporter
named them) and the reason: its `check` failed, or (with `explain` on) the pattern matched part
of the graph and stopped, e.g. at an intermediate value that something else reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter._basics import MatchingTracer, MatchResult, MatchStatus
from onnxscript.rewriter._rewrite_rule import RewriteRule, RewriteRuleClassBase, RewriteRuleSet

from edgec.passes._ir import record_provenance
from edgec.passes.base import Candidate, EdgecPass, candidate


class Rule(RewriteRuleClassBase):
    """An edgec rewrite rule: `pattern`, `check` (returns `self.ok()` or
    `self.fail("why")`), `rewrite`. Its name is the class's `name` (snake case)."""

    name: ClassVar[str | None] = None  # type: ignore[misc]

    def __init__(self) -> None:
        super().__init__(type(self).name or type(self).__name__)

    @staticmethod
    def ok() -> MatchResult:
        return MatchResult()

    @staticmethod
    def fail(reason: str) -> MatchResult:
        return MatchResult().fail(reason)

    @staticmethod
    def unlike(reason: str) -> MatchResult:
        """Fail a check on what a pattern cannot say (the op that made an input): the node was
        never a candidate, so it is reported with the near misses (`--explain`) only."""
        return Unlike().fail(reason)

    @staticmethod
    def skip() -> MatchResult:
        """Fail a check silently: the match is no candidate at all (a commuted variant of a
        pattern that bound the operands the other way round)."""
        return Unlike().fail("")


class Unlike(MatchResult):
    """The result of `Rule.unlike` and `Rule.skip`."""


def constant(op: Any, array: Any, like: ir.Value | None, tag: str, role: str) -> ir.Value:
    """A rule's new float32 initializer, named after the value it replaces (`W_bn`), else
    `tag_role` (`bn_bias`); clashes are resolved when the rewrite is recorded (`_unique`)."""
    name = f"{like.name}_{tag}" if like is not None and like.name else f"{tag}_{role}"
    return op.initializer(ir.tensor(np.array(array, dtype=np.float32, order="C")), name=name)


def recorded_rule(
    rule_class: Callable[[], RewriteRuleClassBase],
    record: Callable[[Candidate], None],
    near_misses: bool = False,
    dry: bool = False,
    on_match: Callable[[str, ir.Node], None] | None = None,
) -> RewriteRule:
    """`rule_class` as a RewriteRule whose check and rewrite also report to `record` (a check
    that fails with `Rule.unlike` only with `near_misses`), and every root its pattern
    matched to `on_match`. A `dry` rule builds no replacement: onnxscript builds one even
    when it only traces, and its nodes, though never inserted, would stay among the uses of
    the values they read."""
    instance = rule_class()
    name = str(instance.name or type(instance).__name__)
    matched: list[Sequence[ir.Node]] = []  # what the last successful check saw
    graphs: list[ir.Graph | ir.Function] = []  # where it saw it

    def check(context: Any, **bindings: Any) -> MatchResult | bool:
        result = instance.check(context, **bindings)
        if on_match is not None:
            on_match(name, context.root)
        if result:
            matched[:] = [list(reversed(context.nodes))]
            graphs[:] = [context.graph_or_function]
        elif not isinstance(result, Unlike) or (near_misses and result.reason):
            reason = result.reason if isinstance(result, MatchResult) else ""
            nodes = list(reversed(context.nodes))  # the matcher walks back from the root
            record(candidate(name, nodes, False, reason or "its check failed"))
        return result

    def rewrite(op: Any, **bindings: Any) -> Any:
        if dry:
            return None
        first, first_initializer = len(op.nodes), len(op.initializers)
        replacement = instance.rewrite(op, **bindings)
        if matched and replacement is not None:
            nodes = matched.pop()
            _name_like(op.nodes[first:], nodes)
            record_provenance(op.nodes[first:], nodes, name)
            _unique(op.initializers[first_initializer:], graphs.pop())
            record(candidate(name, nodes, True))
        return replacement

    return RewriteRule(
        instance.pattern,
        rewrite,
        check,
        name=name,
        remove_nodes=instance.remove_nodes,
        graph_pre_visitor=instance.setup,
        graph_post_visitor=instance.cleanup,
        as_function=instance.as_function,
    )


def _name_like(new: Sequence[ir.Node], matched: Sequence[ir.Node]) -> None:
    """Name a rule's new nodes after the ones they replace, so that module paths survive: a
    new node takes the name of the first matched node of its op type, else the last matched
    node's name with `+op` (a folded Conv stays `blocks.0.conv`, its new Mul is `...+mul`)."""
    names = {n.op_type: n.name for n in reversed(matched) if n.name}
    root = next((n.name for n in reversed(matched) if n.name), "")
    for node in new:
        if node.name:
            continue
        suffixed = f"{root}+{node.op_type.lower()}" if root else None
        node.name = names.pop(node.op_type, None) or suffixed


def _unique(new: Sequence[ir.Value], graph: ir.Graph | ir.Function) -> None:
    """Give a rule's new initializers names no initializer of the graph has: onnxscript
    registers them by name and overwrites one already there, so that two folds that name
    their bias alike (`bn_folded_bias`) would leave one layer reading the other's."""
    taken = set(graph.initializers) if isinstance(graph, ir.Graph) else set()
    for value in new:
        base, n = value.name or "folded", 0
        while value.name is None or value.name in taken:
            n += 1
            value.name = f"{base}_{n}"
        taken.add(value.name)


class _NearMisses(MatchingTracer):
    """Every place a pattern matched two or more nodes and then stopped (the reason is the
    matcher's: an op that differs, a value read outside the pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: dict[tuple[str, int], Candidate] = {}  # by rule and root, the first

    def log(
        self,
        rule: Any,
        container: Any,
        node: ir.Node,
        match_result: MatchResult,
        status: MatchStatus,
    ) -> None:
        if status == MatchStatus.NO_MATCH and len(match_result.nodes) >= 2:
            reason = match_result.reason or "the rest of the pattern does not match"
            nodes = list(reversed(match_result.nodes))
            found = candidate(str(rule.name), nodes, False, reason)
            self.found.setdefault((str(rule.name), id(node)), found)


class RulePass(EdgecPass):
    """An edgec pass made of rewrite rules (subclasses list them in `rules`)."""

    rules: ClassVar[Sequence[Callable[[], RewriteRuleClassBase]]] = ()
    commuted: ClassVar[bool] = False  # also match each pattern with Add/Mul operands swapped

    def rewrite(self, model: ir.Model) -> int:
        return self.apply_rules(model, self.rules)

    def apply_rules(
        self, model: ir.Model, rules: Sequence[Callable[[], RewriteRuleClassBase]]
    ) -> int:
        """Apply `rules` in one walk of the graph; record what fired and what was left alone
        (each candidate once, though commuted variants of a pattern may each see it)."""
        found: list[Candidate] = []
        if self.explain:  # with a tracer, onnxscript only matches: nothing is rewritten
            misses, whole = _NearMisses(), set()

            def matched(rule: str, root: ir.Node) -> None:
                whole.add((rule, id(root)))

            dry = [recorded_rule(r, lambda _: None, dry=True, on_match=matched) for r in rules]
            RewriteRuleSet(dry, commute=self.commuted).apply_to_model(model, tracer=misses)
            # a root that one variant of a rule matched whole is no near miss of another
            found += [c for key, c in misses.found.items() if key not in whole]
        live = [recorded_rule(r, found.append, self.explain) for r in rules]
        read = [v for v in model.graph.initializers.values() if v.uses()]
        fired = RewriteRuleSet(live, commute=self.commuted).apply_to_model(model)
        for value in read:  # the weights the rewrites replaced
            if not (value.uses() or value.is_graph_input() or value.is_graph_output()):
                model.graph.initializers.pop(value.name or "", None)
        self.explained.extend(dict.fromkeys(found))
        return fired
