"""What a run leaves behind: its tracker (rank 0 logs the job, the other ranks are silent), the best
checkpoint tested at the end, the test reports and ``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from mm.config import Config, to_dict
from mm.model import MultimodalModel
from mm.run import distributed
from mm.run.checkpoint import WEIGHTS, load_weights
from mm.run.distributed import Dist
from mm.tracking import Tracker


class Silent:
    """The tracker of ranks other than 0: they log nothing (rank 0 logs the job)."""

    def log(self, *args: Any, **kwargs: Any) -> None: ...
    def summary(self, *args: Any, **kwargs: Any) -> None: ...
    def log_image(self, *args: Any, **kwargs: Any) -> None: ...
    def log_table(self, *args: Any, **kwargs: Any) -> None: ...
    def finish(self, *args: Any, **kwargs: Any) -> None: ...


def open_tracker(run_dir: Path, cfg: Config, d: Dist, resume_step: int | None) -> Tracker | Silent:
    """Rank 0's ``Tracker`` (``metrics.jsonl`` and W&B; a resumed run continues both), or ``Silent``.
    A run started with ``train.init_from=artifact:...`` declares that artifact as its input."""
    if not d.main:
        return Silent()
    w = cfg.wandb
    tracker = Tracker(run_dir, to_dict(cfg), mode=w.mode, project=w.project, entity=w.entity, group=w.group,
                      name=run_dir.name, tags=w.tags, job_type=w.job_type, resume_step=resume_step)
    source = cfg.train.init_from or ""
    if source.startswith("artifact:"):  # continued fine-tuning: W&B lineage from the model it started from
        tracker.use_artifact(source.removeprefix("artifact:"))
    return tracker


def load_best(model: MultimodalModel, ckpt_dir: Path, strategy: str, d: Dist) -> None:
    """The weights validation chose (``best``) back into the model, on every rank, to be tested."""
    distributed.barrier(d)  # rank 0 has written it
    best = ckpt_dir / "best" / WEIGHTS
    if strategy == "fsdp" and d.enabled:
        distributed.load_model_state(model, load_file(str(best)), strategy, d)
    else:
        load_weights(model, best, verify=False)  # same model, same frozen weights


def write_results(run_dir: Path, results: dict[str, Any], tracker: Tracker, metric_key: str, best: float | None,
                  log_model: bool) -> None:
    """The run's summary to the tracker (and its checkpoints as W&B model artifacts when asked), then
    ``results.json``: written last, so a run folder with it is a finished run."""
    tracker.summary({f"best/{metric_key}": best, "best/step": results["best_step"],
                     "nonfinite_skipped": results["nonfinite_skipped"],
                     **{f"bad_samples/{k}": v for k, v in results["bad_samples"].items()},
                     "stopped_early": results["stopped_early"], **{f"test/{k}": v for k, v in results["test"].items()}})
    if log_model:  # the best and last checkpoints as W&B model artifacts
        tracker.log_model(run_dir / "checkpoints")
    tracker.finish()
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))

