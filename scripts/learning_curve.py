#!/usr/bin/env python
"""Run a learning curve: train and val error against trainable parameters or training set size.

    python scripts/learning_curve.py CURVE.yaml [--out DIR] [--seeds 0 1 2] [--only NAME ...] [--dry-run]
        [key=value ...]

Examples:
    python scripts/learning_curve.py configs/curves/capacity.yaml
    python scripts/learning_curve.py configs/curves/data.yaml --seeds 0 1 2 wandb.mode=offline

Writes results.csv (one row per run), summary.csv and summary.md (mean ± std over seeds) and
curve.png into DIR (default: runs/curves/<curve name>), and logs them to a W&B summary run.
Rerunning the same command after an interruption finishes the curve: finished runs are skipped.
The curve file format is described in ``mm/experiments/curves.py``. Exit status: 0 when every
run finished, 1 when a run failed, 2 on an invalid curve file or config.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from mm.config import ConfigError
from mm.experiments.curves import expand, load_curve, run_curve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run a learning curve (mm). Dotted key=value overrides apply to every run.",
        epilog="Curve file format: see mm/experiments/curves.py.",
    )
    parser.add_argument("curve", help="curve YAML file, e.g. configs/curves/capacity.yaml")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/curves/<curve name>)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds per point (default: the file's 'seeds')")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="run only these points (a shots curve's trained methods; frozen ones always run)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. train.max_steps=10")
    argv = sys.argv[1:] if argv is None else argv
    # key=value words are overrides wherever they stand, also right after --seeds 0 1 2 or --only a b.
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = parser.parse_args([a for a in argv if a not in overrides])
    args.overrides += overrides
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops the curve like Ctrl-C


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        curve = load_curve(args.curve, args.overrides, seeds=args.seeds, only=args.only)
        out = args.out or Path("runs") / "curves" / curve.name
        cells = expand(curve, out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for i, cell in enumerate(cells, 1):
            print(f"{i}/{len(cells)} {cell.name}")
        return 0

    if __name__ == "__main__":
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_curve(curve, cells, out)
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to finish the curve ({out / 'state.json'})", file=sys.stderr)
        return 130
    print()
    print(result["markdown"])
    print(f"{out}: results.csv, summary.csv, summary.md, curve.png; {len(result['rows'])}/{len(cells)} runs done")
    if result["failed"]:
        print(f"failed ({len(result['failed'])}), rerun the same command to retry: {', '.join(result['failed'])}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
