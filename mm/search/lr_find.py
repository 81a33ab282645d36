"""The learning-rate range test (Smith, 2017, "Cyclical learning rates", section 3.3).

A short run of its own, never a run folder: the model of a config is built fresh, and one part of
its parameter groups (``new``: fusion and head, ``optim.lr``; ``backbone``: the encoders,
``optim.backbone_lr``, ``mm.run.optim.param_groups``) gets a learning rate raised exponentially
from ``start_lr`` to ``end_lr`` over ``steps`` optimizer steps while the other part stays where it
was built (rate 0): a loss that falls then falls because of the part swept, not because the other
part learns at its own rate. The training loss of each step is smoothed by an exponential moving average
(bias-corrected, as fastai's ``lr_find``); the sweep stops when the smoothed loss exceeds
``diverge`` times its minimum, or is not finite.

Two suggestions come from the smoothed curve (``suggest``):

- ``steepest``: the rate where the loss falls fastest (most negative slope against log rate),
  before the minimum;
- ``min_tenth``: a tenth of the rate at the minimum of the smoothed loss.

A model that cannot learn at any rate (its inputs carry nothing about the label) can at best learn
the label frequencies: its loss never falls by ``min_drop`` below the *blind floor*, the loss of
predicting the training labels' frequencies whatever the input (for classification heads, computed
from the labels the sweep saw, with the head's label smoothing; other heads use the curve's own
start). Then there is no suggestion, and ``reason`` says so. The sweep is ``sweep``, a pure function of a step function, usable on any model; ``range_test``
runs it on an mm config.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PARTS = ("new", "backbone")
LR_KEYS = {"new": "optim.lr", "backbone": "optim.backbone_lr"}  # the override that sets each part's rate


@dataclass
class Curve:
    """One sweep: the rates tried, the raw and smoothed losses, and what it suggests.

    Attributes:
        part: ``new`` or ``backbone`` (or any name a caller gives).
        lrs: the learning rate of each step.
        losses: the training loss of each step (NaN / inf kept as they came).
        smoothed: the bias-corrected moving average of ``losses``.
        diverged: whether the sweep stopped on divergence before ``end_lr``.
        steepest: the rate of steepest descent, or None.
        min_tenth: a tenth of the rate at the smoothed minimum, or None.
        reason: why there is no suggestion (None when there is one).
    """

    part: str
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    diverged: bool = False
    steepest: float | None = None
    min_tenth: float | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("part", "lrs", "losses", "smoothed", "diverged", "steepest",
                                               "min_tenth", "reason")}


def lr_at(i: int, steps: int, start_lr: float, end_lr: float) -> float:
    """The exponential schedule: ``start_lr * (end_lr / start_lr) ** (i / (steps - 1))``."""
    return start_lr * (end_lr / start_lr) ** (i / max(1, steps - 1))


def sweep(step: Callable[[float], float], part: str, *, start_lr: float = 1e-7, end_lr: float = 10.0,
          steps: int = 100, beta: float = 0.9, diverge: float = 4.0, min_drop: float = 0.1,
          floor: Callable[[], float | None] | None = None) -> Curve:
    """Runs ``step(lr) -> loss`` at exponentially rising rates and suggests from the smoothed losses.

    Args:
        step: one optimizer step at the given learning rate; returns its training loss.
        part: the name of what the rate applies to.
        start_lr: the first rate.
        end_lr: the last rate (reached when nothing diverges first).
        steps: optimizer steps from ``start_lr`` to ``end_lr``.
        beta: the moving average's weight of the past (0: no smoothing).
        diverge: stop when the smoothed loss exceeds this multiple of its minimum.
        min_drop: the least relative fall of the smoothed loss below the blind floor (or, without
            one, below its start) that counts as learning.
        floor: called after the sweep: the blind floor, or None.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if steps < 10:
        raise ValueError(f"steps must be at least 10, got {steps}")
    curve, avg, best = Curve(part), 0.0, math.inf
    for i in range(steps):
        lr = lr_at(i, steps, start_lr, end_lr)
        loss = float(step(lr))
        curve.lrs.append(lr)
        curve.losses.append(loss)
        if not math.isfinite(loss):
            curve.diverged = True
            break
        avg = beta * avg + (1 - beta) * loss
        smooth = avg / (1 - beta ** (i + 1))
        curve.smoothed.append(smooth)
        best = min(best, smooth)
        if i > 0 and smooth > diverge * best:
            curve.diverged = True
            break
    suggest(curve, min_drop, floor() if floor is not None else None)
    return curve


