"""Shallow learning on deep features: logistic regression on frozen pooled encoder features.

The baseline the neural heads are measured against. Every encoder of a config is forced frozen
and built by ``build_model``; each sample's feature vector is its modalities' pooled vectors
concatenated in sorted modality order (an absent modality contributes zeros). A scikit-learn
``LogisticRegression`` on standardised features is fitted for each ``C`` of a small grid, and
the ``C`` with the best validation accuracy (the smallest one on ties) is tested.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Subset

from mm.config import Config
from mm.data import training_classes
from mm.model import MultimodalModel, build_model
from mm.prepare import prepare
from mm.run.runtime import train_subset

C_GRID = (0.01, 0.1, 1.0, 10.0)


@dataclass
class Features:
    """Frozen features of one split.

    Attributes:
        x: ``float32 [N, D]``, the pooled vectors of ``modalities`` side by side.
        y: ``int64 [N]`` class indices.
        dims: modality -> its width in ``x``, in column order.
    """

    x: np.ndarray
    y: np.ndarray
    dims: dict[str, int]


@dataclass
class ShallowResult:
    """A fitted baseline: the chosen ``C``, its metrics and predictions, and the fitted pipeline."""

    C: float
    val_accuracy_by_C: dict[float, float]
    val: dict[str, float]
    test: dict[str, float]
    predictions: dict[str, np.ndarray]
    pipeline: Pipeline
    trainable_params: int
    fit_time_s: float


def frozen_config(cfg: Config) -> Config:
    """A copy of ``cfg`` with every encoder's ``trainable`` set to ``frozen``."""
    cfg = copy.deepcopy(cfg)
    for section in vars(cfg.encoders).values():
        section.trainable = "frozen"
    return cfg


def build_frozen_model(cfg: Config) -> tuple[MultimodalModel, list]:
    """The config's model with all encoders frozen, in eval mode, and the class list."""
    if cfg.head.name != "classification":
        raise ValueError(f"the shallow baseline is a classifier; head.name={cfg.head.name!r} is not supported")
    classes = training_classes(cfg.data, cfg.head.name)
    model = build_model(frozen_config(cfg), num_classes=len(classes), classes=classes)
    return model.eval(), classes


@torch.no_grad()
def extract_features(model: MultimodalModel, loader: DataLoader, device: torch.device | str = "cpu") -> Features:
    """Pooled features of every batch of ``loader``, concatenated over the model's modalities."""
    model.eval().to(device)
    xs, ys = [], []
    for batch in loader:
        parts = []
        for m in model.modalities:
            inputs = {k: v.to(device) for k, v in batch[m].items()}
            pooled = model.encoders[m](inputs).pooled.float()  # [B, D_m]
            present = batch["present"][m].to(device)[:, None]
            parts.append(torch.where(present, pooled, torch.zeros_like(pooled)))
        xs.append(torch.cat(parts, 1).cpu())  # [B, sum D_m]
        ys.append(batch["label"])
    dims = {m: model.encoders[m].out_dim for m in model.modalities}
    return Features(torch.cat(xs).numpy(), torch.cat(ys).numpy(), dims)


def extract_splits(cfg: Config, device: torch.device | str = "cpu") -> tuple[dict[str, Features], list]:
    """Frozen features of the config's train (its ``train_fraction`` subset, as ``train`` uses),
    val and test splits, each computed once; returns them and the class list."""
    model, classes = build_frozen_model(cfg)
    job = prepare(cfg, classes, model, torch.device(device), cache=False, augment=False)
    used = Subset(job.splits["train"], train_subset(len(job.splits["train"]), cfg.data.train_fraction, cfg.seed))
    datasets = {"train": used, "val": job.splits["val"], "test": job.splits["test"]}
    features = {s: extract_features(model, job.loader(s, dataset=ds), device) for s, ds in datasets.items()}
    return features, job.classes


def scores(true: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 over all ``num_classes``, as the classification head computes them."""
    return {
        "accuracy": float(np.mean(pred == true)),
        "macro_f1": float(f1_score(true, pred, average="macro", labels=np.arange(num_classes), zero_division=0)),
    }


def logistic_pipeline(C: float, max_iter: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def fit_logistic(features: dict[str, Features], num_classes: int, grid: Sequence[float] = C_GRID,
                 max_iter: int = 1000) -> ShallowResult:
    """Fit standardised logistic regression for each ``C`` of ``grid``; keep the best on val.

    Args:
        features: ``train``, ``val`` and ``test`` features.
        num_classes: the number of classes (macro-F1 averages over all of them).
        grid: the inverse regularisation strengths to try.
        max_iter: lbfgs iterations.
    """
    t0 = time.perf_counter()
    train, val, test = features["train"], features["val"], features["test"]
    fitted, val_acc = {}, {}
    for C in grid:
        fitted[C] = logistic_pipeline(C, max_iter).fit(train.x, train.y)
        val_acc[C] = float(np.mean(fitted[C].predict(val.x) == val.y))
    best = max(grid, key=lambda c: (val_acc[c], -c))  # best val accuracy, then the smallest C
    pipeline = fitted[best]
    predictions = {s: pipeline.predict(f.x) for s, f in features.items()}
    lr: LogisticRegression = pipeline[-1]
    return ShallowResult(
        C=best,
        val_accuracy_by_C=val_acc,
        val=scores(val.y, predictions["val"], num_classes),
        test=scores(test.y, predictions["test"], num_classes),
        predictions=predictions,
        pipeline=pipeline,
        trainable_params=int(lr.coef_.size + lr.intercept_.size),
        fit_time_s=time.perf_counter() - t0,
    )


def markdown_table(rows: list[dict], columns: Sequence[str], decimals: dict[str, int] | None = None) -> str:
    """Rows as a Markdown table; floats with three decimals unless ``decimals`` names their column."""
    decimals = decimals or {}

    def cell(column: str, v: object) -> str:
        return f"{v:.{decimals.get(column, 3)}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
