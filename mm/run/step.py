"""One optimizer step: what the loop runs forward through, a micro-batch's forward and backward,
then clip, (maybe) step and advance the schedule."""

from __future__ import annotations

import math

import torch

from mm.config import TrainConfig
from mm.features import encode_with_cache
from mm.mixing import Mixing
from mm.model import MultimodalModel
from mm.run import distributed
from mm.run.distributed import Dist
from mm.run.guard import NonFiniteGuard
from mm.run.runtime import autocast, to_device


def forward_module(model: MultimodalModel, d: Dist, train: TrainConfig, device: torch.device) -> torch.nn.Module:
    """What the loop runs forward through: DDP / FSDP under torchrun, compiled when asked, else ``model``."""
    if d.enabled and train.strategy == "fsdp" and any(e.policy == "gradual" for e in model.encoders.values()):
        raise ValueError("train.strategy=fsdp cannot follow gradual unfreezing (FSDP fixes the trainable set)")
    forward = distributed.wrap(model, d, train.strategy, device, train.sync_batchnorm)
    return torch.compile(forward) if train.compile else forward


def train_step(model: MultimodalModel, batch: dict, device: torch.device, precision: str, scale: float,
               mixing: Mixing | None = None, forward: torch.nn.Module | None = None,
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Forward and backward of one micro-batch (mixed, when mixup/cutmix is on); the loss is scaled
    for gradient accumulation (and by fp16's GradScaler). ``forward`` is what runs the model: the
    DDP / FSDP / compiled wrapper of ``model``, or ``model`` itself. Returns the unscaled loss,
    detached and left on the device (no host sync per step)."""
    batch = to_device(batch, device)
    if mixing is not None and mixing.active:
        batch = mixing(batch)
    with autocast(device, precision):
        logits = (model if forward is None else forward)(batch, outputs=encode_with_cache(model, batch))
    loss = model.head.loss(logits, batch)
    scaled = loss * scale
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss.detach()


def optimizer_step(model: MultimodalModel, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                   scaler: torch.amp.GradScaler, guard: NonFiniteGuard, max_grad_norm: float) -> None:
    """Clip (or just measure) the gradient norm, update unless it is not finite (the guard), advance
    the schedule, clear the gradients. Ranks agree: their gradients are already averaged."""
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm or math.inf)
    guard.step(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
