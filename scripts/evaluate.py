#!/usr/bin/env python
"""Evaluate a trained run: its metrics and a robustness matrix.

    python scripts/evaluate.py RUN_DIR [--split test] [--levels 0 0.1 0.25 0.5 1] [--checkpoint best]

Writes RUN_DIR/eval-<split>/robustness.{csv,md,png} (metric with each subset of modalities removed
at test time, and with noise of growing strength on each modality), prints the Markdown, and logs
the table and heatmap to the run's W&B run. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--levels", type=float, nargs="+", default=None, help="noise strengths (0 = clean)")
    parser.add_argument("--metric", default=None, help="metric for tables and heatmap (default: the run's train.metric)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log to the run's W&B run")
    args = parser.parse_args(argv)

    import torch

    from mm.config import to_dict
    from mm.evaluation import NOISE_LEVELS, load_run, robustness, write_robustness
    from mm.prepare import prepare
    from mm.tracking import Tracker

    cfg, model, classes = load_run(args.run_dir, args.checkpoint)
    job = prepare(cfg, classes, model, torch.device("cpu"), cache=False)
    rows = robustness(model, job.loader(args.split), tuple(args.levels or NOISE_LEVELS), seed=cfg.seed)
    metric = args.metric or cfg.train.metric
    try:
        paths = write_robustness(rows, args.run_dir / f"eval-{args.split}", metric)
    except KeyError as err:
        print(f"error: --metric: {err.args[0]}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())

    if not args.no_wandb and cfg.wandb.mode != "disabled":
        last_step = max((json.loads(x)["step"] for x in (args.run_dir / "metrics.jsonl").read_text().splitlines()), default=0)
        tracker = Tracker(args.run_dir, to_dict(cfg), mode=cfg.wandb.mode, project=cfg.wandb.project,
                          entity=cfg.wandb.entity, group=cfg.wandb.group, name=args.run_dir.name,
                          tags=cfg.wandb.tags, job_type="eval", resume_step=last_step)
        columns = list(rows[0])
        tracker.log_table(f"robustness/{args.split}", columns, [[r[c] for c in columns] for r in rows])
        tracker.log_image(f"robustness/{args.split}_heatmap", paths["png"])
        tracker.finish()
    clean = next(r for r in rows if r["kind"] == "removed" and r["modality"] == "none")
    print(json.dumps({"run_dir": str(args.run_dir), "split": args.split, "metrics": clean,
                      "outputs": {k: str(v) for k, v in paths.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
