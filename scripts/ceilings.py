"""Prints the synthetic benchmark's ceilings per task and modality subset.

Each task's ceiling is in its own metric, named beside it: accuracy (classification), exact match
(multilabel), R^2 (regression) or entity F1 (token tagging).

    python scripts/ceilings.py                 # plain table of the analytic ceilings
    python scripts/ceilings.py --markdown      # the same as a Markdown table
    python scripts/ceilings.py --check         # also generate data and show measured ceilings

With ``--check`` each cell reads ``analytic / measured``, measured on the training split.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mm.data.synthetic import (
    CEILING_METRIC,
    TASKS,
    ceiling,
    empirical_ceiling,
    generate,
    modality_subsets,
    subset_key,
)


def format_table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    """Renders rows as a Markdown table or as plain aligned columns."""
    if markdown:
        lines = [header, ["---"] * len(header), *rows]
        return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--check", action="store_true", help="generate data and print measured ceilings too")
    parser.add_argument("--root", type=Path, help="with --check: generate here instead of a temp folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=2000)
    args = parser.parse_args(argv)

    rows_data = None
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            root = args.root or Path(tmp)
            start = time.perf_counter()
            generate(root, seed=args.seed, n_train=args.n_train, n_val=0, n_test=0)
            seconds = time.perf_counter() - start
            rows_data = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
        print(f"generated {len(rows_data)} samples in {seconds:.1f} s; cells: analytic / measured\n")

    subsets = modality_subsets()
    header = ["task", *(subset_key(s) for s in subsets)]
    table = []
    for task in TASKS:
        cells = [f"{task} ({CEILING_METRIC[TASKS[task].kind]})"]
        for subset in subsets:
            cell = f"{ceiling(task, subset):.3f}"
            if rows_data is not None:
                cell += f" / {empirical_ceiling(rows_data, task, subset):.3f}"
            cells.append(cell)
        table.append(cells)
    print(format_table(header, table, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
