"""Fusion modules: ``(dict[str, EncoderOutput], presence masks) -> Tensor[B, out_dim]``.

Every fusion iterates modalities in sorted order and keeps per-modality modules in an
``nn.ModuleDict`` / ``nn.ParameterDict``, so results never depend on dict insertion order. Every
fusion takes the same keyword arguments (all fields of ``FusionConfig`` but ``name``), ignoring
those it does not use, so ``build_fusion`` can pass the whole config and a typo is still an error.

- ``concat``: layer-normed pooled features concatenated, then an MLP (early fusion).
- ``late``: per-modality MLPs averaged over present modalities; cannot model interactions.
- ``gated``: per-feature softmax gates over present modalities' projections (GMU), then an MLP.
- ``attention``: transformer over all modalities' tokens; output = a fusion token's state.
- ``tensor``: Tensor Fusion Network, outer product of ``[h_m; 1]``, then an MLP.
- ``lowrank``: Low-rank Multimodal Fusion, ``rank`` factorised terms of the tensor product.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mm.fusion.attention import AttentionFusion
from mm.fusion.base import mlp
from mm.fusion.concat import ConcatFusion
from mm.fusion.tensor import LowRankFusion, TensorFusion
from mm.fusion.weighted import GatedFusion, LateFusion
from mm.fusion_tokens import TextTokensFusion

FUSIONS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion,
    "late": LateFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
    "tensor": TensorFusion,
    "lowrank": LowRankFusion,
    "text_tokens": TextTokensFusion,  # [B, T_text, D] for the token head
}

__all__ = [
    "FUSIONS",
    "AttentionFusion",
    "ConcatFusion",
    "GatedFusion",
    "LateFusion",
    "LowRankFusion",
    "TensorFusion",
    "build_fusion",
    "mlp",
]


def build_fusion(name: str, in_dims: dict[str, int], **kwargs: Any) -> nn.Module:
    """Build a fusion from the registry.

    Args:
        name: one of ``FUSIONS``.
        in_dims: modality -> feature size of its encoder.
        **kwargs: the fusion's keyword arguments (``hidden_dim``, ``num_layers``, ``dropout``, ``rank``,
            ``num_heads``, ``late_weights``, ``tensor_dim``); an unknown one is a ``TypeError``.

    Returns:
        The fusion module; its output size is ``.out_dim``.
    """
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; valid: {sorted(FUSIONS)}")
    return FUSIONS[name](in_dims, **kwargs)
