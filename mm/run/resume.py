"""What ``--resume`` may change, and how it continues: the saved config against the new one.

A checkpoint stores the resolved config it was trained with (and its hash). Resuming with a
different config is refused, naming every changed key with its old and new value, unless the run
option ``allow_changes`` (``--allow-changes``) lists the key; then the new value really applies from
the resumed step on (learning rates and the schedule length included) and the change is recorded in
the run folder (``resume_changes.jsonl``). The command-line switches (where the run goes, resume,
progress, plots) are run options, not config (``mm.run.options``), so they never take part; of the
config, only what names and reports the run (``name``, ``wandb.*``) and the loader's worker count
(``data.num_workers``: each sample is seeded on its own) compute nothing and may differ.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mm.config import MOVED
from mm.run import distributed
from mm.run.checkpoint import (
    WEIGHTS,
    CheckpointError,
    load_weights,
    point_best,
    resume_point,
    verify_checkpoint,
)
from mm.run.distributed import Dist
from mm.run.options import check_allowed
from mm.run.state import TrainState
from mm.run.stopping import EarlyStopping

# Config keys that compute nothing: they name and report the run, or set the loader's worker count.
NOT_COMPUTED = ("name", "wandb.", "data.num_workers")


class ResumeError(ValueError):
    """``--resume`` with a config the checkpoint was not trained with."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every key whose value differs; ``NOT_COMPUTED`` keys, and the run options
    that checkpoints of an earlier mm recorded as config keys (``MOVED``), left out."""
    old, new = flatten(saved), flatten(now)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and not k.startswith(NOT_COMPUTED) and k not in MOVED}


def check_resume(state: dict[str, Any], config: dict[str, Any], d: Dist,
                 allow: tuple[str, ...] | list[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume whose config differs from the checkpoint's in keys not allowed to change.

    A different number of ranks is allowed when the global batch (per-rank batch x ranks x
    accumulation) is unchanged; the per-rank ``train.batch_size`` may then differ.

    Args:
        allow: config keys allowed to change (``--allow-changes``); each must be a key of the config.

    Returns:
        The changes that apply (key -> (old, new)).

    Raises:
        ResumeError: listing each refused key with its old and new value, and how to allow it; or
            naming an ``allow`` entry that is no config key.
    """
    try:
        check_allowed(allow, config)
    except ValueError as err:
        raise ResumeError(str(err)) from None
    world = state.get("world", 1)
    train, optim = config["train"], config["optim"]
    global_now = train["batch_size"] * d.world * optim["grad_accum_steps"]
    changes = changed_keys(state["config"], config) if "config" in state else {}
    if world != d.world:
        if state.get("global_batch", global_now) != global_now:
            raise ResumeError(
                f"--resume: the checkpoint was written by {world} process(es) with a global batch of "
                f"{state.get('global_batch')}; {d.world} process(es) x train.batch_size={train['batch_size']} x "
                f"optim.grad_accum_steps={optim['grad_accum_steps']} = {global_now}. Resume with the same world "
                f"size, or set train.batch_size so the global batch stays {state.get('global_batch')}")
        changes.pop("train.batch_size", None)
        changes.pop("optim.grad_accum_steps", None)
        if d.main:
            print(f"resuming a {world}-process run with {d.world}: same global batch, so the same schedule "
                  "(dropout's random streams differ from an uninterrupted run)", file=sys.stderr)
    allowed = set(allow)
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ResumeError(f"--resume: the config differs from the one the checkpoint was trained with:\n{lines}\n"
                          f"resume with the original values, or allow the change explicitly: "
                          f"--allow-changes {','.join(refused)}")
    return changes


