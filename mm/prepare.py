"""One set-up for every job that needs a model and its data: ``prepare(cfg) -> Prepared``.

Training, learning curves, shallow baselines, evaluation and prediction all need the same things
in the same order: the class list (from the training split), the model (its encoders decide the
preprocessing), the train/val/test datasets decoded by those encoders, the collate function,
the frozen-feature cache, and loaders. They get them here, written once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from mm.config import Config
from mm.data import build_splits, training_classes
from mm.data.collate import Collator
from mm.data.validate import check_dataset
from mm.features import use_feature_cache
from mm.labels import build_codec
from mm.model import MultimodalModel, build_model
from mm.run.distributed import Dist, eval_batches
from mm.run.runtime import fast_float32, pick_device


@dataclass
class Prepared:
    """What a job works with.

    Attributes:
        model: the model, on ``device``.
        splits: ``train`` / ``val`` / ``test`` datasets (served partly from the feature cache).
        classes: the class list of the training split (or the one given).
        collate: turns a list of samples into a batch.
        device: where the model runs.
        feature_cache: per modality, whether its outputs come from the cache (``mm.features``).
    """

    cfg: Config
    model: MultimodalModel
    splits: dict[str, Dataset]
    classes: list
    collate: Callable[[list[dict]], dict[str, Any]]
    device: torch.device
    feature_cache: dict[str, Any] = field(default_factory=dict)
    dist: Dist = field(default_factory=Dist)

    def loader(self, split: str, batch_sampler: Any = None, dataset: Dataset | None = None) -> DataLoader:
        """A loader over ``split`` (or ``dataset``): the given batches, else ``eval_batch_size`` in
        order (under torchrun: this rank's contiguous share, ``mm.run.distributed.eval_batches``)."""
        data = self.splits[split] if dataset is None else dataset
        if batch_sampler is None and self.dist.enabled:
            batch_sampler = eval_batches(len(data), self.cfg.train.eval_batch_size, self.dist)
        kwargs: dict[str, Any] = ({"batch_sampler": batch_sampler} if batch_sampler is not None
                                  else {"batch_size": self.cfg.train.eval_batch_size})
        # A private generator keeps the DataLoader from drawing on the global RNG (dropout's).
        return DataLoader(data, collate_fn=self.collate,
                          num_workers=self.cfg.data.num_workers, generator=torch.Generator(),
                          pin_memory=self.device.type == "cuda", **kwargs)


def check_data(cfg: Config, warn: bool = True) -> None:
    """Check a dataset folder before any model is built: every problem at once, naming file and line
    (``mm.data.validate``; the val and test files are decoded now too, training files as training goes).
    Warnings go to stderr when ``warn``; the synthetic benchmark needs no check.

    Raises:
        ManifestError: listing the problems.
    """
    if cfg.data.dataset == "synthetic":
        return
    report = check_dataset(cfg.data, cfg.data.modalities, cfg.head.name, deep=("val", "test"))
    if report.warnings and warn:
        print(report.format(), file=sys.stderr)


def prepare(cfg: Config, classes: list | None = None, model: MultimodalModel | None = None,
            device: torch.device | None = None, cache: bool = True, augment: bool = True,
            dist: Dist | None = None) -> Prepared:
    """Build (or take) the model of ``cfg`` and the data it reads.

    Args:
        cfg: the run's config.
        classes: the class list (a resumed or reloaded run's); default: the training split's labels.
        model: an already built model (a reloaded run's); default: ``build_model(cfg)``.
        device: default: ``train.device`` resolved.
        cache: serve frozen encoders' outputs from the feature cache (when ``data.cache_features``
            allows it).
        augment: let the training split use the encoders' augmentation (off for feature extraction).
        dist: under torchrun, this process's rank (its loaders take its share of each split).
    """
    device = device or pick_device(cfg.train.device)
    fast_float32(device, cfg.train.precision)  # TF32 for what stays fp32 under CUDA autocast
    if classes is None:
        classes = training_classes(cfg.data, cfg.head.name)
    if model is None:
        num_outputs = build_codec(cfg.head.name, classes).num_outputs  # regression: 1, no classes
        model = build_model(cfg, num_classes=num_outputs, classes=classes)
    model.to(device)
    splits, classes = build_splits(cfg.data, dict(model.encoders), classes, head=cfg.head.name, seed=cfg.seed,
                                   augment=augment)
    collate: Callable = Collator(cfg.data.modalities, dict(model.encoders), head=cfg.head.name)
    report: dict[str, Any] = {}
    if cache:
        # Frozen encoders' outputs are computed once per split and weights, then served from the cache.
        splits, collate, report = use_feature_cache(cfg, model, splits, collate, device)
    return Prepared(cfg, model, splits, classes, collate, device, report, dist or Dist())
