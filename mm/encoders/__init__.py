"""Modality encoders: one pretrained backbone each, owning its modality's data end to end.

``ENCODERS`` maps each modality to its encoder kinds (the first is the default); a config section
``encoders.<modality>`` picks one with ``encoder: <kind>``, and ``build_encoder`` passes it only the
settings its constructor declares. Every encoder returns an ``EncoderOutput(tokens, mask, pooled)``.
"""

from __future__ import annotations

import inspect
from typing import Any

from mm.encoders.audio import AudioEncoder
from mm.encoders.base import Encoder, EncoderOutput, masked_mean
from mm.encoders.image import ImageEncoder
from mm.encoders.spectrogram import SpectrogramEncoder
from mm.encoders.text import TextEncoder

ENCODERS: dict[str, dict[str, type[Encoder]]] = {
    "text": {"transformers": TextEncoder},
    "image": {"timm": ImageEncoder},
    "audio": {"spectrogram": SpectrogramEncoder, "wav2vec2": AudioEncoder},
}

__all__ = [
    "ENCODERS",
    "AudioEncoder",
    "Encoder",
    "EncoderOutput",
    "ImageEncoder",
    "SpectrogramEncoder",
    "TextEncoder",
    "build_encoder",
    "encoder_class",
    "masked_mean",
]


def encoder_class(modality: str, kind: str | None = None) -> type[Encoder]:
    """The encoder class of ``kind`` (default: the modality's first) for ``modality``."""
    if modality not in ENCODERS:
        raise ValueError(f"unknown modality {modality!r}; valid: {sorted(ENCODERS)}")
    kinds = ENCODERS[modality]
    kind = kind or next(iter(kinds))
    if kind not in kinds:
        raise ValueError(f"unknown {modality} encoder {kind!r}; valid: {list(kinds)}")
    return kinds[kind]


def build_encoder(modality: str, kind: str | None = None, **settings: Any) -> Encoder:
    """Build an encoder from its config section's settings, passing only those it declares.

    Args:
        modality: a key of ``ENCODERS``.
        kind: the encoder kind (``spectrogram``, ``wav2vec2``, ...); default: the modality's first.
        **settings: ``source``, ``trainable`` and any of the class's constructor arguments; others
            (another kind's settings in the same config section) are ignored.
    """
    cls = encoder_class(modality, kind)
    declared = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in settings.items() if k in declared})
