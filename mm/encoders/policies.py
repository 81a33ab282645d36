"""Trainability policies, the same for every backbone family (BERT, timm ViT, wav2vec2).

- ``frozen``: nothing in the backbone trains; it stays in ``eval()`` and runs under ``no_grad``.
- ``linear_probe``: a frozen backbone; ``build_model`` also drops the fusion MLP, so only a
  linear map of the (layer-normed) pooled features is learned.
- ``last_n``: the top ``n`` blocks plus the final norm train.
- ``gradual``: starts frozen; ``thaw(encoder, k)`` opens the top ``k`` blocks (``k > blocks``
  also opens the embeddings), driven by the training loop on a step or epoch schedule.
- ``lora``: low-rank adapters (peft) on the attention projections (on a CNN such as EfficientNet,
  the pointwise convolutions); the base weights stay frozen.
- ``prompt``: prompt tuning, text only: ``prompt_tokens`` learned vectors in front of the input
  embeddings (``mm.encoders.prompt``); the whole backbone stays frozen. The prompt trains at
  ``optim.backbone_lr`` (prompt tuning wants a large one, e.g. 1e-2 to 3e-1).
- ``full``: everything trains (wav2vec2's convolutional feature encoder stays frozen when
  ``freeze_feature_encoder`` is set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mm.config import ConfigError, check_choice, check_range
from mm.encoders.base import Encoder
from mm.encoders.layers import layer_groups
from mm.encoders.prompt import add_prompt
from mm.registry import ENCODERS, POLICIES


@dataclass
class PolicySettings:
    """How much of a pretrained backbone trains, the same settings for every encoder: the first
    fields of every ``encoders.<modality>`` section (each encoder's settings extend this class)."""

    trainable: str = "frozen"  # a registered policy: frozen | linear_probe | last_n | gradual | lora | prompt | full
    last_n: int = 2  # last_n: top blocks (plus the final norm) that train
    gradual_every: int = 1  # gradual: one more block opens every this many...
    gradual_unit: str = "epoch"  # ...epochs or steps
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)  # empty: per-family defaults
    grad_checkpointing: bool = False  # recompute the backbone's activations in backward (memory for time)

    @staticmethod
    def check(s: Any, key: str, encoder: type[Encoder]) -> None:
        """The policy settings of section ``key`` (``encoders.text``) for the encoder class it picks."""
        check_choice(f"{key}.trainable", s.trainable, list(POLICIES))
        check_choice(f"{key}.gradual_unit", s.gradual_unit, ("epoch", "step"))
        check_range(f"{key}.last_n", s.last_n, 1)
        check_range(f"{key}.gradual_every", s.gradual_every, 1)
        check_range(f"{key}.lora_r", s.lora_r, 1)
        check_range(f"{key}.lora_alpha", s.lora_alpha, 0, open_low=True)
        check_range(f"{key}.lora_dropout", s.lora_dropout, 0, 1, open_high=True)
        if s.trainable == "prompt" and not encoder.prompt_capable:  # prompt tuning prepends to input embeddings
            able = [m for m, kinds in ENCODERS.items() if any(c.prompt_capable for c in kinds.values())]
            raise ConfigError(f"invalid value for '{key}.trainable': 'prompt'; prompt tuning is for "
                              f"{', '.join(able)} encoders only (it prepends learned vectors to input "
                              "token embeddings)")


POLICY_KEYS = frozenset(PolicySettings.__dataclass_fields__)  # the section fields that are not the encoder's own

# Default LoRA targets per family: the attention projections' names in each implementation.
LORA_TARGETS = {
    "bert": ["query", "value"],  # transformers BertSelfAttention
    "vit": ["qkv"],  # timm Attention (fused q, k, v)
    "wav2vec2": ["q_proj", "v_proj"],  # transformers Wav2Vec2Attention
    "efficientnet": ["conv_pw", "conv_pwl"],  # timm EfficientNet blocks' pointwise (1x1) convolutions
}


def apply_policy(encoder: Encoder, policy: str, *, last_n: int = 2, lora_r: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.0, lora_targets: Sequence[str] = (), prompt_tokens: int | None = None) -> None:
    """Set which backbone parameters of ``encoder`` train (see the module docstring): the backbone is
    first frozen (``full``: opened), then the registered policy acts on it.

    ``prompt_tokens`` defaults to the encoder's own setting (``encoders.text.prompt_tokens``).
    """
    act = POLICIES[policy]
    encoder.set_trainable("full" if policy == "full" else "frozen")
    act(encoder, last_n=last_n, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=lora_targets, prompt_tokens=prompt_tokens)
    encoder.policy = policy
    encoder.thawed = 0
    encoder.train(encoder.training)


