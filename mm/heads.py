"""Task heads. Each head owns its loss and its metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.nn import functional as F


class ClassificationHead(nn.Module):
    """Multi-class classification: a linear layer, cross-entropy, accuracy and macro-F1.

    Args:
        in_dim: size of the fused features.
        num_classes: number of classes.
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(fused)  # [B, num_classes]

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["label"])

    def metrics(self, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> dict[str, float]:
        """Metrics over a whole split from its batches' ``logits [B, C]`` and ``labels [B]``."""
        pred = torch.cat(logits).argmax(-1).cpu().numpy()
        true = torch.cat(labels).cpu().numpy()
        return {
            "accuracy": float(np.mean(pred == true)),
            "macro_f1": float(f1_score(true, pred, average="macro", labels=np.arange(self.num_classes), zero_division=0)),
        }


HEADS = {"classification": ClassificationHead}


def build_head(name: str, in_dim: int, num_classes: int) -> nn.Module:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; valid: {sorted(HEADS)}")
    return HEADS[name](in_dim, num_classes)
