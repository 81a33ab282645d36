"""Fusion modules: ``(dict[str, EncoderOutput], presence masks) -> Tensor[B, out_dim]``.

Every fusion iterates modalities in sorted order and keeps per-modality modules in an
``nn.ModuleDict`` / ``nn.ParameterDict``, so results never depend on dict insertion order. A fusion's
constructor takes ``in_dims`` and declares only the hyper-parameters it uses; ``build_fusion`` hands
it those of the ``FusionConfig`` fields it is given. A new hyper-parameter is therefore one
``FusionConfig`` field plus the constructor argument of the fusion that uses it.

- ``concat``: layer-normed pooled features concatenated, then an MLP (early fusion).
- ``late``: per-modality MLPs averaged over present modalities; cannot model interactions.
- ``gated``: per-feature softmax gates over present modalities' projections (GMU), then an MLP.
- ``attention``: transformer over all modalities' tokens; output = a fusion token's state.
- ``tensor``: Tensor Fusion Network, outer product of ``[h_m; 1]``, then an MLP.
- ``lowrank``: Low-rank Multimodal Fusion, ``rank`` factorised terms of the tensor product.
- ``text_tokens``: per text token, ``[B, T_text, out_dim]``, for the token head (NER).
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from mm.fusion.attention import AttentionFusion
from mm.fusion.base import mlp
from mm.fusion.concat import ConcatFusion
from mm.fusion.tensor import LowRankFusion, TensorFusion
from mm.fusion.tokens import TextTokensFusion
from mm.fusion.weighted import GatedFusion, LateFusion

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
    "KNOWN_ARGUMENTS",
    "FUSIONS",
    "AttentionFusion",
    "ConcatFusion",
    "GatedFusion",
    "LateFusion",
    "LowRankFusion",
    "TensorFusion",
    "TextTokensFusion",
    "build_fusion",
    "declared_arguments",
    "mlp",
]


def declared_arguments(fusion: type[nn.Module]) -> list[str]:
    """The keyword arguments a fusion's constructor declares, in order, ``in_dims`` left out."""
    params = list(inspect.signature(fusion).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


# Every fusion's hyper-parameters: what a config may hold (``FusionConfig``'s fields, tested equal);
# each fusion receives those its own constructor declares.
KNOWN_ARGUMENTS = frozenset(a for cls in FUSIONS.values() for a in declared_arguments(cls))


def build_fusion(name: str, in_dims: dict[str, int], **fields: Any) -> nn.Module:
    """Build a fusion from the registry, passing it only the arguments its constructor declares.

    Args:
        name: one of ``FUSIONS``.
        in_dims: modality -> feature size of its encoder.
        **fields: any ``FusionConfig`` fields but ``name`` (``build_model`` passes them all) and any
            argument the fusion declares; the fusion receives those it declares, so ``concat`` never
            sees ``rank``. A name that is neither is a ``TypeError`` (a typo is never ignored).

    Returns:
        The fusion module; its output size is ``.out_dim``.
    """
    if name not in FUSIONS:
        raise ValueError(f"unknown fusion {name!r}; valid: {sorted(FUSIONS)}")
    fusion = FUSIONS[name]
    declared = declared_arguments(fusion)
    unknown = sorted(set(fields) - set(declared) - KNOWN_ARGUMENTS)
    if unknown:
        raise TypeError(f"unknown fusion argument(s) {unknown} for {name!r}; it takes {declared}, "
                        f"the fusions take {sorted(KNOWN_ARGUMENTS)}")
    return fusion(in_dims, **{k: v for k, v in fields.items() if k in declared})
