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

SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest row is malformed; the message names the file and line."""


def _get(row: dict, dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


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


def label_vocabulary(rows: Sequence[dict], label_key: str) -> list:
    """Sorted distinct labels of the (training) rows: the class list, index = class id."""
    labels = set()
    for row in rows:
        value = _get(row, label_key)
        if value is None:
            raise ManifestError(f"{row['_where']}: no label at key '{label_key}'")
        labels.add(value)
    return sorted(labels, key=lambda v: (isinstance(v, str), v))


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
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.modalities = sorted(modalities)
        self.rows = read_manifest(self.root / f"{split}.jsonl")
        self.classes = list(classes)
        self.label_key = label_key
        self.image_transform = image_transform
        self.sample_rate = sample_rate
        index = {c: i for i, c in enumerate(self.classes)}
        self.labels = []
        for row in self.rows:
            value = _get(row, label_key)
            if value not in index:
                raise ManifestError(
                    f"{row['_where']}: label {value!r} at key '{label_key}' is not one of the "
                    f"{len(self.classes)} training classes"
                )
            self.labels.append(index[value])
            for m in ("image", "audio"):
                if m in self.modalities and row.get(m) is not None and not (self.root / row[m]).is_file():
                    raise ManifestError(f"{row['_where']}: {m} file not found: {self.root / row[m]}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        sample: dict[str, Any] = {"index": i, "label": self.labels[i]}
        if "text" in self.modalities and row.get("text") is not None:
            sample["text"] = str(row["text"])
        if "image" in self.modalities and row.get("image") is not None:
            assert self.image_transform is not None, "an image encoder's transform is required"
            with Image.open(self.root / row["image"]) as img:
                sample["image"] = self.image_transform(img.convert("RGB"))
        if "audio" in self.modalities and row.get("audio") is not None:
            assert self.sample_rate is not None, "an audio encoder's sample rate is required"
            sample["audio"] = load_audio(self.root / row["audio"], self.sample_rate)
        return sample
