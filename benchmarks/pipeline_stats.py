"""What the cpu pipeline makes of every built-in model: nodes, parameters, MACs, the op
histogram and each pass's rewrite count. No timing: the figures are exact, so two runs (before
and after a change to the passes) must agree to the last op, and `--compare` says where not.

    python benchmarks/pipeline_stats.py [--models a,b] [--out benchmarks/results]
    python benchmarks/pipeline_stats.py --compare OLD.json NEW.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import write_results  # the script's own folder

from edgec import frontend, models
from edgec.core.graph_stats import graph_stats
from edgec.passes import PassManager, get_pipeline
from edgec.passes.cleanup import InferShapes


def stats(name: str) -> dict[str, Any]:
    model = frontend.load(name)
    InferShapes()(model)
    reports = PassManager(get_pipeline("cpu")).run(model)
    after = graph_stats(model)
    rewrites: dict[str, int] = {}
    for r in reports:
        rewrites[r.name] = rewrites.get(r.name, 0) + r.rewrites
    return {
        "nodes": after.nodes,
        "parameters": after.parameters,
        "macs": after.macs,
        "ops": dict(sorted(after.ops.items())),
        "rewrites": rewrites,
    }


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per model and figure that differs."""
    lines = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            lines.append(f"{name}: only in {'new' if a is None else 'old'}")
            continue
        lines += [f"{name}: {key} {a[key]} -> {b[key]}" for key in a if a[key] != b.get(key)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(models.list_models()))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        old, new = (json.loads(p.read_text()) for p in args.compare)
        differences = compare(old, new)
        print("\n".join(differences) or f"identical ({len(new)} models)")
        sys.exit(1 if differences else 0)
    data = {name: stats(name) for name in args.models.split(",")}
    rows = [
        [name, str(d["nodes"]), f"{d['parameters']:,}", f"{d['macs'] / 1e9:.2f}"]
        for name, d in data.items()
    ]
    header = ["model", "nodes", "parameters", "GMACs"]
    print(write_results(args.out, "pipeline_stats", data, header, rows))


if __name__ == "__main__":
    main()
