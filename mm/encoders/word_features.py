"""Word-shape (casing) features for token tagging with an uncased or character-blind text encoder.

An uncased tokenizer (all-MiniLM-L6-v2, ``bert-base-uncased``) lowercases its input, so "Paris"
and "paris", "US" and "us" reach the model as the same pieces: much of the evidence for a name is
gone. The classic remedy (as in the BiLSTM-CRF taggers of Lample et al. 2016 and Chiu & Nichols
2016) is a small embedding of each word's shape, joined to the word's vector before the tag layer.

``word_shape(word)`` sorts a word into one of ``SHAPES``; the collator puts each word's shape id on
all of its pieces (``piece_shapes``; 0 on special tokens and padding); ``WordFeatures`` embeds them.
``lowercases(tokenizer)`` tells whether a tokenizer folds case, which decides the default
(``encoders.text.word_features``: on where it does, off where the checkpoint is cased).
"""

from __future__ import annotations

import torch
from torch import nn

# Index 0 is "no word" (special tokens, padding); a word's shape is one of the others.
SHAPES = ("none", "lower", "title", "upper", "single_upper", "mixed", "digits", "has_digit", "punct", "other",
          "title_first")
SHAPE_DIM = 16  # size of the shape embedding joined to each word's vector


def word_shape(word: str, first: bool = False) -> int:
    """The id in ``SHAPES`` of a word's shape.

    ``lower`` (paris), ``title`` (Paris; ``title_first`` when it opens the sentence, where a capital
    says less), ``upper`` (EU, U.S.), ``single_upper`` (A), ``mixed`` (McDonald, iPhone), ``digits``
    (1996), ``has_digit`` (1-0, 12.5, 3rd), ``punct`` (",", "--"), ``other`` (anything else: symbols,
    scripts without case).
    """
    letters = [c for c in word if c.isalpha()]
    if word.isdigit():
        return SHAPES.index("digits")
    if any(c.isdigit() for c in word):
        return SHAPES.index("has_digit")
    if not letters:
        return SHAPES.index("punct") if all(not c.isalnum() and not c.isspace() for c in word) and word else SHAPES.index("other")
    cased = [c for c in letters if c.isupper() or c.islower()]
    if not cased:
        return SHAPES.index("other")
    if all(c.islower() for c in cased):
        return SHAPES.index("lower")
    if all(c.isupper() for c in cased):
        return SHAPES.index("single_upper" if len(cased) == 1 else "upper")
    if cased[0].isupper() and all(c.islower() for c in cased[1:]):
        return SHAPES.index("title_first" if first else "title")
    return SHAPES.index("mixed")


def piece_shapes(words: list[str], word_ids: list[int | None]) -> list[int]:
    """Each word piece's shape id: its word's (``word_ids`` from the tokenizer), 0 where no word."""
    shapes = [word_shape(w, first=i == 0) for i, w in enumerate(words)]
    return [0 if w is None else shapes[w] for w in word_ids]


def lowercases(tokenizer) -> bool:
    """Whether a tokenizer folds case: its ``do_lower_case`` setting where it has one, else whether
    "A" and "a" come out as the same pieces."""
    for source in (tokenizer, getattr(tokenizer, "init_kwargs", {})):
        value = source.get("do_lower_case") if isinstance(source, dict) else getattr(source, "do_lower_case", None)
        if value is not None:
            return bool(value)
    return tokenizer("A", add_special_tokens=False)["input_ids"] == tokenizer("a", add_special_tokens=False)["input_ids"]


class WordFeatures(nn.Module):
    """Embeds per-piece shape ids ``Long[B, T]`` into ``[B, T, dim]`` (row 0, "no word", stays zero)."""

    def __init__(self, dim: int = SHAPE_DIM):
        super().__init__()
        self.dim = dim
        self.embedding = nn.Embedding(len(SHAPES), dim, padding_idx=0)

    def forward(self, shapes: torch.Tensor) -> torch.Tensor:
        return self.embedding(shapes)
