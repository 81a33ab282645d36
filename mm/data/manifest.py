"""Manifest datasets: a folder with ``train.jsonl``, ``val.jsonl``, ``test.jsonl``.

Each line is one sample with optional ``text`` (string), ``image`` and ``audio`` (paths relative
to the folder) and a label at ``label_key`` (dotted, e.g. ``label`` or ``labels.match``). Images go
through PIL into the image encoder's own transform; audio is read with soundfile, downmixed and
resampled to the audio encoder's rate; text is tokenized later, in the collate function.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from mm.data.audio_io import load_audio
from mm.labels import ClassLabels, Codec, LabelError, MultiLabels, RegressionLabels, TagLabels, label_at

SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest row is malformed; the message names the file and line."""


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
        from mm.data.conll import read_conll

        return read_conll(root / f"{split}.txt")
    return read_manifest(root / f"{split}.jsonl")


class ManifestDataset(Dataset):
    """One split of a manifest folder, yielding decoded samples for the chosen modalities.

    Args:
        root: the manifest folder.
        split: ``train``, ``val`` or ``test``.
        modalities: which modalities to load; others are ignored.
        label_key: dotted key of the label in each row.
        classes: the class list (from the training split); a label outside it is an error.
        image_transform: PIL image -> tensor (the image encoder's transform).
        sample_rate: the audio encoder's sampling rate.
        codec: how labels are encoded (``mm.labels``); by default class ids over ``classes``. With
            the token codec each row also needs its words under ``tokens``, one per tag.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        modalities: Sequence[str],
        label_key: str,
        classes: list,
        image_transform: Callable[[Image.Image], torch.Tensor] | None = None,
        sample_rate: int | None = None,
        codec: Codec | None = None,
        rows: list[dict] | None = None,
        require_labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.modalities = sorted(modalities)
        self.rows = rows if rows is not None else read_split(self.root, split)
        self.codec = codec if codec is not None else ClassLabels(classes)
        self.classes = list(self.codec.classes)
        self.label_key = label_key
        self.image_transform = image_transform
        self.sample_rate = sample_rate
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
            for m in ("image", "audio"):
                if m in self.modalities and row.get(m) is not None and not (self.root / row[m]).is_file():
                    raise ManifestError(f"{row['_where']}: {m} file not found: {self.root / row[m]}")

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

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        sample: dict[str, Any] = {"index": i, "label": self.labels[i]}
        if isinstance(self.codec, TagLabels):  # token tagging: the words are the text
            sample["words"] = self.words[i]
            if "text" in self.modalities:
                sample["text"] = " ".join(self.words[i])
        elif "text" in self.modalities and row.get("text") is not None:
            sample["text"] = str(row["text"])
        if "image" in self.modalities and row.get("image") is not None:
            assert self.image_transform is not None, "an image encoder's transform is required"
            with Image.open(self.root / row["image"]) as img:
                sample["image"] = self.image_transform(img.convert("RGB"))
        if "audio" in self.modalities and row.get("audio") is not None:
            assert self.sample_rate is not None, "an audio encoder's sample rate is required"
            sample["audio"] = load_audio(self.root / row["audio"], self.sample_rate)
        return sample
