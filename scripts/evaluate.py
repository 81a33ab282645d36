#!/usr/bin/env python
"""Evaluate a trained run: its metrics and a robustness matrix.

    python scripts/evaluate.py RUN_DIR [--split test] [--levels 0 0.1 0.25 0.5 1] [--checkpoint best] [--calibrate]

Writes RUN_DIR/eval-<split>/robustness.{csv,md,png} (metric with each subset of modalities removed
at test time, and with noise of growing strength on each modality), prints the Markdown, and logs
the table and heatmap to the run's W&B run. With ``--calibrate`` (classification), also fits
temperature scaling on val and reports ECE, NLL and accuracy on test before and after it
(RUN_DIR/report/calibration.json and test_reliability_calibrated.png). A classification run also
gets its modality contributions: exact per-sample Shapley values of each modality and pairwise
interactions (``mm.explain``: all 2^M coalitions, not sampled), averaged per class and over the split,
in RUN_DIR/eval-<split>/contributions.{csv,md,json,png} and W&B. The last stdout line is a
JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mm.config import Config
    from mm.model import MultimodalModel
    from mm.prepare import Prepared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from mm.artifacts import run_argument  # a run folder, or a W&B model artifact downloaded
    parser.add_argument("run_dir", type=run_argument, help="run folder or artifact:[entity/]project/name:alias")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--levels", type=float, nargs="+", default=None, help="noise strengths (0 = clean)")
    parser.add_argument("--metric", default=None, help="metric for tables and heatmap (default: the run's train.metric)")
    parser.add_argument("--no-wandb", action="store_true", help="do not log to the run's W&B run")
    parser.add_argument("--no-contributions", action="store_true", help="skip the modality Shapley values")
    parser.add_argument("--calibrate", action="store_true",
                        help="classification: fit temperature scaling on val, report test ECE/NLL/accuracy before and after")
    args = parser.parse_args(argv)

    import torch

    from mm.analysis.evaluation import NOISE_LEVELS, load_run, log_robustness, robustness, write_robustness
    from mm.config import to_dict
    from mm.prepare import prepare
    from mm.tracking import Tracker

    cfg, model, classes = load_run(args.run_dir, args.checkpoint)
    if args.calibrate and cfg.head.name != "classification":
        print(f"error: --calibrate needs a classification run, this one has head.name={cfg.head.name}", file=sys.stderr)
        return 2
    job = prepare(cfg, classes, model, torch.device("cpu"), cache=False)
    rows = robustness(model, job.loader(args.split), tuple(args.levels or NOISE_LEVELS), seed=cfg.seed)
    metric = args.metric or cfg.train.metric
    try:
        paths = write_robustness(rows, args.run_dir / f"eval-{args.split}", metric)
    except KeyError as err:
        print(f"error: --metric: {err.args[0]}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    contributions = None
    if cfg.head.name == "classification" and not args.no_contributions:
        from mm.explain.contributions import split_shapley, write_contributions

        contributions = split_shapley(model, job.loader(args.split))
        contribution_paths = write_contributions(contributions, classes, args.run_dir / f"eval-{args.split}",
                                                 title=f"{args.run_dir.name} ({args.split})")
        print(contribution_paths["md"].read_text())
        paths |= {f"contributions_{k}": v for k, v in contribution_paths.items()}

    if not args.no_wandb and cfg.wandb.mode != "disabled":
        last_step = max((json.loads(x)["step"] for x in (args.run_dir / "metrics.jsonl").read_text().splitlines()), default=0)
        tracker = Tracker(args.run_dir, to_dict(cfg), mode=cfg.wandb.mode, project=cfg.wandb.project,
                          entity=cfg.wandb.entity, group=cfg.wandb.group, name=args.run_dir.name,
                          tags=cfg.wandb.tags, job_type="eval", resume_step=last_step)
        columns = list(rows[0])
        tracker.log_table(f"robustness/{args.split}", columns, [[r[c] for c in columns] for r in rows])
        tracker.log_image(f"robustness/{args.split}_heatmap", paths["png"])
        log_robustness(tracker, rows, args.split, metric)  # native W&B charts
        if contributions is not None:
            from mm.explain.contributions import log_contributions

            log_contributions(tracker, contributions, classes, contribution_paths, args.split)
        tracker.finish()
    calibration = calibrate(model, job, cfg, args.run_dir / "report") if args.calibrate else None
    clean = next(r for r in rows if r["kind"] == "removed" and r["modality"] == "none")
    print(json.dumps({"run_dir": str(args.run_dir), "split": args.split, "metrics": clean,
                      "outputs": {k: str(v) for k, v in paths.items()},
                      **({"calibration": calibration} if calibration else {})}))
    return 0


def calibrate(model: MultimodalModel, job: Prepared, cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Temperature scaling fitted on val, reported on test (``mm.analysis.reports.write_calibration``); prints a table."""
    import torch

    from mm.analysis.evaluation import evaluate
    from mm.analysis.reports import predictions, write_calibration

    sets = {}
    for split in ("val", "test"):
        outputs: dict[str, list] = {}
        evaluate(model, job.loader(split), torch.device("cpu"), cfg.train.precision, outputs)
        sets[split] = predictions(model.head, cfg.head.name, outputs, job.classes)
    result = write_calibration(sets["val"], sets["test"], out_dir)
    test = result["test"]
    print(f"temperature scaling: T = {result['temperature']:.4f} (fitted on {result['fitted_on']['n']} val examples)")
    print(f"| test ({test['n']}) | ECE ({result['bins']} bins) | NLL | accuracy |\n|---|---|---|---|")
    for when in ("before", "after"):
        print(f"| {when} | {test[when]['ece']:.4f} | {test[when]['nll']:.4f} | {test[when]['accuracy']:.4f} |")
    print(f"written: {out_dir / 'calibration.json'}, {out_dir / 'test_reliability_calibrated.png'}\n")
    return result


if __name__ == "__main__":
    sys.exit(main())
