"""Row (e): evaluation and prediction throughput on a trained run of the text job.

Contenders, interleaved, each over the same test split:
- ``hand``: a hand-written ``torch.inference_mode`` loop over the run's model and mm's test batches
  (the reference: the model's own inference speed);
- ``evaluate_fn``: ``mm.analysis.evaluation.evaluate`` in-process on the same loader (metrics included);
- ``evaluate_cli``: ``python scripts/evaluate.py RUN --levels 0 --no-wandb`` (a new process: imports,
  loading the run, the clean and modality-removed evaluations, the robustness table);
- ``predict_cli``: ``python scripts/predict.py RUN --input test.jsonl --output ...``.
Samples/s is test samples over wall time, so the command-line rows include process start-up, the
cost a grid pays per call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import ROOT, interleave, ratios, row


def measure(run_dir: Path, test_manifest: Path, reps: int) -> dict[str, list[dict[str, float]]]:
    from mm.analysis.evaluation import evaluate, load_run
    from mm.prepare import prepare

    cfg, model, classes = load_run(run_dir)
    job = prepare(cfg, classes, model, torch.device("cpu"), cache=False)
    n = len(job.splits["test"])
    env = {**os.environ, "WANDB_MODE": "disabled"}

    def hand(rep: int) -> dict[str, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in job.loader("test"):
                model(batch).argmax(-1)
        return {"samples_per_s": n / (time.perf_counter() - start)}

    def evaluate_fn(rep: int) -> dict[str, float]:
        start = time.perf_counter()
        evaluate(model, job.loader("test"), torch.device("cpu"), cfg.train.precision)
        return {"samples_per_s": n / (time.perf_counter() - start)}

    def cli(args: list[str]):
        def measure(rep: int) -> dict[str, float]:
            start = time.perf_counter()
            subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True, capture_output=True)
            return {"samples_per_s": n / (time.perf_counter() - start)}
        return measure

    out = run_dir / "bench-predictions.jsonl"
    model.eval()
    return interleave({"hand": hand, "evaluate_fn": evaluate_fn,
                       "evaluate_cli": cli(["scripts/evaluate.py", str(run_dir), "--levels", "0", "--no-wandb"]),
                       "predict_cli": cli(["scripts/predict.py", str(run_dir), "--input", str(test_manifest),
                                           "--output", str(out)])}, reps)


def eval_row(results: dict[str, list[dict[str, float]]], command: str, settings: dict[str, Any]) -> dict[str, Any]:
    return row("eval_predict", command, results,
               {f"{k} / hand-written inference": ratios(results, "samples_per_s", k, "hand")
                for k in ("evaluate_fn", "evaluate_cli", "predict_cli")}, settings,
               notes="test split of the text job; command-line rows include process start-up and model loading")
