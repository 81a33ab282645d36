"""The shallow baseline explained the same way: logistic regression on frozen pooled features
(``mm.lowdata.shallow``) as a model with the ``MultimodalModel`` interface, so that
``modality_shapley`` and ``attribute`` answer the same questions for it, plus what only a linear
model has: exact per-feature and per-modality-block contributions to the class score.

The model is ``frozen encoders -> pooled vectors side by side (zeros for an absent modality, as
the baseline was fitted) -> StandardScaler -> LogisticRegression``; its logits are the linear
scores (for two classes ``[0, z]``, whose softmax is scikit-learn's ``predict_proba``).
For a sample with standardised features ``z`` the score of class ``t`` is
``intercept_t + sum_j coef_tj * z_j``: ``coef_tj * z_j`` is feature ``j``'s contribution (against
the training mean, where ``z = 0``), and a modality block's contribution is the sum over its columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from torch import nn

from mm.encoders.base import EncoderOutput


class ShallowModel(nn.Module):
    """A fitted shallow baseline as a model: ``forward(batch, outputs=None) -> logits [B, C]``.

    Args:
        encoders: the frozen encoders the features were extracted with (modality -> encoder).
        pipeline: the fitted ``StandardScaler`` + ``LogisticRegression`` pipeline.
    """

    explain_kind = "classification"

    def __init__(self, encoders: dict[str, nn.Module], pipeline: Pipeline):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        scaler, lr = pipeline[0], pipeline[-1]
        coef, intercept = np.asarray(lr.coef_, dtype=np.float64), np.asarray(lr.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:  # binary: p(class 1) = sigmoid(z) = softmax([0, z])[1]
            coef, intercept = np.concatenate([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        self.register_buffer("mean", torch.tensor(scaler.mean_, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scaler.scale_, dtype=torch.float32))
        self.linear = nn.Linear(coef.shape[1], coef.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor(coef))
            self.linear.bias.copy_(torch.tensor(intercept))
        self.requires_grad_(False)
        self.dims = {m: self.encoders[m].out_dim for m in self.modalities}

    @property
    def modalities(self) -> list[str]:
        return sorted(self.encoders)

    def encode(self, batch: dict[str, Any], given: dict[str, EncoderOutput] | None = None) -> dict[str, EncoderOutput]:
        given = given or {}
        return {m: given[m] if m in given else self.encoders[m](batch[m]) for m in self.modalities}

    def standardized(self, batch: dict[str, Any], outputs: dict[str, EncoderOutput] | None = None) -> torch.Tensor:
        """``[B, D]`` standardised features: pooled vectors side by side, zeros where absent."""
        outputs = self.encode(batch, outputs)
        B = len(batch["label"])
        parts = []
        for m in self.modalities:
            pooled = outputs[m].pooled.float()
            present = batch.get("present", {}).get(m, torch.ones(B, dtype=torch.bool)).to(pooled.device)
            parts.append(torch.where(present[:, None], pooled, torch.zeros_like(pooled)))
        return (torch.cat(parts, 1) - self.mean) / self.scale

    def forward(self, batch: dict[str, Any], outputs: dict[str, EncoderOutput] | None = None) -> torch.Tensor:
        return self.linear(self.standardized(batch, outputs))

    @torch.no_grad()
    def contributions(self, batch: dict[str, Any], target: torch.Tensor | None = None) -> dict[str, Any]:
        """Exact additive contributions to the target class's score (a logit).

        Returns:
            ``target [B]``, ``features [B, D]`` (``coef_tj * z_j``), ``blocks {m: [B]}`` (their
            sums per modality), ``intercept [B]`` and ``score [B]`` (= intercept + sum of blocks),
            and ``columns {m: (start, stop)}``.
        """
        z = self.standardized(batch)
        logits = self.linear(z)
        target = logits.argmax(-1) if target is None else torch.as_tensor(target).long()
        w = self.linear.weight[target]  # [B, D]
        features = w.double() * z.double()
        columns, start = {}, 0
        for m in self.modalities:
            columns[m] = (start, start + self.dims[m])
            start += self.dims[m]
        blocks = {m: features[:, a:b].sum(1) for m, (a, b) in columns.items()}
        intercept = self.linear.bias[target].double()
        return {"target": target, "features": features, "blocks": blocks, "intercept": intercept,
                "score": intercept + features.sum(1), "columns": columns}

    def coefficient_norms(self) -> dict[str, float]:
        """Per modality block, the L2 norm of its coefficients over all classes (standardised units)."""
        out, start = {}, 0
        for m in self.modalities:
            out[m] = float(self.linear.weight[:, start:start + self.dims[m]].norm())
            start += self.dims[m]
        return out


def fit_shallow(cfg: Any, device: str = "cpu") -> tuple[ShallowModel, Any, list]:
    """Fit the shallow baseline of a config (``mm.lowdata.shallow``) and return it as a
    ``ShallowModel``, with its ``ShallowResult`` and class list."""
    from torch.utils.data import Subset

    from mm.lowdata.shallow import build_frozen_model, extract_features, fit_logistic
    from mm.prepare import prepare
    from mm.run.runtime import train_subset

    model, classes = build_frozen_model(cfg)
    job = prepare(cfg, classes, model, torch.device(device), cache=False, augment=False)
    used = Subset(job.splits["train"], train_subset(len(job.splits["train"]), cfg.data.train_fraction, cfg.seed))
    datasets = {"train": used, "val": job.splits["val"], "test": job.splits["test"]}
    features = {s: extract_features(model, job.loader(s, dataset=ds), device) for s, ds in datasets.items()}
    result = fit_logistic(features, len(job.classes))
    return ShallowModel(dict(model.encoders), result.pipeline).eval(), result, job.classes
