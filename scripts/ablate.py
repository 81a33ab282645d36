#!/usr/bin/env python
"""Run an ablation grid and print its table (mean ± std over seeds).

    python scripts/ablate.py GRID.yaml [--out DIR] [--workers N] [--subprocess] [--dry-run]
                             [--shard I/N | --report] [--sweep FILE] [key=value ...]

Examples:
    python scripts/ablate.py configs/ablations/modalities_fusion.yaml
    python scripts/ablate.py configs/ablations/transfer.yaml --workers 2 wandb.mode=offline
    python scripts/ablate.py configs/ablations/transfer.yaml --sweep sweep.yaml   # then: wandb sweep sweep.yaml
    python scripts/ablate.py configs/ablations/transfer.yaml --shard 0/4   # ... up to --shard 3/4, anywhere
    python scripts/ablate.py configs/ablations/transfer.yaml --report      # the tables of all shards

Rerunning the same command after an interruption finishes the grid (or the shard): cells already
done are skipped. Shards of one grid may run at the same time, on machines that share the output
folder; each writes its partial tables to ``<out>/shards/<I>-of-<N>/``, and ``--report`` (which
trains nothing) writes the grid's from what all of them recorded. The grid file format and the
output folder are described in ``mm/experiments/grids.py``.
Exit status: 0 when every cell (of the shard) finished, 1 when a cell failed or, with --report,
a cell has no result yet; 2 on an invalid grid, config or --shard.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

import yaml

from mm.config import ConfigError, load_config
from mm.experiments.grids import (
    Shard,
    expand,
    grid_state,
    load_grid,
    report_grid,
    run_grid,
    sweep_config,
)
from mm.experiments.spec import Cell, Grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run an ablation grid (mm). Dotted key=value overrides apply to every cell.",
        epilog="Grid file format: see mm/experiments/grids.py.",
    )
    parser.add_argument("grid", help="grid YAML file, e.g. configs/ablations/modalities_fusion.yaml")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/ablations/<grid name>)")
    parser.add_argument("--workers", type=int, default=1, help="cells run in parallel, as subprocesses")
    parser.add_argument("--subprocess", action="store_true", help="run each cell as python -m mm.experiments.cell")
    parser.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    parser.add_argument("--sweep", type=Path, metavar="FILE", help="write the grid as a W&B sweep YAML and exit")
    parser.add_argument("--shard", metavar="I/N", help="run only the cells whose 0-based index modulo N is I "
                        "(e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); shards may run at the same time")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the grid's tables from what all shards recorded, list missing cells")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every cell, e.g. train.epochs=1")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops the grid like Ctrl-C: subprocess cells are terminated too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    if args.shard is not None and args.report:
        print("error: --report reads every shard; run it without --shard", file=sys.stderr)
        return 2
    try:
        shard = Shard.parse(args.shard) if args.shard is not None else None
        grid = load_grid(args.grid, args.overrides)
        out = args.out or Path("runs") / "ablations" / grid.name
        cells = expand(grid, out)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metric = grid.metric or cells[0].cfg.train.metric

    if args.sweep:
        base = load_config(grid.base, grid.overrides)
        sweep = sweep_config(grid, metric, base.train.metric_mode, base.wandb.project, base.wandb.entity)
        text = yaml.safe_dump(sweep, sort_keys=False)
        args.sweep.write_text(f"# wandb sweep {args.sweep}   (from the repo root; then wandb agent <sweep id>)\n{text}")
        print(f"wrote {args.sweep}: {len(cells)} runs")
        return 0
    if args.dry_run:
        mine = {c.name for c in (shard.select(cells) if shard else cells)}
        for i, cell in enumerate(cells, 1):
            if cell.name in mine:
                print(f"{i}/{len(cells)} {cell.name}")
        return 0
    if args.report:
        return report(grid, cells, out)

    if __name__ == "__main__":
        signal.signal(signal.SIGTERM, _interrupt)
    if shard and shard.count == 1:
        shard = None  # one shard of one is the whole grid
    if shard and not shard.select(cells):
        print(f"shard {args.shard}: no cells (the grid has {len(cells)})")
        return 0
    folder = shard.folder(out) if shard else out
    try:
        result = run_grid(grid, cells, out, workers=args.workers, use_subprocess=args.subprocess or args.workers > 1,
                          shard=shard)
    except KeyboardInterrupt:
        what = f"shard {args.shard}" if shard else "the grid"
        print(f"interrupted: rerun the same command to finish {what} ({folder / 'state.json'})", file=sys.stderr)
        return 130
    print()
    print(result.summary)
    print(f"{folder}: results.csv, summary.md, summary.png; {len(result.rows)}/{len(result.cells)} cells done")
    if shard:
        done = sum(entry["status"] == "done" for entry in grid_state(cells, out).values())
        command = shlex.join(["python", "scripts/ablate.py", args.grid, "--out", str(out), *args.overrides, "--report"])
        print(f"shard {args.shard}; the whole grid: {done}/{len(cells)} cells done, its tables: {command}")
    if result.failed:
        print(f"failed ({len(result.failed)}), rerun the same command to retry: {', '.join(result.failed)}",
              file=sys.stderr)
        return 1
    return 0


def report(grid: Grid, cells: list[Cell], out: Path) -> int:
    """``--report``: the grid's tables from every shard's records; 1 while a cell has no result."""
    if not out.is_dir():
        print(f"error: no grid folder {out} (pass the --out the shards used)", file=sys.stderr)
        return 2
    result = report_grid(grid, cells, out)
    print(result.summary)
    print(f"{out}: results.csv, summary.md, summary.png; {len(result.rows)}/{len(cells)} cells done")
    if result.missing:
        print(f"missing ({len(result.missing)}):", file=sys.stderr)
        for name in result.missing:
            entry = result.state[name]
            error = f": {entry['error']}" if entry.get("error") else ""
            print(f"  {name} ({entry['status']}{error})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
