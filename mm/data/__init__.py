"""Datasets (manifest JSONL, CoNLL), the synthetic benchmark, collate."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from mm.data.errors import ManifestError, MediaError
from mm.data.manifest import SPLITS, ManifestDataset, read_split
from mm.data.media import inside_path
from mm.labels import build_codec, label_vocabulary
from mm.paths import cache_dir


def resolve_dataset(cfg: Any, head: str | None = None) -> tuple[Path, str]:
    """The manifest folder and the label key a data config points at.

    ``dataset: synthetic`` generates (once, cached) the benchmark and reads ``labels.<task>``;
    anything else is a folder with ``train/val/test.jsonl`` labelled at ``label_key``, or a folder
    with the CoNLL files ``train/val/test.txt`` (token tagging), whose rows are labelled at ``tags``.
    For ``head="token"`` with ``label_key`` left at its default (``label``), a JSONL manifest is read
    at ``tags`` as documented (``tokens`` and ``tags`` per row), unless its first training row has a
    ``label``.
    """
    if cfg.dataset == "synthetic":
        from mm.data.synthetic import TASKS, ensure_synthetic

        if cfg.task not in TASKS:
            raise ValueError(f"unknown synthetic task {cfg.task!r} (data.task); valid: {sorted(TASKS)}")
        return ensure_synthetic(cache_dir(), **asdict(cfg.synthetic)), f"labels.{cfg.task}"
    root = Path(cfg.dataset).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.dataset: {root} is neither 'synthetic' nor a folder")
    from mm.data.conll import TAGS_KEY

    if not (root / "train.jsonl").is_file() and (root / "train.txt").is_file():
        return root, TAGS_KEY
    if head == "token" and cfg.label_key == DEFAULT_LABEL_KEY and "label" not in _first_row(root / "train.jsonl"):
        return root, TAGS_KEY
    return root, cfg.label_key


DEFAULT_LABEL_KEY = "label"  # data.label_key's default


def _first_row(path: Path) -> dict:
    """The first JSON object of a manifest ({} when there is none or it does not parse: the data
    check reports that with its line)."""
    import json

    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    return row if isinstance(row, dict) else {}
    except (OSError, ValueError):
        pass
    return {}


def training_classes(cfg: Any, head: str = "classification") -> list:
    """The class list of a data config for ``head``: the sorted labels of its training split."""
    if cfg.dataset == "synthetic":
        from mm.data.synthetic import TASKS

        kind = TASKS[cfg.task].kind if cfg.task in TASKS else head
        if kind != head:
            raise ValueError(f"synthetic task {cfg.task!r} needs head.name={kind}, not {head!r}")
    root, label_key = resolve_dataset(cfg, head)
    return label_vocabulary(head, read_split(root, "train"), label_key)


def build_splits(cfg: Any, encoders: dict, classes: list | None = None,
                 head: str = "classification", seed: int = 0,
                 augment: bool = True) -> tuple[dict[str, ManifestDataset], list]:
    """The train/val/test datasets for a data config, decoded by the encoders (``Encoder.load``).

    Args:
        cfg: the data config.
        encoders: modality -> encoder, for the config's modalities.
        classes: the class list; by default the sorted labels of the training split.
        head: the head's name, which decides how labels are encoded (``mm.labels``).
        seed: the run's seed; the training split's augmentation (if any encoder augments) draws
            from it, the sample and the epoch.
        augment: False keeps the training split unaugmented too (feature extraction).

    Media paths outside the folder are refused unless ``data.allow_outside_paths``; with
    ``data.on_error: skip`` the samples that cannot be read are left out of each split and listed
    in its ``bad`` (``ManifestDataset``).
    """
    if classes is None:
        classes = training_classes(cfg, head)
    root, label_key = resolve_dataset(cfg, head)
    codec = build_codec(head, classes)
    used = {m: encoders[m] for m in cfg.modalities}
    splits = {s: ManifestDataset(root, s, used, label_key, classes, codec=codec, augment=augment and s == "train",
                                 seed=seed, allow_outside_paths=cfg.allow_outside_paths, on_error=cfg.on_error,
                                 max_bad_fraction=cfg.max_bad_fraction)
              for s in SPLITS}
    return splits, classes


def first_file(cfg: Any, modality: str) -> Path | None:
    """The file of the first training row that has ``modality`` (a media value), inside the dataset
    folder (None if no row has one): what an encoder that sizes itself on the data reads
    (``ImageEncoder`` with ``input_size`` 0 resizes to its pictures' own side).

    Args:
        cfg: the ``data`` section (``mm.config.DataConfig``).
        modality: a media modality's manifest key.
    """
    root, _ = resolve_dataset(cfg)
    for row in read_split(root, "train"):
        if row.get(modality) is not None:
            try:
                return inside_path(row[modality], root, cfg.allow_outside_paths)
            except MediaError as err:
                raise ManifestError(f"{row['_where']}: {modality} {err}") from err
    return None