def apply_learning_rates(optimizer: torch.optim.Optimizer, scheduler: Any, fresh: list[float], step: int) -> None:
    """After loading a checkpoint's optimizer and schedule: the config's base learning rates (``fresh``,
    one per group, as built) and the schedule's new length apply from ``step`` on. Identical to the
    saved values when nothing changed."""
    scheduler.base_lrs = list(fresh)
    for group, base, factor in zip(optimizer.param_groups, fresh, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor(step)


@dataclass
class Resume:
    """The checkpoint a run continues from: its folder, its saved state, the config changes that apply."""

    folder: Path
    state: dict[str, Any]
    changes: dict[str, tuple[Any, Any]]


def find(ckpt_dir: Path, config: dict[str, Any], d: Dist, allow: tuple[str, ...] | list[str] = ()) -> Resume:
    """The newest complete checkpoint in ``ckpt_dir`` (a damaged one is skipped, with a warning), checked
    against the config (``check_resume``), and the ``best`` checkpoint of its moment, verified now (the
    end of the run tests it) and pointed to again: when a damaged ``last`` made the resume fall back to
    an earlier checkpoint, ``best`` is the one that checkpoint's early stopping chose.

    Raises:
        FileNotFoundError: when there is no complete checkpoint.
        ResumeError: when the config differs in keys not allowed to change.
        CheckpointError: naming the file, when that ``best`` checkpoint is damaged or gone.
    """
    found = resume_point(ckpt_dir)
    if found is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint in {ckpt_dir}")
    folder, state = found
    changes = check_resume(state, config, d, allow)
    best_step = state["early_stopping"]["best_step"]
    if best_step >= 0:
        best = ckpt_dir / f"step-{best_step:08d}"
        try:
            verify_checkpoint(best)
        except CheckpointError as err:
            raise CheckpointError(f"the best checkpoint (step {best_step}), which the end of the run tests, is "
                                  f"damaged: {err}. Restore it, or start the run again") from None
        if d.main:
            point_best(ckpt_dir, best)
    return Resume(folder, state, changes)


def finished(run_dir: Path, d: Dist) -> dict[str, Any]:
    """A finished run's results (``results.json``), reported again; nothing in the folder changes."""
    if d.main:
        print(f"{run_dir} has finished already; its results stay as they are", file=sys.stderr)
    results = json.loads((run_dir / "results.json").read_text())
    distributed.close(d)
    return results


def record_changes(run_dir: Path, r: Resume | None) -> None:
    """Append the allowed config changes of a resume to ``run_dir/resume_changes.jsonl`` (none: nothing)."""
    if r is not None and r.changes:
        with (run_dir / "resume_changes.jsonl").open("a") as f:
            f.write(json.dumps({"step": r.state["step"], "changes": r.changes}, default=str) + "\n")


def restore(s: TrainState, r: Resume, strategy: str, d: Dist, base_lrs: list[float]) -> None:
    """Continue where the checkpoint stopped: optimizer, schedule (with the config's learning rates and
    length, ``apply_learning_rates``), GradScaler, step, early stopping, loss window and this rank's RNG.
    The weights were loaded before the model was wrapped (``load_weights``)."""
    saved = r.state
    distributed.load_optimizer_state(s.model, s.optimizer, saved["optimizer"], strategy, d)
    s.scheduler.load_state_dict(saved["scheduler"])
    if "scaler" in saved:
        s.scaler.load_state_dict(saved["scaler"])
    s.step = saved["step"]
    apply_learning_rates(s.optimizer, s.scheduler, base_lrs, s.step)
    s.stopper = EarlyStopping(**saved["early_stopping"])
    rngs = saved.get("rng_ranks") or [saved["rng"]]
    torch.set_rng_state(rngs[d.rank] if len(rngs) == d.world else rngs[0])
    windows = saved.get("window_ranks")
    if windows:
        s.window.load_state_dict(windows[d.rank] if len(windows) == d.world else windows[0])


def load_resumed_weights(model: torch.nn.Module, r: Resume | None) -> None:
    """A resumed run's weights, into the model before it is wrapped for the ranks."""
    if r is not None:
        load_weights(model, r.folder / WEIGHTS)


def skipped_steps(r: Resume | None) -> int:
    """Optimizer steps the non-finite guard skipped before the checkpoint (0 for a fresh run)."""
    return r.state.get("nonfinite", {}).get("skipped", 0) if r is not None else 0
