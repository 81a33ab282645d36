"""Fusion modules: ``(dict[str, EncoderOutput], presence masks) -> Tensor[B, out_dim]``.

Every fusion iterates modalities in sorted order and keeps per-modality modules in an
``nn.ModuleDict``, so results never depend on dict insertion order.
"""

from __future__ import annotations

import torch
from torch import nn

from mm.encoders.base import EncoderOutput


def mlp(in_dim: int, hidden_dim: int, num_layers: int, dropout: float) -> tuple[nn.Module, int]:
    """``num_layers`` x (Linear, GELU, Dropout); returns the module and its output size."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
        dim = hidden_dim
    return nn.Sequential(*layers), dim


class ConcatFusion(nn.Module):
    """Early fusion: layer-normed pooled features of each modality, concatenated, then an MLP.

    Args:
        in_dims: modality -> pooled feature size.
        hidden_dim: width of the MLP.
        num_layers: hidden layers of the MLP; 0 leaves the concatenation as it is.
        dropout: dropout after each hidden layer.

    Output size ``out_dim``: ``hidden_dim`` if ``num_layers > 0`` else ``sum(in_dims.values())``.
    """

    def __init__(self, in_dims: dict[str, int], hidden_dim: int = 256, num_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.modalities = sorted(in_dims)
        self.norms = nn.ModuleDict({m: nn.LayerNorm(in_dims[m]) for m in self.modalities})
        self.mlp, self.out_dim = mlp(sum(in_dims.values()), hidden_dim, num_layers, dropout)

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        feats = [self.norms[m](outputs[m].pooled) for m in self.modalities]
        return self.mlp(torch.cat(feats, dim=-1))  # [B, sum(D_m)] -> [B, out_dim]


FUSIONS = {"concat": ConcatFusion}


def build_fusion(name: str, in_dims: dict[str, int], **kwargs) -> nn.Module:
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; valid: {sorted(FUSIONS)}")
    return FUSIONS[name](in_dims, **kwargs)
