"""Modality encoders: one pretrained backbone each, owning its modality's data end to end.

Each encoder class registers itself (``@register_encoder("kind")``, ``mm.registry``) as a kind of
its ``modality`` and carries its settings dataclass; ``ENCODERS[modality]`` maps that modality's
kinds to their classes (the default first). A config section ``encoders.<modality>`` picks one with
``name: <kind>``, and ``build_encoder`` passes it only the settings its constructor declares. Every
encoder returns an ``EncoderOutput(tokens, mask, pooled)``.

The built-in encoders register by being imported here: a new encoder file adds one line below.
"""

from __future__ import annotations

import inspect
from typing import Any

# The built-in encoders register on import, modalities in this order (the config's and the dataset
# checks'): text, image, audio (spectrogram is audio's default kind, wav2vec2 the other).
# isort: off
from mm.encoders import text  # noqa: F401
from mm.encoders import image  # noqa: F401
from mm.encoders import audio, spectrogram  # noqa: F401
# isort: on
from mm.encoders.audio import AudioEncoder
from mm.encoders.base import Encoder, EncoderOutput, masked_mean
from mm.encoders.image import ImageEncoder
from mm.encoders.spectrogram import SpectrogramEncoder
from mm.encoders.text import TextEncoder
from mm.registry import ENCODERS, register_encoder

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
    "register_encoder",
]


def encoder_class(modality: str, kind: str | None = None) -> type[Encoder]:
    """The encoder class of ``kind`` (default: the modality's first) for ``modality``."""
    return ENCODERS.kind(modality, kind)


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
