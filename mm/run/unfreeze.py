"""Gradual unfreezing as the loop goes: more backbone blocks open on the encoders' schedules."""

from __future__ import annotations

from typing import Any

from mm.encoders.policies import gradual_blocks, thaw
from mm.model import MultimodalModel


def open_blocks(model: MultimodalModel, encoders: Any, step: int, epoch: int) -> list[str]:
    """Open more blocks of ``gradual`` encoders when their schedule (``gradual_every`` steps or epochs of
    ``cfg.encoders.<m>``) says so; returns the names of the parameters that opened (empty: nothing changed)."""
    opened = []
    for m, enc in model.encoders.items():
        if enc.policy == "gradual":
            pc = getattr(encoders, m)
            k = gradual_blocks(step if pc.gradual_unit == "step" else epoch, pc.gradual_every)
            if k > enc.thawed:
                opened += [f"{m}.{name}" for name in thaw(enc, k)]
    return opened


def trainable_params(model: MultimodalModel) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
