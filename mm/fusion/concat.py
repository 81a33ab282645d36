"""Early fusion: concatenate the pooled features of all modalities."""

from __future__ import annotations

import torch
from torch import nn

from mm.encoders.base import EncoderOutput
from mm.fusion.base import mlp, register_fusion


@register_fusion("concat")
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
