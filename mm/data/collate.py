"""Batch assembly with dynamic padding, owned by the encoders' own preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class Collator:
    """Turns a list of samples into the batch dict every model consumes.

    ``{"text": {...}, "image": {"pixel_values"}, "audio": {...}, "present": {m: Bool[B]},
    "label": Long[B], "index": Long[B]}``. Text is tokenized and audio padded to the longest item
    in the batch by the encoders' tokenizer / feature extractor. A sample lacking a modality gets a
    placeholder (empty text, zero image, short silence) and ``present[m] = False``.

    Args:
        modalities: the modalities of the model.
        encoders: modality -> encoder, providing ``tokenize`` (text) and ``featurize`` (audio).
        image_shape: ``(C, H, W)`` of the image encoder's input, for placeholders.
    """

    def __init__(self, modalities: Sequence[str], encoders: dict[str, Any], image_shape: Sequence[int] | None = None):
        self.modalities = sorted(modalities)
        self.encoders = encoders
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "label": torch.tensor([s["label"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples]),
            "present": {},
        }
        for m in self.modalities:
            present = torch.tensor([m in s for s in samples])
            batch["present"][m] = present
            if m == "text":
                batch["text"] = self.encoders["text"].tokenize([s.get("text", "") for s in samples])
            elif m == "image":
                shape = next((s["image"].shape for s in samples if "image" in s), self.image_shape)
                zeros = torch.zeros(shape)
                batch["image"] = {"pixel_values": torch.stack([s.get("image", zeros) for s in samples])}
            elif m == "audio":
                silence = torch.zeros(400)
                batch["audio"] = self.encoders["audio"].featurize([s.get("audio", silence) for s in samples])
        return batch
