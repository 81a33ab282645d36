"""Modality encoders: one pretrained backbone each, with its own preprocessing.

``build_encoder("text", source="minilm")`` builds from a literal registry; every encoder returns an
``EncoderOutput(tokens, mask, pooled)``.
"""

from __future__ import annotations

from typing import Any

from mm.encoders.audio import AudioEncoder
from mm.encoders.base import Encoder, EncoderOutput, masked_mean
from mm.encoders.image import ImageEncoder
from mm.encoders.text import TextEncoder

ENCODERS: dict[str, type[Encoder]] = {"text": TextEncoder, "image": ImageEncoder, "audio": AudioEncoder}

__all__ = [
    "ENCODERS",
    "AudioEncoder",
    "Encoder",
    "EncoderOutput",
    "ImageEncoder",
    "TextEncoder",
    "build_encoder",
    "masked_mean",
]


def build_encoder(modality: str, **kwargs: Any) -> Encoder:
    """Build the encoder of a modality.

    Args:
        modality: ``text``, ``image`` or ``audio``.
        **kwargs: the encoder's constructor arguments (``source``, ``trainable``, ...).
    """
    if modality not in ENCODERS:
        raise ValueError(f"unknown modality {modality!r}; valid: {sorted(ENCODERS)}")
    return ENCODERS[modality](**kwargs)
