"""The non-finite guard: a step whose loss or gradients are not finite is skipped and counted, and a
run that keeps producing them stops before anything non-finite is saved.

``NonFiniteGuard`` skips on the device (no host sync per step); ``Divergence`` brings its counts to
the host (once per logging window and before each checkpoint) and stops the run once
``train.max_nonfinite`` steps in a row were skipped. fp16's GradScaler skips its own overflows while
it lowers its scale, so it gets 32 more steps (enough to go from 2^16 below 2^-16) before the run stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

FP16_GRACE = 32  # extra skipped steps allowed to fp16's GradScaler (halving 2^16 down below 2^-16)


class NonFiniteError(RuntimeError):
    """Training diverged: non-finite losses or gradients for ``train.max_nonfinite`` steps in a row,
    or non-finite weights about to be checkpointed. Nothing non-finite was saved."""


class NonFiniteGuard:
    """Skips every optimizer update whose gradient norm is not finite, and counts the skipped steps.

    A fused Adam / AdamW (without fp16's GradScaler) skips on the device: the norm's finiteness goes
    to the kernel as ``optimizer.found_inf`` (what ``torch.amp.GradScaler`` hands fused optimizers),
    which then leaves weights, moments and step count untouched, and the counters are tensors on the
    device too, so a step needs no host synchronisation. Other optimizers and fp16 read the norm on
    the host each step, as they must (fp16's scaler skips its own overflows and lowers its scale).
    ``read`` brings the counters to the host, once per logging window and at checkpoints.

    Args:
        optimizer: the run's optimizer.
        scaler: the run's GradScaler (enabled with fp16).
        device: where the gradients are.
        skipped: steps skipped before (a resumed run's count).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, device: torch.device,
                 skipped: int = 0):
        self.optimizer, self.scaler = optimizer, scaler
        zero = torch.zeros((), device=device)
        self.skipped, self.run, self.longest = zero + skipped, zero.clone(), zero.clone()

    @property
    def on_device(self) -> bool:
        """Whether the skip happens on the device (read each step: a resumed optimizer state may set ``fused``)."""
        return not self.scaler.is_enabled() and all(g.get("fused") for g in self.optimizer.param_groups)

    def step(self, norm: torch.Tensor) -> None:
        """Apply the update unless ``norm`` (the gradients' total norm, unscaled) is not finite."""
        if self.on_device:
            bad = (~torch.isfinite(norm)).float()
            self.optimizer.found_inf = bad  # the fused kernel skips the whole step when it is 1
            self.optimizer.step()
        else:  # one host sync per step: the finiteness decides whether to step at all
            scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
            finite = bool(torch.isfinite(norm))
            if finite or self.scaler.is_enabled():
                self.scaler.step(self.optimizer)  # fp16: the scaler itself skips a non-finite update
            self.scaler.update()
            bad = torch.tensor(float(not finite or (scale is not None and self.scaler.get_scale() < scale)))
            bad = bad.to(self.skipped.device)
        self.skipped += bad
        self.run = (self.run + bad) * bad  # steps skipped in a row, 0 after an applied one
        torch.maximum(self.longest, self.run, out=self.longest)

    def read(self) -> tuple[int, int]:
        """(steps skipped in all, the longest run of them in a row since the last read); a host sync."""
        skipped, longest = int(self.skipped), int(self.longest)
        self.longest.copy_(self.run)
        return skipped, longest


def last_good(ckpt_dir: Path) -> str:
    """Where a diverged run can restart from, for its error message: ``last``, or that there is none."""
    last = ckpt_dir / "last"
    return f"the last good checkpoint is {last}" if last.exists() else f"no checkpoint was written yet (in {ckpt_dir})"


class Divergence:
    """The guard's counts on the host, and the rule that stops a diverging run.

    Args:
        guard: the loop's ``NonFiniteGuard``.
        max_nonfinite: ``train.max_nonfinite``.
        precision: ``train.precision`` (fp16 gets ``FP16_GRACE`` more steps).
        ckpt_dir: the run's checkpoints, named in the error.
        tracker: finished with exit code 1 before the error is raised (W&B marks the run failed).
    """

    def __init__(self, guard: NonFiniteGuard, max_nonfinite: int, precision: str, ckpt_dir: Path, tracker: Any) -> None:
        self.guard, self.max_nonfinite, self.ckpt_dir, self.tracker = guard, max_nonfinite, ckpt_dir, tracker
        self.patience = max_nonfinite + (FP16_GRACE if precision == "fp16" else 0)
        self.skipped, self.run = int(guard.skipped), 0

    def check(self, step: int) -> None:
        """Read the guard's counts (a host sync); raise ``NonFiniteError`` when too many steps in a row were skipped."""
        self.skipped, self.run = self.guard.read()
        if self.run >= self.patience:
            self.tracker.finish(exit_code=1)
            raise NonFiniteError(
                f"by step {step}: {self.run} optimizer steps in a row had non-finite losses or gradients "
                f"(train.max_nonfinite={self.max_nonfinite}); lower optim.lr / optim.backbone_lr or turn on "
                f"optim.max_grad_norm. Nothing non-finite was saved; {last_good(self.ckpt_dir)}")

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "run": self.run}

    def check_weights(self, model: nn.Module, step: int) -> None:
        """Refuse to checkpoint non-finite weights: the previous checkpoint stays the one to resume."""
        bad = [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
        if bad:
            self.tracker.finish(exit_code=1)
            raise NonFiniteError(f"step {step}: non-finite weights in {bad[:3]} ({len(bad)} tensors); "
                                 f"nothing saved, {last_good(self.ckpt_dir)}")
