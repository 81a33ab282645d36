"""Multiplicative fusions: the full tensor product (TFN) and its low-rank factorisation (LMF)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from mm.encoders.base import EncoderOutput
from mm.fusion.base import mlp, register_fusion


def _with_one(h: torch.Tensor) -> torch.Tensor:
    """Append a constant 1: ``[B, d] -> [B, d + 1]`` (keeps the lower-order terms in a product)."""
    return torch.cat([h, h.new_ones(h.shape[0], 1)], dim=-1)


@register_fusion("tensor")
class TensorFusion(nn.Module):
    """Tensor Fusion Network (Zadeh et al., 2017): outer product of ``[h_m; 1]`` over modalities, then an MLP.

    Each modality's layer-normed pooled feature is projected to ``h_m`` in ``R^tensor_dim``; the
    outer product of the vectors ``[h_m; 1]`` over the sorted modalities holds every unimodal,
    bimodal, ... and M-modal product term. It is flattened row-major (first modality slowest) to
    ``flat_dim = (tensor_dim + 1) ** M`` features and fed to ``num_layers`` x Linear-GELU-Dropout.

    Args:
        in_dims: modality -> pooled feature size.
        hidden_dim: width of the MLP.
        num_layers: hidden layers of the MLP; 0 leaves the flattened product as it is.
        dropout: dropout after each hidden layer.
        tensor_dim: size of each modality's projection before the product.

    Output size ``out_dim``: ``hidden_dim`` if ``num_layers > 0`` else ``(tensor_dim + 1) ** M``.
    """

    def __init__(self, in_dims: dict[str, int], hidden_dim: int = 256, num_layers: int = 1, dropout: float = 0.1,
                 *, tensor_dim: int = 8):
        super().__init__()
        self.modalities = sorted(in_dims)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(in_dims[m]), nn.Linear(in_dims[m], tensor_dim))
                                   for m in self.modalities})
        self.flat_dim = (tensor_dim + 1) ** len(self.modalities)
        self.mlp, self.out_dim = mlp(self.flat_dim, hidden_dim, num_layers, dropout)

    def product(self, outputs: dict[str, EncoderOutput]) -> torch.Tensor:
        """The flattened outer product ``[B, (tensor_dim + 1) ** M]``."""
        fused = None
        for m in self.modalities:
            z = _with_one(self.proj[m](outputs[m].pooled))  # [B, d + 1]
            if fused is None:
                fused = z
            else:  # [B, (d+1)^k] x [B, d+1] -> [B, (d+1)^(k+1)], earlier modalities slowest
                fused = rearrange(torch.einsum("bi,bj->bij", fused, z), "b i j -> b (i j)")
        assert fused is not None
        return fused

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.mlp(self.product(outputs))  # [B, flat_dim] -> [B, out_dim]


@register_fusion("lowrank")
class LowRankFusion(nn.Module):
    """Low-rank Multimodal Fusion (Liu et al., 2018): the TFN weight tensor factorised into rank-1 terms.

    With ``z_m = [LayerNorm(pooled_m); 1]`` and per-modality factors ``W_m`` of shape
    ``[rank, D_m + 1, hidden_dim]``, the fused feature is
    ``sum_r w_r prod_m (z_m @ W_m[r]) + b``, the same as a linear map of the full outer product whose
    weight tensor has rank ``rank``, without ever forming that product. It is followed by
    ``num_layers`` x Linear-GELU-Dropout (0: none).

    Initialisation: ``W_m[r] ~ N(0, 1 / (D_m + 1))`` so each factor output has about unit variance,
    ``w_r = 1 / sqrt(rank)`` and ``b = 0``. Every parameter (``w`` and ``b`` included) is on the path
    to the output, so all get gradient.

    Args:
        in_dims: modality -> pooled feature size.
        hidden_dim: size of the fused feature and of the MLP.
        num_layers: hidden layers of the MLP after the fusion.
        dropout: dropout after each hidden layer.
        rank: number of rank-1 terms.

    Output size ``out_dim``: ``hidden_dim``. Fusion parameters:
    ``sum_m (2 D_m + rank (D_m + 1) hidden_dim) + rank + hidden_dim`` (layer norms, factors, ``w``, ``b``).
    """

    def __init__(self, in_dims: dict[str, int], hidden_dim: int = 256, num_layers: int = 1, dropout: float = 0.1,
                 *, rank: int = 4):
        super().__init__()
        if rank < 1:
            raise ValueError(f"lowrank fusion needs rank >= 1, got {rank}")
        self.modalities = sorted(in_dims)
        self.norms = nn.ModuleDict({m: nn.LayerNorm(in_dims[m]) for m in self.modalities})
        self.factors = nn.ParameterDict({
            m: nn.Parameter(torch.randn(rank, in_dims[m] + 1, hidden_dim) / math.sqrt(in_dims[m] + 1))
            for m in self.modalities
        })
        self.rank_weights = nn.Parameter(torch.full((rank,), 1 / math.sqrt(rank)))
        self.bias = nn.Parameter(torch.zeros(hidden_dim))
        self.mlp, self.out_dim = mlp(hidden_dim, hidden_dim, num_layers, dropout)

    def fuse(self, outputs: dict[str, EncoderOutput]) -> torch.Tensor:
        """The low-rank fused feature ``[B, hidden_dim]``, before the MLP."""
        prod = None
        for m in self.modalities:
            z = _with_one(self.norms[m](outputs[m].pooled))  # [B, D_m + 1]
            f = torch.einsum("bi,rih->brh", z, self.factors[m])  # [B, D_m+1] x [R, D_m+1, H] -> [B, R, H]
            prod = f if prod is None else prod * f
        assert prod is not None
        return torch.einsum("brh,r->bh", prod, self.rank_weights) + self.bias  # [B, R, H] -> [B, H]

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.mlp(self.fuse(outputs))  # [B, H] -> [B, out_dim]