def suggest(curve: Curve, min_drop: float = 0.1, floor: float | None = None, skip_start: float = 0.1) -> Curve:
    """Fills ``steepest`` and ``min_tenth`` from ``curve.smoothed``, or ``reason`` when it cannot.

    Learning means a smoothed minimum ``min_drop`` below ``floor`` (the blind floor), or without
    one, below the curve's start. The first ``skip_start`` of the points (the moving average still
    settling) are not candidates.
    """
    s = np.asarray(curve.smoothed, dtype=float)
    lrs = np.asarray(curve.lrs[:len(s)], dtype=float)
    if len(s) < 5:
        curve.reason = f"the loss diverged after {len(s)} steps, at lr {curve.lrs[-1]:.3g}: start lower (--start-lr)"
        return curve
    k = min(len(s) - 3, max(1, int(round(skip_start * len(s)))))
    start = float(np.mean(s[:k]))
    lo = k + int(np.argmin(s[k:]))
    ref, what = (floor, "the blind floor (predicting the label frequencies)") if floor else (start, "its start")
    drop = (ref - float(s[lo])) / abs(ref) if ref else 0.0
    if drop < min_drop:
        curve.reason = (f"the smoothed loss never fell {min_drop:.0%} below {what}, {ref:.4g}, at any rate "
                        f"from {lrs[0]:.3g} to {lrs[-1]:.3g} (best {float(s[lo]):.4g}): this model does "
                        f"not learn from these inputs at any rate, so no rate is suggested")
        return curve
    curve.min_tenth = float(lrs[lo]) / 10
    slope = np.gradient(s[:lo + 1], np.log(lrs[:lo + 1])) if lo >= 1 else np.zeros(1)
    j = k + int(np.argmin(slope[k:])) if lo > k else lo
    curve.steepest = float(lrs[j])
    return curve


def range_test(cfg: Any, parts: tuple[str, ...] | None = None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
               steps: int = 100, beta: float = 0.9, diverge: float = 4.0, min_drop: float = 0.1,
               log: Callable[[str], None] = print) -> list[Curve]:
    """The range test of an mm config, one sweep per part that has trainable parameters.

    Each sweep builds the model afresh (same seed), so none starts from another's weights; the
    batches are the training split's, reshuffled each epoch, without mixup. Nothing is written.

    Args:
        cfg: the run's config (``mm.config.Config``).
        parts: which of ``PARTS`` to sweep; default: each with trainable parameters.
    """
    from mm.prepare import prepare
    from mm.run.optim import build_optimizer
    from mm.run.runtime import seed_everything

    cfg = copy.deepcopy(cfg)
    curves = []
    for part in parts or PARTS:
        seed_everything(cfg.seed, cfg.train.deterministic)
        job = prepare(cfg)
        optimizer = build_optimizer(job.model, cfg.optim)
        mine = [g for g in optimizer.param_groups if g["name"].split("/")[0] == part]
        if not mine:
            if parts:
                raise ValueError(f"no trainable parameters in part {part!r} of this config")
            continue
        labels: list = []
        step = _step(job, optimizer, part, cfg, labels)
        log(f"range test of {part} ({LR_KEYS[part]}): {steps} steps from {start_lr:g} to {end_lr:g}")
        curves.append(sweep(step, part, start_lr=start_lr, end_lr=end_lr, steps=steps, beta=beta,
                            diverge=diverge, min_drop=min_drop, floor=functools.partial(blind_floor, job.model.head, labels)))
    return curves


