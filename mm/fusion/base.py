"""Pieces every fusion shares: registration, the hidden MLP and presence-aware weighting over modalities."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mm.encoders.base import EncoderOutput
from mm.registry import FUSIONS, signature_settings


def register_fusion(name: str) -> Callable[[type], type]:
    """Class decorator: register a fusion as ``name``. Its settings (the ``fusion`` config section's
    fields it reads) are its constructor's keyword arguments with their defaults, so a new
    hyper-parameter is one constructor argument."""
    def register(cls: type) -> type:
        cls.settings = signature_settings(cls)
        return FUSIONS.register(name, cls)
    return register


def mlp(in_dim: int, hidden_dim: int, num_layers: int, dropout: float) -> tuple[nn.Module, int]:
    """``num_layers`` x (Linear, GELU, Dropout); returns the module and its output size."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)]
        dim = hidden_dim
    return nn.Sequential(*layers), dim


def presence_matrix(outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None,
                    modalities: list[str]) -> torch.Tensor:
    """Which modalities each sample has, as ``Bool[B, M]`` in the order of ``modalities``.

    ``present=None`` means every modality is present. A sample with none present (no input at all)
    counts every modality as present, so that it is fused from its missing embeddings rather than
    from an empty set.
    """
    first = outputs[modalities[0]].pooled
    if present is None:
        return torch.ones(first.shape[0], len(modalities), dtype=torch.bool, device=first.device)
    mask = torch.stack([present[m].to(torch.bool) for m in modalities], dim=1)  # [B, M]
    return mask | ~mask.any(dim=1, keepdim=True)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores [..., M]`` over the entries where ``mask`` (broadcast to it) is True; others get
    exactly 0."""
    return scores.float().masked_fill(~mask, float("-inf")).softmax(dim=-1)
