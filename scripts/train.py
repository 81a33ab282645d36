#!/usr/bin/env python
"""Train a multimodal model.

    python scripts/train.py [--config FILE] [--modalities text,image] [run options] [key=value ...]

Run options (how to run, not what: never part of the experiment config):
    --out-dir DIR          where run folders go (default runs)
    --resume [RUN_DIR]     continue RUN_DIR (its config.yaml is reused), or the run this command names
    --auto-resume          continue out-dir/name if it holds a checkpoint, else start it there (needs name=...)
    --allow-changes K,...  config keys a resume may change
    --no-progress          no progress bar
    --no-plots             no confusion-matrix picture at the end

Examples:
    python scripts/train.py --modalities text,image
    python scripts/train.py --config configs/hub_gpu.yaml train.epochs=5 optim.lr=3e-4
    python scripts/train.py --resume runs/color_animal-image+text-concat-s0
    python scripts/train.py --auto-resume name=job42 ...   # a requeued job: resume job42 if it has a checkpoint

    torchrun --standalone --nproc_per_node=4 scripts/train.py --config configs/hub_gpu.yaml

The last line printed on stdout is a one-line JSON summary (run_dir, val and test metrics); a run
that has finished already prints its summary again and changes nothing.
Exit status: 0 done (or finished before); 1 training diverged (non-finite losses or gradients); 2
invalid config, data or checkpoint, or the run folder in use by another process; 128 + signal (143
SIGTERM, 130 SIGINT, 138 SIGUSR1) stopped by a signal after saving a checkpoint (continue with
--resume RUN_DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mm.config import ConfigError, load_config, to_dict
from mm.run.options import RunOptions, check_allowed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a multimodal model (mm). Dotted key=value overrides follow the options.",
        epilog="Config keys: see the README's config reference or mm/config.py.",
    )
    parser.add_argument("--config", help="YAML experiment file (defaults apply to missing keys)")
    parser.add_argument("--modalities", help="comma-separated subset of text,image,audio (sets data.modalities)")
    parser.add_argument("--out-dir", default="runs", metavar="DIR", help="where run folders go (default: runs)")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                        help="continue from the last checkpoint: of RUN_DIR (its config.yaml is reused), "
                             "or of the run this command would otherwise start")
    parser.add_argument("--auto-resume", action="store_true",
                        help="continue OUT_DIR/name if it holds a checkpoint, else start it there; a finished run is "
                             "reported as finished (needs name=...; what a requeued cluster job runs)")
    parser.add_argument("--allow-changes", default="", metavar="KEY,...",
                        help="config keys a resume may change, e.g. optim.lr,train.max_steps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--no-plots", action="store_true", help="no confusion-matrix picture at the end")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 train.epochs=5")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides, config, out_dir = list(args.overrides), args.config, args.out_dir
    if isinstance(args.resume, str):
        run_dir = Path(args.resume)
        config = config or str(run_dir / "config.yaml")
        overrides.append(f"name={run_dir.name}")
        out_dir = str(run_dir.parent)
    if args.modalities:
        overrides.append(f"data.modalities=[{args.modalities}]")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.auto_resume and not cfg.name:
        print("error: --auto-resume needs a fixed run name (name=...)", file=sys.stderr)
        return 2
    opts = RunOptions(out_dir=out_dir, resume=bool(args.resume), auto_resume=args.auto_resume,
                      allow_changes=tuple(k for k in args.allow_changes.split(",") if k),
                      progress=not args.no_progress, plots=not args.no_plots)
    try:
        check_allowed(opts.allow_changes, to_dict(cfg))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from mm.data.errors import ManifestError
    from mm.run.checkpoint import CheckpointError
    from mm.run.folder import RunLocked
    from mm.run.preemption import Preempted
    from mm.run.resume import ResumeError
    from mm.train import NonFiniteError, train

    try:
        results = train(cfg, opts)
    except Preempted as stop:  # checkpoint saved: exit 128 + signal (143 for SIGTERM), --resume continues
        print(stop, file=sys.stderr)
        return stop.exit_code
    except (ManifestError, ResumeError, CheckpointError, RunLocked, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"error: training diverged: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports the job
        return 0
    summary = {"run_dir": results["run_dir"], "best_step": results["best_step"],
               "val": results["val"], "test": results["test"], "wall_time_s": results["wall_time_s"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
