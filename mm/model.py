"""``MultimodalModel(encoders, fusion, head)`` and ``build_model(cfg)``, where config meets modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mm.config import Config
from mm.encoders import build_encoder
from mm.encoders.base import EncoderOutput
from mm.fusion import build_fusion
from mm.heads import build_head


class MultimodalModel(nn.Module):
    """Encoders -> fusion -> head.

    Args:
        encoders: modality -> encoder (keys are the model's modalities).
        fusion: maps ``dict[str, EncoderOutput]`` to fused features.
        head: maps fused features to logits and owns loss and metrics.
    """

    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module, head: nn.Module):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head

    @property
    def modalities(self) -> list[str]:
        return sorted(self.encoders)

    def encode(self, batch: dict[str, Any]) -> dict[str, EncoderOutput]:
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.head(self.fusion(self.encode(batch)))


def build_model(cfg: Config, num_classes: int) -> MultimodalModel:
    """Build the model a config describes: its modalities' encoders, the fusion and the head."""
    encoders = {}
    for m in sorted(cfg.data.modalities):
        enc_cfg = vars(getattr(cfg.encoders, m))
        encoders[m] = build_encoder(m, **enc_cfg)
    fusion = build_fusion(
        cfg.fusion.name,
        {m: e.out_dim for m, e in encoders.items()},
        hidden_dim=cfg.fusion.hidden_dim,
        num_layers=cfg.fusion.num_layers,
        dropout=cfg.fusion.dropout,
    )
    head = build_head(cfg.head.name, fusion.out_dim, num_classes)
    return MultimodalModel(encoders, fusion, head)


def parameter_counts(model: MultimodalModel) -> dict[str, int]:
    """Total and trainable parameter counts, overall and per encoder."""
    counts = {
        "params/total": sum(p.numel() for p in model.parameters()),
        "params/trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for m, enc in model.encoders.items():
        counts[f"params/{m}/total"] = sum(p.numel() for p in enc.parameters())
        counts[f"params/{m}/trainable"] = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    return counts
