"""The contract every encoder keeps: it owns its modality end to end.

An encoder is the one place that knows its modality. Besides ``encode`` (inputs -> ``EncoderOutput``)
and its trainability it answers every question the data, cache, evaluation, export and predict code
would otherwise answer by naming a modality:

- ``load(value, root, train)``: one manifest value (a string, or a file path relative to the
  dataset folder when ``media`` is True) decoded into a sample value (tensor, wave, text);
- ``collate(values)``: a list of sample values, ``None`` where a sample lacks the modality, padded
  into the encoder's input dict; a missing value gets a placeholder (the model replaces its output
  by a learned missing embedding), so a batch where no sample has the modality is fine too;
- ``length(value, root)``: how long one manifest value will be once collated (text: word pieces;
  audio: samples), read cheaply (tokenizer, file header), or None where length does not matter
  (pictures): what length-grouped batches sort by (``data.bucket_by_length``);
- ``fingerprint()``: the preprocessing settings that decide its outputs (the feature-cache key);
- ``corrupt(inputs, strength, generator)``: the robustness-noise of growing strength;
- ``export(out_dir, backbone)``: the backbone and preprocessing in the layout ``source`` loads.

The class answers what is asked before any model exists: ``settings`` (its config section's
dataclass, whose ``check`` validates it), ``check_source``, ``media``, ``check_value`` and
``decode_file`` (a manifest value checked or a file decoded without a model, for the dataset
checks), ``mixable`` and ``picture_keys`` (what mixup and cutmix may do to its inputs).

So a new modality is one encoder file that registers its class (``@register_encoder("kind")``,
``mm.registry``); the ``encoders.<modality>`` config section is assembled from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mm.config import ConfigError
from mm.data.errors import MediaError
from mm.run.checkpoint import weights_digest

TRAINABLE_POLICIES = ("frozen", "full")
FROZEN_POLICIES = ("frozen", "linear_probe")  # the policies that never train the backbone


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch.

    Attributes:
        tokens: ``[B, T, D]`` token / patch / frame features.
        mask: ``[B, T]`` bool, True where a token is real (not padding).
        pooled: ``[B, D]`` one vector per sample.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


# A pytree node, so that torch utilities that walk a module's outputs find its tensors (FSDP2
# registers its pre-backward hooks on them; without this it cannot re-gather an encoder's weights
# for backward).
torch.utils._pytree.register_dataclass(EncoderOutput)


def add_gaussian(inputs: dict[str, torch.Tensor], key: str, strength: float,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A copy of ``inputs`` with Gaussian noise of standard deviation ``2 * strength`` on ``inputs[key]``
    (normalised pictures, waves, spectrograms: ``strength`` 0.5 is then noise as strong as the signal)."""
    x = inputs[key]
    return {**inputs, key: x + 2 * strength * torch.randn(x.shape, generator=generator)}


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens [B,T,D]`` over the positions where ``mask [B,T]`` is True."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # [B, T, 1]
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class Encoder(nn.Module):
    """Base for the modality encoders: wraps ``self.backbone`` and applies a trainability policy.

    Subclasses set ``self.backbone`` and ``self.out_dim``, implement ``encode(inputs)`` and call
    ``self.set_trainable(policy)`` at the end of ``__init__``. A frozen backbone has
    ``requires_grad`` off, stays in ``eval()`` while the model trains and runs under ``no_grad``.
    """

    modality: ClassVar[str] = ""  # the manifest key and the config section it reads
    settings: ClassVar[type]  # its config section's dataclass (a PolicySettings with a ``check``)
    media: ClassVar[bool] = False  # manifest values are files relative to the dataset folder
    mixable: ClassVar[bool] = True  # mixup may blend its inputs (token ids cannot be blended)
    picture_keys: ClassVar[tuple[str, ...]] = ()  # input keys holding pictures [..., H, W]: cutmix pastes boxes there
    source_library: ClassVar[str | None] = None  # what a valid source names: "hf", "timm" (mm.encoders.sources)
    prompt_capable: ClassVar[bool] = False  # has input embeddings a soft prompt can precede (trainable=prompt)
    backbone: nn.Module
    out_dim: int
    augment: bool = False  # random training-time preprocessing: never served from the feature cache

    # -- asked of the class, before any model exists ----------------------------------------------
    @classmethod
    def check_source(cls, source: str, key: str) -> None:
        """Fail fast (``ConfigError`` naming ``key``) on a source that cannot load, touching no hub."""
        from mm.encoders.sources import SourceError, check_source

        try:
            check_source(source, cls.source_library)
        except SourceError as err:
            raise ConfigError(f"invalid value for '{key}': {err}") from None

    @classmethod
    def check_value(cls, value: Any) -> list[tuple[str, str]]:
        """A non-media manifest value checked without a model: ``MediaError`` when it cannot be read,
        else the warnings worth giving as ``(kind, reason)``. By default any JSON value is accepted."""
        return []

    @classmethod
    def decode_file(cls, path: Path) -> list[str]:
        """A media file decoded fully, as ``load`` decodes it, without a model: ``MediaError`` when it
        cannot be, else notes on what the conversion did (for ``scripts/validate_data.py``)."""
        raise MediaError(f"{cls.__name__} has no decode_file for {path}")

    # -- the modality's data contract (see the module docstring) --------------------------------
    def load(self, value: Any, root: Path, train: bool = False) -> Any:
        """One manifest value decoded into a sample value; ``train`` turns on augmentation.

        A media value is read through ``mm.data.media`` (``media_path``, ``read_image``,
        ``read_audio``), so a bad one raises a ``MediaError`` naming the path and the reason."""
        raise NotImplementedError(f"{type(self).__name__}.load")

    def collate(self, values: list[Any]) -> dict[str, torch.Tensor]:
        """Sample values (``None`` where missing) padded into this encoder's input dict."""
        raise NotImplementedError(f"{type(self).__name__}.collate")

    def length(self, value: Any, root: Path) -> int | None:
        """The padded size one manifest value takes in a batch (None: every value is the same size)."""
        return None

    def fingerprint(self) -> dict[str, Any]:
        """The preprocessing settings that decide the outputs for given weights (feature-cache key)."""
        raise NotImplementedError(f"{type(self).__name__}.fingerprint")

    def corrupt(self, inputs: dict[str, torch.Tensor], strength: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A copy of a batch's inputs with noise of ``strength`` (0 = none) for robustness tests."""
        raise NotImplementedError(f"{type(self).__name__}.corrupt")

    def export(self, out_dir: Path, backbone: nn.Module) -> None:
        """Write ``backbone`` (this encoder's, adapters merged) and the preprocessing into ``out_dir``."""
        raise NotImplementedError(f"{type(self).__name__}.export")

    # -- trainability ----------------------------------------------------------------------------

    def set_trainable(self, policy: str) -> None:
        if policy not in TRAINABLE_POLICIES:
            raise ValueError(f"unknown trainable policy {policy!r}; valid: {list(TRAINABLE_POLICIES)}")
        self.policy = policy
        for p in self.backbone.parameters():
            p.requires_grad_(policy == "full")
        self.train(self.training)

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    @property
    def frozen_for_run(self) -> bool:
        """Frozen now and, by its policy, for the whole run (``gradual`` starts frozen but thaws):
        its backbone then always holds exactly the weights it was loaded with."""
        return getattr(self, "policy", None) in FROZEN_POLICIES and self.frozen

    def weights_digest(self) -> str:
        """``mm.run.checkpoint.weights_digest`` of the backbone, recomputed only when a weight changed:
        the memo is keyed on every tensor's storage and version counter, which any in-place write
        (an optimizer step, ``load_state_dict``, an edit under ``no_grad``) bumps."""
        stamp = tuple((k, t.data_ptr(), t._version) for k, t in self.backbone.state_dict().items())
        if getattr(self, "_digest_stamp", None) != stamp:
            self._digest, self._digest_stamp = weights_digest(self.backbone), stamp
        return self._digest

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen: no dropout, no batch-norm updates, ever
        return self

    def encode(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.encode(inputs)
