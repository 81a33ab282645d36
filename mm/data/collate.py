"""Batch assembly with dynamic padding, owned by the encoders' own preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mm.labels import align_word_labels


class Collator:
    """Turns a list of samples into the batch dict every model consumes.

    ``{"text": {...}, "image": {"pixel_values"}, "audio": {...}, "present": {m: Bool[B]},
    "label": Long[B], "index": Long[B]}``. Text is tokenized and audio padded to the longest item
    in the batch by the encoders' tokenizer / feature extractor. A sample lacking a modality gets a
    placeholder (empty text, zero image, short silence) and ``present[m] = False``.

    For the ``token`` head, samples carry ``words`` and word-level tag ids: the words are tokenized
    as pre-split words and ``label`` becomes ``Long[B, T]``, each word's tag on its first word
    piece and -100 (ignored) on other pieces, special tokens and padding.

    Args:
        modalities: the modalities of the model.
        encoders: modality -> encoder, providing ``tokenize`` (text) and ``featurize`` (audio).
        image_shape: ``(C, H, W)`` of the image encoder's input, for placeholders.
        head: the head's name; ``token`` aligns word tags to word pieces.
    """

    def __init__(self, modalities: Sequence[str], encoders: dict[str, Any], image_shape: Sequence[int] | None = None,
                 head: str = "classification"):
        self.modalities = sorted(modalities)
        self.encoders = encoders
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.head = head
        if head == "token" and "text" not in self.modalities:
            raise ValueError("the token head tags the words of the text: add 'text' to the modalities")

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            # token tagging: the word-piece labels are aligned below, with the text
            "label": None if self.head == "token" else torch.tensor([s["label"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples]),
            "present": {},
        }
        for m in self.modalities:
            present = torch.tensor([m in s for s in samples])
            batch["present"][m] = present
            if m == "text" and self.head == "token":
                batch["text"], word_ids = self.encoders["text"].tokenize_words([s["words"] for s in samples])
                aligned = [align_word_labels(ids, s["label"]) for ids, s in zip(word_ids, samples, strict=True)]
                batch["label"] = torch.tensor(aligned)  # [B, T]
            elif m == "text":
                batch["text"] = self.encoders["text"].tokenize([s.get("text", "") for s in samples])
            elif m == "image":
                shape = next((s["image"].shape for s in samples if "image" in s), self.image_shape)
                zeros = torch.zeros(shape)
                batch["image"] = {"pixel_values": torch.stack([s.get("image", zeros) for s in samples])}
            elif m == "audio":
                silence = torch.zeros(400)
                batch["audio"] = self.encoders["audio"].featurize([s.get("audio", silence) for s in samples])
        return batch
