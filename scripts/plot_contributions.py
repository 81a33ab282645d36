#!/usr/bin/env python
"""Several runs' modality contributions side by side (the split's mean exact Shapley values and
pairwise interactions, in log-odds of the predicted class), from what ``scripts/evaluate.py`` wrote.

    python scripts/plot_contributions.py RUN [RUN ...] --out docs/explain_contributions.png [--split test]

Each run is one group of bars, named by its folder; every run must have the same modalities.
Prints the Markdown table of the plotted rows (with the per-modality shares of mean |value|).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    tables = []
    for run in args.runs:
        path = run / f"eval-{args.split}" / "contributions.json"
        if not path.is_file():
            print(f"error: {path} is missing: run scripts/evaluate.py {run} first", file=sys.stderr)
            return 2
        tables.append(json.loads(path.read_text()))
    mods = tables[0]["modalities"]
    if any(t["modalities"] != mods for t in tables):
        print(f"error: the runs have different modalities: {[t['modalities'] for t in tables]}", file=sys.stderr)
        return 2
    from mm.explain.contributions import markdown, plot

    pairs = [k.split("/", 1)[1] for k in tables[0]["rows"][0] if k.startswith("logodds/") and ":" in k]
    rows = [{**t["rows"][0], "group": run.name} for run, t in zip(args.runs, tables, strict=True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, mods, pairs, args.out, title="exact modality Shapley values (test mean, log-odds of the predicted class)")
    print(markdown(rows, mods, pairs))
    cols = [*mods, *pairs]
    print("| run | " + " | ".join(f"share {c}" for c in cols) + " |\n|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['group']} | " + " | ".join(f"{r[f'share/{c}']:.2f}" for c in cols) + " |")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
