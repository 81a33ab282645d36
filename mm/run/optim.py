"""Parameter groups, optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from mm.config import OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters split by (backbone vs new module) x (decay vs no decay) x depth.

    Encoders (names under ``encoders.``) get ``backbone_lr``, times ``layer_decay ** depth`` with
    the depth counted from the top of the backbone (``mm.encoders.layers``: final norm 0, last
    block 1, ..., embeddings ``blocks + 1``; new encoder parameters such as LoRA adapters take the
    depth of the layer they sit in); fusion and head get ``lr``. Biases and normalisation weights
    (every parameter with fewer than two dimensions) get no weight decay. The parameters of a
    ``gradual`` encoder are all included while still frozen: they have no gradient, so the
    optimizer skips them until they thaw. Empty groups are dropped; each group has a ``name``.
    """
    depth: dict[str, int] = {}
    encoders = getattr(model, "encoders", {})
    if cfg.layer_decay != 1.0:
        from mm.encoders.layers import layer_groups

        for m, enc in encoders.items():
            for name, d in layer_groups(enc.backbone).depth_from_top().items():
                depth[f"encoders.{m}.backbone.{name}"] = d

    groups: dict[tuple[str, int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        modality = name.split(".")[1] if name.startswith("encoders.") else None
        thaws_later = modality is not None and getattr(encoders[modality], "policy", None) == "gradual"
        if not (p.requires_grad or thaws_later):
            continue
        part = "backbone" if modality else "new"
        d = depth.get(name, 0)
        groups.setdefault((part, d, p.ndim >= 2), []).append(p)
    out = []
    for (part, d, decay), params in sorted(groups.items()):
        lr = cfg.backbone_lr * cfg.layer_decay**d if part == "backbone" else cfg.lr
        suffix = f"/depth{d}" if cfg.layer_decay != 1.0 and part == "backbone" else ""
        out.append({"name": f"{part}{suffix}/{'decay' if decay else 'no_decay'}", "params": params,
                    "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0})
    return out


def fusable(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused Adam / AdamW kernels take these parameters: plain floating-point tensors on
    a CPU or CUDA device (FSDP's sharded DTensors go through the default implementation)."""
    dtensor = getattr(getattr(torch.distributed, "tensor", None), "DTensor", ())
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() and not isinstance(p, dtensor)
               for p in params)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer over ``param_groups``. Adam and AdamW use torch's fused kernels where they can
    (``fusable``): one pass over each tensor instead of several, 8x faster steps for MiniLM on a CPU
    (BENCHMARKS.md), and a step that can skip itself on the device (``mm.run.guard.NonFiniteGuard``)."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    fused = fusable([p for g in groups for p in g["params"]]) or None
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.name!r}; valid: ['adam', 'adamw', 'rmsprop', 'sgd']")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup, then constant or cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule {schedule!r}; valid: ['constant', 'cosine', 'linear']")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(round(cfg.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, cfg.schedule)
    )