def _register(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A policy: ``act(encoder, **settings)`` applied to a frozen backbone (``full``: an open one)."""
    return POLICIES.register(name)


@_register("frozen")
def _frozen(encoder: Encoder, **_: Any) -> None:
    """Nothing trains."""


@_register("linear_probe")
def _linear_probe(encoder: Encoder, **_: Any) -> None:
    """Nothing in the backbone trains; build_model also drops the fusion MLP."""


@_register("last_n")
def _last_n(encoder: Encoder, *, last_n: int, **_: Any) -> None:
    thaw(encoder, last_n)


@_register("gradual")
def _gradual(encoder: Encoder, **_: Any) -> None:
    """Starts frozen; the training loop thaws blocks on its schedule."""


@_register("lora")
def _lora(encoder: Encoder, *, lora_r: int, lora_alpha: int, lora_dropout: float, lora_targets: Sequence[str],
          **_: Any) -> None:
    add_lora(encoder, lora_r, lora_alpha, lora_dropout, lora_targets)


@_register("prompt")
def _prompt(encoder: Encoder, *, prompt_tokens: int | None, **_: Any) -> None:
    add_prompt(encoder, prompt_tokens if prompt_tokens is not None else getattr(encoder, "prompt_tokens", 20))


@_register("full")
def _full(encoder: Encoder, **_: Any) -> None:
    """Everything trains (set before the policy acts)."""


def thaw(encoder: Encoder, k: int) -> list[str]:
    """Make the top ``k`` blocks and the final norm trainable (``k > blocks`` adds the
    embeddings); returns the names of the parameters that changed from frozen to trainable."""
    groups = layer_groups(encoder.backbone)
    names = set()
    if k > 0:
        names.update(groups.final)
        for block in groups.blocks[max(0, len(groups.blocks) - k):]:
            names.update(block)
    if k > len(groups.blocks):
        names.update(groups.embeddings)
    skip = "feature_extractor." if getattr(encoder, "freeze_feature_encoder", False) else None
    changed = []
    for name, p in encoder.backbone.named_parameters():
        if name in names and not p.requires_grad and not (skip and name.startswith(skip)):
            p.requires_grad_(True)
            changed.append(name)
    encoder.thawed = k
    encoder.train(encoder.training)
    return changed


def gradual_blocks(t: int, every: int) -> int:
    """Blocks open after ``t`` steps or epochs when one more opens every ``every``: ``t // every``."""
    return t // every if every > 0 else 0


def lora_family(encoder: Encoder) -> str:
    module_names = {name.rsplit(".", 1)[-1] for name, _ in encoder.backbone.named_modules()}
    for family, targets in LORA_TARGETS.items():
        if set(targets) <= module_names:
            return family
    raise ValueError(f"{type(encoder.backbone).__name__}: no default LoRA targets; set lora_targets")


def add_lora(encoder: Encoder, r: int, alpha: int, dropout: float, targets: Sequence[str] = ()) -> None:
    """Inject peft LoRA adapters into ``encoder.backbone``; only the adapters train."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(targets) or LORA_TARGETS[lora_family(encoder)]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    encoder.backbone = inject_adapter_in_model(config, encoder.backbone)
    for name, p in encoder.backbone.named_parameters():
        p.requires_grad_("lora_" in name)


def enable_grad_checkpointing(encoder: Encoder) -> None:
    """Recompute the backbone's activations during backward instead of storing them: memory for
    about one more forward of compute. Through the library's own switch: Hugging Face's
    ``gradient_checkpointing_enable`` (BERT, wav2vec2; non-reentrant) or timm's
    ``set_grad_checkpointing`` (ViT, EfficientNet). It only acts where the backbone trains.

    Raises:
        ValueError: the backbone offers neither switch.
    """
    backbone = encoder.backbone
    if hasattr(backbone, "gradient_checkpointing_enable"):
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(backbone, "set_grad_checkpointing"):
        backbone.set_grad_checkpointing(True)
    else:
        raise ValueError(f"{type(backbone).__name__} has no gradient checkpointing switch "
                         f"(encoders.{encoder.modality}.grad_checkpointing)")
