"""Fusions that average per-modality features with weights over the PRESENT modalities.

Absent modalities get weight exactly 0, so their (missing-embedding) features never reach the output.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from mm.encoders.base import EncoderOutput
from mm.fusion.base import masked_softmax, mlp, presence_matrix, register_fusion

LATE_WEIGHTS = ("mean", "learned")


@register_fusion("late")
class LateFusion(nn.Module):
    """Late fusion: one small MLP per modality on its pooled features, averaged over present modalities.

    Modality ``m`` maps its layer-normed pooled feature to ``f_m`` (``num_layers`` x Linear-GELU-Dropout,
    or a single Linear when ``num_layers == 0``); the output is ``sum_m w_m f_m`` where ``w`` is the
    plain average over the modalities present in each sample (``late_weights="mean"``) or
    ``softmax(a)`` of learned per-modality logits ``a``, renormalised over the present modalities
    (``"learned"``; with a single modality there is nothing to weight and no ``a``).

    The model's head is affine and the weights sum to one, so ``head(sum_m w_m f_m) = sum_m w_m
    head(f_m)``: this is exactly an average of per-modality logits through a shared final layer.
    Each logit is a sum of per-modality terms, so late fusion cannot model interactions between
    modalities (it cannot learn the XOR of two bits held by two modalities).

    Args:
        in_dims: modality -> pooled feature size.
        hidden_dim: output size of every per-modality MLP.
        num_layers: hidden layers of each per-modality MLP.
        dropout: dropout after each hidden layer.
        late_weights: ``"mean"`` or ``"learned"``.

    Output size ``out_dim``: ``hidden_dim``.
    """

    def __init__(self, in_dims: dict[str, int], hidden_dim: int = 256, num_layers: int = 1, dropout: float = 0.1,
                 *, late_weights: str = "mean"):
        super().__init__()
        if late_weights not in LATE_WEIGHTS:
            raise ValueError(f"unknown late_weights {late_weights!r}; valid: {list(LATE_WEIGHTS)}")
        self.modalities = sorted(in_dims)
        self.branches = nn.ModuleDict({m: _branch(in_dims[m], hidden_dim, num_layers, dropout)
                                       for m in self.modalities})
        self.learned = late_weights == "learned" and len(self.modalities) > 1
        if self.learned:
            self.weight_logits = nn.Parameter(torch.zeros(len(self.modalities)))  # uniform at init
        self.out_dim = hidden_dim

    def modality_weights(self, outputs: dict[str, EncoderOutput],
                         present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Weights ``[B, M]`` (sorted modalities) that sum to 1 over each sample's present modalities."""
        mask = presence_matrix(outputs, present, self.modalities)  # [B, M]
        logits = self.weight_logits if self.learned else mask.new_zeros(len(self.modalities), dtype=torch.float)
        return masked_softmax(logits.expand(mask.shape), mask)

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        feats = torch.stack([self.branches[m](outputs[m].pooled) for m in self.modalities], dim=1)  # [B, M, H]
        weights = self.modality_weights(outputs, present)  # [B, M]
        return torch.einsum("bm,bmh->bh", weights.to(feats.dtype), feats)  # [B, H]


@register_fusion("gated")
class GatedFusion(nn.Module):
    """Gated fusion: per-feature softmax gates over the present modalities' projections, then an MLP.

    A gated multimodal unit (Arevalo et al., 2017) for any number of modalities. Each modality's
    layer-normed pooled feature is projected to ``h_m = tanh(W_m x_m)`` in ``R^hidden_dim`` and scores
    every feature with its own linear gate, ``s_m = G_m(h_m)`` in ``R^hidden_dim``; the weights are a
    softmax of ``s`` over the modalities present in each sample, separately for every feature, and the
    fused feature is ``sum_m w_m * h_m`` (elementwise), followed by ``num_layers`` x Linear-GELU-Dropout.
    A modality's scores depend only on its own features, so an absent modality has no influence at all.
    With a single modality there is nothing to gate and no gate.

    Why per feature: a single scalar gate per modality makes the fused vector a convex mix of whole
    modality vectors, and on a task that needs both modalities (text+image ``color_animal``) it was seen
    to collapse onto one of them; per-feature gates let some features carry one modality and others
    another.

    Args:
        in_dims: modality -> pooled feature size.
        hidden_dim: size of the projections, the gates and the MLP.
        num_layers: hidden layers of the MLP after the weighted sum (0: none).
        dropout: dropout after each hidden layer.

    Output size ``out_dim``: ``hidden_dim``.
    """

    def __init__(self, in_dims: dict[str, int], hidden_dim: int = 256, num_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.modalities = sorted(in_dims)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(in_dims[m]), nn.Linear(in_dims[m], hidden_dim),
                                                    nn.Tanh())
                                   for m in self.modalities})
        self.gated = len(self.modalities) > 1
        if self.gated:
            self.gates = nn.ModuleDict({m: nn.Linear(hidden_dim, hidden_dim) for m in self.modalities})
        self.mlp, self.out_dim = mlp(hidden_dim, hidden_dim, num_layers, dropout)

    def gate_weights(self, outputs: dict[str, EncoderOutput],
                     present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Gate weights ``[B, M, hidden_dim]`` (sorted modalities): 0 for absent modalities, each
        feature's weights summing to 1 over the modalities."""
        return self._fuse(outputs, present)[1]

    def _fuse(self, outputs: dict[str, EncoderOutput],
              present: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.stack([self.proj[m](outputs[m].pooled) for m in self.modalities], dim=1)  # [B, M, H]
        mask = presence_matrix(outputs, present, self.modalities)  # [B, M]
        if self.gated:
            scores = torch.stack([self.gates[m](feats[:, i]) for i, m in enumerate(self.modalities)], dim=1)
        else:
            scores = torch.zeros_like(feats)  # [B, M, H]
        # Softmax over the modalities, separately for every feature.
        weights = masked_softmax(rearrange(scores, "b m h -> b h m"), rearrange(mask, "b m -> b 1 m"))
        weights = rearrange(weights, "b h m -> b m h")
        return (weights.to(feats.dtype) * feats).sum(1), weights  # [B, H], [B, M, H]

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.mlp(self._fuse(outputs, present)[0])  # [B, H] -> [B, out_dim]


def _branch(in_dim: int, hidden_dim: int, num_layers: int, dropout: float) -> nn.Module:
    """LayerNorm then an MLP to ``hidden_dim`` (a single Linear when ``num_layers == 0``)."""
    if num_layers == 0:
        return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden_dim))
    return nn.Sequential(nn.LayerNorm(in_dim), mlp(in_dim, hidden_dim, num_layers, dropout)[0])
