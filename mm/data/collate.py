"""Batch assembly with dynamic padding, owned by the encoders' own preprocessing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mm.labels import align_word_labels

TEXT = "text"  # the modality whose words the token head tags


class Collator:
    """Turns a list of samples into the batch dict every model consumes.

    ``{m: <encoder m's inputs>, ..., "present": {m: Bool[B]}, "label": Long[B], "index": Long[B]}``.
    Each modality is batched by its own encoder (``Encoder.collate``: tokenized, padded, stacked),
    which also gives an absent value its placeholder; ``present[m]`` says which samples had it.

    For the ``token`` head, samples carry ``words`` and word-level tag ids: the words are tokenized
    as pre-split words and ``label`` becomes ``Long[B, T]``, each word's tag on its first word
    piece and -100 (ignored) on other pieces, special tokens and padding; ``word_shape`` (``Long[B, T]``)
    holds each piece's word-shape id where the text encoder gives them (``mm.encoders.word_features``).

    Args:
        modalities: the modalities of the model.
        encoders: modality -> encoder.
        head: the head's name; ``token`` aligns word tags to word pieces.
    """

    def __init__(self, modalities: Sequence[str], encoders: Mapping[str, Any], head: str = "classification"):
        self.modalities = sorted(modalities)
        self.encoders = encoders
        self.head = head
        if head == "token" and TEXT not in self.modalities:
            raise ValueError("the token head tags the words of the text: add 'text' to the modalities")

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            # token tagging: the word-piece labels are aligned below, with the text
            "label": None if self.head == "token" else torch.tensor([s["label"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples]),
            "present": {},
        }
        for m in self.modalities:
            batch["present"][m] = torch.tensor([m in s for s in samples], dtype=torch.bool)
            if m == TEXT and self.head == "token":
                words = [s["words"] for s in samples]
                batch[m], word_ids = self.encoders[m].tokenize_words(words)
                if hasattr(self.encoders[m], "word_shapes"):  # casing features for the token head
                    batch["word_shape"] = self.encoders[m].word_shapes(words, word_ids)  # [B, T]
                aligned = [align_word_labels(ids, s["label"]) for ids, s in zip(word_ids, samples, strict=True)]
                batch["label"] = torch.tensor(aligned)  # [B, T]
            else:
                batch[m] = self.encoders[m].collate([s.get(m) for s in samples])
        return batch
