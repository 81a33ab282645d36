"""What ``--resume`` may change, and how it continues: the saved config against the new one.

A checkpoint stores the resolved config it was trained with (and its hash). Resuming with a
different config is refused, naming every changed key with its old and new value, unless
``train.resume_allow_changes`` lists the key; then the new value really applies from the resumed
step on (learning rates and the schedule length included) and the change is recorded in the run
folder (``resume_changes.jsonl``). Keys that cannot change a result (progress bars, plots, worker
count, W&B settings) may always differ.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import torch

from mm.run.distributed import Dist

# Keys that never change what a run computes.
ALWAYS_ALLOWED = ("name", "train.resume", "train.resume_allow_changes", "train.progress", "train.plots",
                  "train.out_dir", "data.num_workers", "wandb.")


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


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def changed_keys(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every key whose value differs, the always-allowed ones left out."""
    old, new = flatten(saved), flatten(now)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and not k.startswith(ALWAYS_ALLOWED)}


def check_resume(state: dict[str, Any], config: dict[str, Any], d: Dist) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume whose config differs from the checkpoint's in keys not allowed to change.

    A different number of ranks is allowed when the global batch (per-rank batch x ranks x
    accumulation) is unchanged; the per-rank ``train.batch_size`` may then differ.

    Returns:
        The changes that apply (key -> (old, new)).

    Raises:
        ResumeError: listing each refused key with its old and new value, and how to allow it.
    """
    world = state.get("world", 1)
    train, optim = config["train"], config["optim"]
    global_now = train["batch_size"] * d.world * optim["grad_accum_steps"]
    changes = changed_keys(state["config"], config) if "config" in state else {}
    if world != d.world:
        if state.get("global_batch", global_now) != global_now:
            raise ResumeError(
                f"train.resume: the checkpoint was written by {world} process(es) with a global batch of "
                f"{state.get('global_batch')}; {d.world} process(es) x train.batch_size={train['batch_size']} x "
                f"optim.grad_accum_steps={optim['grad_accum_steps']} = {global_now}. Resume with the same world "
                f"size, or set train.batch_size so the global batch stays {state.get('global_batch')}")
        changes.pop("train.batch_size", None)
        changes.pop("optim.grad_accum_steps", None)
        if d.main:
            print(f"resuming a {world}-process run with {d.world}: same global batch, so the same schedule "
                  "(dropout's random streams differ from an uninterrupted run)", file=sys.stderr)
    allowed = set(train["resume_allow_changes"])
    refused = {k: v for k, v in changes.items() if k not in allowed}
    if refused:
        lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ResumeError(f"train.resume: the config differs from the one the checkpoint was trained with:\n{lines}\n"
                          f"resume with the original values, or allow the change explicitly: "
                          f"train.resume_allow_changes=[{','.join(refused)}]")
    return changes


def apply_learning_rates(optimizer: torch.optim.Optimizer, scheduler: Any, fresh: list[float], step: int) -> None:
    """After loading a checkpoint's optimizer and schedule: the config's base learning rates (``fresh``,
    one per group, as built) and the schedule's new length apply from ``step`` on. Identical to the
    saved values when nothing changed."""
    scheduler.base_lrs = list(fresh)
    for group, base, factor in zip(optimizer.param_groups, fresh, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * factor(step)
