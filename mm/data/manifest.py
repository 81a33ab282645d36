"""Manifest datasets: a folder with ``train.jsonl``, ``val.jsonl``, ``test.jsonl``.

Each line is one sample with a value per modality, all optional (``text``: a string; ``image``,
``audio``: paths relative to the folder) and a label at ``label_key`` (dotted, e.g. ``label`` or
``labels.match``). Each modality's value is decoded by its encoder (``Encoder.load``: an image
through PIL into the encoder's transform, audio read, downmixed and resampled to its rate); the
dataset itself never names a modality.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mm.data.collate import TEXT
from mm.data.conll import read_conll
from mm.data.errors import ManifestError
from mm.labels import ClassLabels, Codec, LabelError, MultiLabels, RegressionLabels, TagLabels, label_at
from mm.runtime import seeded

SPLITS = ("train", "val", "test")


def read_manifest(path: Path) -> list[dict]:
    """Parse a JSONL manifest; errors name ``file:line``. Blank lines are skipped."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{path}:{lineno}: invalid JSON: {err.msg}") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            row["_where"] = f"{path}:{lineno}"
            rows.append(row)
    if not rows:
        raise ManifestError(f"{path}: no samples")
    return rows


def read_split(root: Path, split: str) -> list[dict]:
    """The rows of one split: ``<split>.jsonl``, or where there is none, the CoNLL file ``<split>.txt``."""
    if not (root / f"{split}.jsonl").is_file() and (root / f"{split}.txt").is_file():
        return read_conll(root / f"{split}.txt")
    return read_manifest(root / f"{split}.jsonl")


class ManifestDataset(Dataset):
    """One split of a manifest folder, yielding samples decoded by the modalities' encoders.

    Args:
        root: the manifest folder.
        split: ``train``, ``val`` or ``test`` (or any name, with ``rows``).
        encoders: modality -> encoder (``Encoder.load`` decodes a row's value); other keys of a
            row are ignored.
        label_key: dotted key of the label in each row.
        classes: the class list (from the training split); a label outside it is an error.
        codec: how labels are encoded (``mm.labels``); by default class ids over ``classes``. With
            the token codec each row also needs its words under ``tokens``, one per tag.
        rows: the parsed rows, instead of reading ``<split>.jsonl``.
        require_labels: False for inference (an unlabelled row gets a placeholder label).
        augment: decode with the encoders' training-time augmentation, seeded per sample and
            epoch (``set_epoch``) from ``seed``.
        seed: the run's seed, for augmentation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        encoders: Mapping[str, Any],
        label_key: str,
        classes: list,
        codec: Codec | None = None,
        rows: list[dict] | None = None,
        require_labels: bool = True,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.encoders = dict(encoders)
        self.modalities = sorted(encoders)
        self.rows = rows if rows is not None else read_split(self.root, split)
        self.codec = codec if codec is not None else ClassLabels(classes)
        self.classes = list(self.codec.classes)
        self.label_key = label_key
        self.augment = augment and any(e.augment for e in self.encoders.values())
        self.seed, self.epoch = seed, 0
        self.labels: list = []
        self.words: list[list[str]] = []  # token tagging only
        for row in self.rows:
            value = label_at(row, label_key)
            if value is None and not require_labels:  # inference: a placeholder that is never scored
                value = self._placeholder(row)
            if value is None:
                raise ManifestError(f"{row['_where']}: no label at key '{label_key}'")
            try:
                self.labels.append(self.codec.encode(value))
            except LabelError as err:
                raise ManifestError(f"{row['_where']}: {err} (key '{label_key}')") from None
            if isinstance(self.codec, TagLabels):
                self.words.append(self._words(row, value))
            for m, enc in self.encoders.items():
                if enc.media and row.get(m) is not None and not (self.root / str(row[m])).is_file():
                    raise ManifestError(f"{row['_where']}: {m} file not found: {self.root / str(row[m])}")

    def _placeholder(self, row: dict) -> Any:
        if isinstance(self.codec, TagLabels):
            return [self.classes[0]] * len(row.get(TagLabels.words_key) or [])
        if isinstance(self.codec, MultiLabels):
            return []
        if isinstance(self.codec, RegressionLabels):
            return 0.0
        return self.classes[0]

    def _words(self, row: dict, tags: list) -> list[str]:
        words = row.get(TagLabels.words_key)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise ManifestError(f"{row['_where']}: token tagging needs a non-empty list of words at "
                                f"'{TagLabels.words_key}'")
        if len(words) != len(tags):
            raise ManifestError(f"{row['_where']}: {len(words)} words at '{TagLabels.words_key}' but "
                                f"{len(tags)} tags at '{self.label_key}'")
        return words

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the next samples get (the loop calls it before each epoch)."""
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        sample: dict[str, Any] = {"index": i, "label": self.labels[i]}
        values = {m: row.get(m) for m in self.modalities}
        if isinstance(self.codec, TagLabels):  # token tagging: the words are the text
            sample["words"] = self.words[i]
            values[TEXT] = " ".join(self.words[i]) if TEXT in values else None
        present = {m: v for m, v in values.items() if v is not None}
        if not self.augment:
            sample.update({m: self.encoders[m].load(v, self.root) for m, v in present.items()})
            return sample
        # Augmentation drawn from (seed, epoch, sample) alone: the same after a resume, with any workers.
        with seeded((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i):
            sample.update({m: self.encoders[m].load(v, self.root, train=True) for m, v in present.items()})
        return sample
