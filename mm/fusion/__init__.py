"""Fusion modules: ``(dict[str, EncoderOutput], presence masks) -> Tensor[B, out_dim]``.

Every fusion iterates modalities in sorted order and keeps per-modality modules in an
``nn.ModuleDict`` / ``nn.ParameterDict``, so results never depend on dict insertion order. A fusion
registers itself (``@register_fusion("name")``, ``mm.fusion.base``); its constructor takes ``in_dims``
and declares only the hyper-parameters it uses, with their defaults: the ``fusion`` config section
is assembled from them (``mm.config.fusion_section``), and ``build_fusion`` hands each fusion those
it declares. A new hyper-parameter is therefore one constructor argument.

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

from mm.config import ConfigError, check_choice, check_range
from mm.fusion.attention import AttentionFusion
from mm.fusion.base import mlp, register_fusion
from mm.fusion.concat import ConcatFusion
from mm.fusion.tensor import LowRankFusion, TensorFusion
from mm.fusion.tokens import TextTokensFusion
from mm.fusion.weighted import LATE_WEIGHTS, GatedFusion, LateFusion
from mm.registry import CHECKS, FUSIONS

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
    "register_fusion",
]


def declared_arguments(fusion: type[nn.Module]) -> list[str]:
    """The keyword arguments a fusion's constructor declares, in order, ``in_dims`` left out."""
    params = list(inspect.signature(fusion).parameters.values())[1:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def known_arguments() -> frozenset[str]:
    """Every registered fusion's hyper-parameters: the ``fusion`` section's fields but ``name`` and
    ``modality_dropout`` (tested equal); each fusion receives those its own constructor declares."""
    return frozenset(a for cls in FUSIONS.values() for a in declared_arguments(cls))


KNOWN_ARGUMENTS = known_arguments()  # those of the built-in fusions


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
    fusion = FUSIONS[name]
    declared = declared_arguments(fusion)
    known = known_arguments()
    unknown = sorted(set(fields) - set(declared) - known)
    if unknown:
        raise TypeError(f"unknown fusion argument(s) {unknown} for {name!r}; it takes {declared}, "
                        f"the fusions take {sorted(known)}")
    return fusion(in_dims, **{k: v for k, v in fields.items() if k in declared})


@CHECKS.register("fusion")
def check_fusion(cfg: Any) -> None:
    """The ``fusion`` section: its choices and sizes, the attention widths that must split evenly into
    heads, and what some fusions need of the encoders."""
    fusion = cfg.fusion
    check_choice("fusion.late_weights", fusion.late_weights, LATE_WEIGHTS)
    probes = [m for m in cfg.data.modalities if getattr(cfg.encoders, m).trainable == "linear_probe"]
    if probes and fusion.name != "concat":  # one linear map of the frozen features: no fusion to learn
        raise ConfigError(f"invalid value for 'encoders.{probes[0]}.trainable': 'linear_probe'; "
                          f"needs fusion.name=concat, not {fusion.name!r}")
    if fusion.name == "text_tokens" and "text" not in cfg.data.modalities:
        raise ConfigError(f"invalid value for 'fusion.name': 'text_tokens'; needs the text modality, "
                          f"not only {cfg.data.modalities}")
    check_range("fusion.hidden_dim", fusion.hidden_dim, 1)
    # attention is a transformer (at least one layer); the others take 0 (no MLP / no cross-attention).
    check_range("fusion.num_layers", fusion.num_layers, 1 if fusion.name == "attention" else 0)
    check_range("fusion.dropout", fusion.dropout, 0, 1, open_high=True)
    check_range("fusion.num_heads", fusion.num_heads, 1)
    check_range("fusion.rank", fusion.rank, 1)
    check_range("fusion.tensor_dim", fusion.tensor_dim, 1)
    # Multi-head attention splits hidden_dim into num_heads equal parts: attention always attends,
    # text_tokens only with cross-attention layers and another modality to attend to.
    attends = fusion.name == "attention" or (
        fusion.name == "text_tokens" and fusion.num_layers > 0 and set(cfg.data.modalities) != {"text"})
    if attends and fusion.hidden_dim % fusion.num_heads:
        raise ConfigError(f"invalid value for 'fusion.hidden_dim': {fusion.hidden_dim}; fusion.name={fusion.name} "
                          f"needs a multiple of 'fusion.num_heads' ({fusion.num_heads})")
