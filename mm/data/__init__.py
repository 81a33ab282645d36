"""Datasets (manifest JSONL), the synthetic benchmark, collate."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from mm.config import DataConfig
from mm.data.manifest import SPLITS, ManifestDataset, label_vocabulary, read_manifest
from mm.paths import cache_dir


def resolve_dataset(cfg: DataConfig) -> tuple[Path, str]:
    """The manifest folder and the label key a data config points at.

    ``dataset: synthetic`` generates (once, cached) the benchmark and reads ``labels.<task>``;
    anything else is a folder with ``train/val/test.jsonl`` labelled at ``label_key``.
    """
    if cfg.dataset == "synthetic":
        from mm.data.synthetic import TASKS, ensure_synthetic

        if cfg.task not in TASKS:
            raise ValueError(f"unknown synthetic task {cfg.task!r} (data.task); valid: {sorted(TASKS)}")
        return ensure_synthetic(cache_dir(), **asdict(cfg.synthetic)), f"labels.{cfg.task}"
    root = Path(cfg.dataset).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.dataset: {root} is neither 'synthetic' nor a folder")
    return root, cfg.label_key


def build_splits(cfg: DataConfig, encoders: dict, classes: list | None = None) -> tuple[dict[str, ManifestDataset], list]:
    """The train/val/test datasets for a data config, decoded with the encoders' preprocessing.

    Args:
        cfg: the data config.
        encoders: modality -> encoder (``transform`` for images, ``sample_rate`` for audio).
        classes: the class list; by default the sorted labels of the training split.
    """
    root, label_key = resolve_dataset(cfg)
    if classes is None:
        classes = label_vocabulary(read_manifest(root / "train.jsonl"), label_key)
    image_transform = getattr(encoders.get("image"), "transform", None)
    sample_rate = getattr(encoders.get("audio"), "sample_rate", None)
    splits = {
        s: ManifestDataset(root, s, cfg.modalities, label_key, classes, image_transform, sample_rate) for s in SPLITS
    }
    return splits, classes
