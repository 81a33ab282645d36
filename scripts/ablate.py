#!/usr/bin/env python
"""Run an ablation grid and print its table (mean ± std over seeds).

    python scripts/ablate.py GRID.yaml [--out DIR] [--workers N] [--subprocess] [--dry-run]
                             [--sweep FILE] [key=value ...]

Examples:
    python scripts/ablate.py configs/ablations/modalities_fusion.yaml
    python scripts/ablate.py configs/ablations/transfer.yaml --workers 2 wandb.mode=offline
    python scripts/ablate.py configs/ablations/transfer.yaml --sweep sweep.yaml   # then: wandb sweep sweep.yaml

Rerunning the same command after an interruption finishes the grid: cells already done are
skipped. The grid file format and the output folder are described in ``mm/experiments/grids.py``.
Exit status: 0 when every cell finished, 1 when a cell failed, 2 on an invalid grid or config.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mm.config import ConfigError, load_config  # noqa: E402
from mm.experiments.grids import expand, load_grid, run_grid, sweep_config  # noqa: E402


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
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every cell, e.g. train.epochs=1")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the options


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops the grid like Ctrl-C: subprocess cells are terminated too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers < 1:
        print("error: --workers must be >= 1", file=sys.stderr)
        return 2
    try:
        grid = load_grid(args.grid, args.overrides)
        out = args.out or Path("runs") / "ablations" / grid.name
        cells = expand(grid, out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metric = grid.metric or cells[0].cfg.train.metric

    if args.sweep:
        base = load_config(grid.base, grid.overrides)
        text = yaml.safe_dump(sweep_config(grid, metric, base.train.metric_mode), sort_keys=False)
        args.sweep.write_text(f"# wandb sweep {args.sweep}   (from the repo root; then wandb agent <sweep id>)\n{text}")
        print(f"wrote {args.sweep}: {len(cells)} runs")
        return 0
    if args.dry_run:
        for i, cell in enumerate(cells, 1):
            print(f"{i}/{len(cells)} {cell.name}")
        return 0

    if __name__ == "__main__":
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_grid(grid, cells, out, workers=args.workers, use_subprocess=args.subprocess or args.workers > 1)
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to finish the grid ({out / 'state.json'})", file=sys.stderr)
        return 130
    print()
    print(result.summary)
    print(f"{out}: results.csv, summary.md, summary.png; {len(result.rows)}/{len(cells)} cells done")
    if result.failed:
        print(f"failed ({len(result.failed)}), rerun the same command to retry: {', '.join(result.failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