def blind_floor(head: Any, labels: list) -> float | None:
    """The loss of predicting the label frequencies whatever the input: the best a model that learns
    nothing from its inputs can reach. Classification heads only (None for the others)."""
    import torch
    import torch.nn.functional as F

    from mm.heads import ClassificationHead

    if not isinstance(head, ClassificationHead) or not labels:
        return None
    y = torch.cat(labels)
    freq = torch.bincount(y, minlength=head.linear.out_features).float() / len(y)
    logits = torch.log(freq.clamp_min(1e-12)).expand(len(y), -1)
    return float(F.cross_entropy(logits, y, label_smoothing=head.label_smoothing))


def _step(job: Any, optimizer: Any, part: str, cfg: Any, labels: list) -> Callable[[float], float]:
    """One optimizer step of ``job.model`` with ``part``'s groups at the given rate, the others at 0;
    the labels of its batches go to ``labels``."""
    import torch

    from mm.features import encode_with_cache
    from mm.run.runtime import autocast, to_device

    model, device = job.model, job.device
    for g in optimizer.param_groups:  # the other part stays as built: no gradient, no backward through it
        if g["name"].split("/")[0] != part:
            for p in g["params"]:
                p.requires_grad_(False)
    trainable = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    batches = _forever(job, cfg.train.batch_size, cfg.seed)
    model.train()

    def one_step(lr: float) -> float:
        for g in optimizer.param_groups:
            g["lr"] = lr if g["name"].split("/")[0] == part else 0.0  # (and no gradient: frozen above)
        batch = next(batches)
        labels.append(batch["label"].detach().cpu())
        batch = to_device(batch, device)
        with autocast(device, cfg.train.precision):
            logits = model(batch, outputs=encode_with_cache(model, batch))
        loss = model.head.loss(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.max_grad_norm)
        optimizer.step()
        return float(loss.detach())

    return one_step


def _forever(job: Any, batch_size: int, seed: int) -> Iterator[dict]:
    """Training batches without end: a fresh seeded permutation of the split each epoch."""
    import torch

    n, epoch = len(job.splits["train"]), 0
    while True:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
        job.splits["train"].set_epoch(epoch)  # augmentation drawn from (seed, epoch, sample)
        chunks = [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [order]
        yield from job.loader("train", chunks)
        epoch += 1


def overrides(curves: list[Curve], which: str = "steepest") -> list[str]:
    """The suggestions as pasteable ``key=value`` overrides (parts without one are left out)."""
    out = []
    for c in curves:
        value = c.steepest if which == "steepest" else c.min_tenth
        if value is not None:
            out.append(f"{LR_KEYS.get(c.part, c.part)}={value:.3g}")
    return out


def plot(curves: list[Curve], path: Any, title: str = "learning-rate range test") -> None:
    """The smoothed loss against the rate (log axis) per part, the suggestions marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, c in zip(axes[0], curves, strict=True):
        n = len(c.smoothed)
        ax.plot(c.lrs[:n], c.losses[:n], color="0.8", lw=0.8, label="loss")
        ax.plot(c.lrs[:n], c.smoothed, color="C0", label="smoothed")
        for value, colour, label in ((c.steepest, "C1", "steepest"), (c.min_tenth, "C2", "min / 10")):
            if value is not None:
                ax.axvline(value, color=colour, ls="--", label=f"{label} {value:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel(f"{LR_KEYS.get(c.part, c.part)} ({c.part})")
        ax.set_ylabel("training loss")
        ax.set_title(c.reason and "no suggestion: does not learn" or c.part, fontsize=9)
        if c.smoothed:
            lo, hi = min(c.smoothed), max(c.smoothed[0], min(c.smoothed) * 2)
            ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo))
        ax.legend(fontsize=8)
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, 90 * len(curves))), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
