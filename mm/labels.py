"""Label codecs: how each head's labels are read from manifest rows and turned into numbers.

A codec has ``vocabulary(rows, key)`` (the class list of a training split, sorted; empty for
regression), is built from that list, and has ``encode(value)`` (one row's label -> something
``torch.tensor`` takes) and ``num_outputs`` (the size of the head's output).

- ``classification``: a label is a class name (or number); encoded as the class id.
- ``multilabel``: a label is a list of class names; vocabulary = sorted union; encoded multi-hot.
- ``regression``: a label is a number; encoded as a float; one output.
- ``token``: a label is a list of word-level tags (``B-PER``, ``I-PER``, ``O``) beside a list of
  words under ``tokens``; encoded as tag ids per word. The collate function tokenizes the words and
  moves each word's tag to its first word piece with ``align_word_labels``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100  # label of word pieces that are not scored (cross_entropy's default ignore_index)
TAG_PATTERN = re.compile(r"^(O|[BIES]-.+)$")


class LabelError(ValueError):
    """A label does not fit its head; the message names the row where one is known."""


def label_at(row: dict, dotted: str) -> Any:
    """The value at a dotted key (``labels.match``) of a row, or None."""
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _values(rows: Sequence[dict], key: str) -> list[tuple[str, Any]]:
    """``(where, label)`` of every row; a row without a label is an error naming it."""
    out = []
    for row in rows:
        value = label_at(row, key)
        where = row.get("_where", "?")
        if value is None:
            raise LabelError(f"{where}: no label at key '{key}'")
        out.append((where, value))
    return out


def _sort_key(value: Any) -> tuple[bool, Any]:
    return isinstance(value, str), value


class ClassLabels:
    """One class per sample; the label is encoded as its index in ``classes``."""

    def __init__(self, classes: Sequence):
        self.classes = list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.num_outputs = len(self.classes)

    @staticmethod
    def vocabulary(rows: Sequence[dict], key: str) -> list:
        labels = set()
        for where, value in _values(rows, key):
            if isinstance(value, (list, dict)):
                raise LabelError(f"{where}: label at '{key}' is a {type(value).__name__}, not a class "
                                 "(lists of classes need head.name=multilabel or token)")
            labels.add(value)
        return sorted(labels, key=_sort_key)

    def encode(self, value: Any) -> int:
        if isinstance(value, (list, dict)) or value not in self.index:
            raise LabelError(f"label {value!r} is not one of the {len(self.classes)} training classes")
        return self.index[value]


class MultiLabels:
    """Any number of classes per sample; the label is a list, encoded multi-hot (floats)."""

    def __init__(self, classes: Sequence):
        self.classes = list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.num_outputs = len(self.classes)

    @staticmethod
    def vocabulary(rows: Sequence[dict], key: str) -> list:
        labels = set()
        for where, value in _values(rows, key):
            if not isinstance(value, list):
                raise LabelError(f"{where}: multilabel label at '{key}' must be a list, got {value!r}")
            labels.update(value)
        return sorted(labels, key=_sort_key)

    def encode(self, value: Any) -> list[float]:
        if not isinstance(value, list):
            raise LabelError(f"multilabel label must be a list, got {value!r}")
        hot = [0.0] * len(self.classes)
        for name in value:
            if name not in self.index:
                raise LabelError(f"label {name!r} is not one of the {len(self.classes)} training classes")
            hot[self.index[name]] = 1.0
        return hot


class RegressionLabels:
    """A real number per sample; no vocabulary, one output."""

    def __init__(self, classes: Sequence = ()):
        self.classes: list = []
        self.num_outputs = 1

    @staticmethod
    def vocabulary(rows: Sequence[dict], key: str) -> list:
        for where, value in _values(rows, key):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LabelError(f"{where}: regression label at '{key}' must be a number, got {value!r}")
        return []

    def encode(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LabelError(f"regression label must be a number, got {value!r}")
        return float(value)


class TagLabels:
    """A tag per word (BIO / IOBES, e.g. ``B-PER``); the label is the list of tags."""

    words_key = "tokens"  # rows hold their words here, one per tag

    def __init__(self, classes: Sequence):
        self.classes = list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.num_outputs = len(self.classes)

    @staticmethod
    def vocabulary(rows: Sequence[dict], key: str) -> list:
        tags = set()
        for where, value in _values(rows, key):
            if not isinstance(value, list):
                raise LabelError(f"{where}: tags at '{key}' must be a list, got {value!r}")
            for tag in value:
                if not isinstance(tag, str) or not TAG_PATTERN.match(tag):
                    raise LabelError(f"{where}: tag {tag!r} is neither 'O' nor B-/I-/E-/S- prefixed")
            tags.update(value)
        return sorted(tags)

    def encode(self, value: Any) -> list[int]:
        if not isinstance(value, list):
            raise LabelError(f"tags must be a list, got {value!r}")
        for tag in value:
            if tag not in self.index:
                raise LabelError(f"tag {tag!r} is not one of the {len(self.classes)} training tags")
        return [self.index[tag] for tag in value]


def align_word_labels(word_ids: Sequence[int | None], labels: Sequence[int]) -> list[int]:
    """Word-level labels moved onto word pieces: each word's label on its first piece only.

    Args:
        word_ids: per word piece, the index of its word, or None for [CLS], [SEP] and padding
            (what a fast tokenizer's ``word_ids()`` returns).
        labels: one label per word.

    Returns:
        One label per word piece; ``IGNORE_INDEX`` on later pieces of a word and on special tokens.
    """
    aligned, previous = [], None
    for word in word_ids:
        aligned.append(IGNORE_INDEX if word is None or word == previous else labels[word])
        previous = word
    return aligned


CODECS = {"classification": ClassLabels, "multilabel": MultiLabels, "regression": RegressionLabels,
          "token": TagLabels}
Codec = ClassLabels | MultiLabels | RegressionLabels | TagLabels


def _codec_class(head: str) -> type[Codec]:
    if head not in CODECS:
        raise ValueError(f"unknown head {head!r}; valid: {sorted(CODECS)}")
    return CODECS[head]


def label_vocabulary(head: str, rows: Sequence[dict], key: str) -> list:
    """The class list of ``head`` from (training) rows, sorted; ``[]`` for regression."""
    return _codec_class(head).vocabulary(rows, key)


def build_codec(head: str, classes: Sequence) -> Codec:
    """The codec of ``head`` over a class list (from ``label_vocabulary`` or a checkpoint)."""
    return _codec_class(head)(classes)
