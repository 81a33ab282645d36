"""Train one cell of a grid or curve in its own interpreter: ``python -m mm.experiments.cell``.

    python -m mm.experiments.cell --config CELL.yaml [--out-dir DIR] [--no-progress] [--no-plots] [key=value ...]

The runner writes each subprocess cell's resolved config to a file and starts this module on it
(``mm.experiments.runner.run_subprocess``); it trains the config with ``mm.train.train``, as
``scripts/train.py`` does, and prints the same one-line JSON summary (run_dir, val and test
metrics) as its last line. Exit status: 0 when trained, 2 on an invalid config.
"""

from __future__ import annotations

import argparse
import json
import sys

from mm.config import ConfigError, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mm.experiments.cell",
                                     description="Train one config of a grid or curve (mm).")
    parser.add_argument("--config", required=True, help="the cell's YAML config (defaults apply to missing keys)")
    parser.add_argument("--out-dir", default="runs", help="where the run folder goes (default: runs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="no confusion-matrix picture")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=2")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Trains the config named on the command line; returns the exit status."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import mm.train as mm_train
    from mm.run.options import RunOptions

    opts = RunOptions(out_dir=args.out_dir, progress=not args.no_progress, plots=not args.no_plots)
    results = mm_train.train(cfg, opts)
    summary = {"run_dir": results["run_dir"], "best_step": results["best_step"],
               "val": results["val"], "test": results["test"], "wall_time_s": results["wall_time_s"]}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
