"""Task heads. Each head owns its loss and its metrics; ``mm.labels`` holds its label encoding.

======================  ============  ==================  ======================================
head (``head.name``)    forward       ``batch["label"]``  metrics
======================  ============  ==================  ======================================
``classification``      ``[B, C]``    ``Long[B]``         accuracy, macro_f1, top{k}_accuracy
``multilabel``          ``[B, C]``    ``Float[B, C]``     accuracy (exact match), micro/macro_f1, map
``regression``          ``[B]``       ``Float[B]``        mae, rmse, pearson
``token``               ``[B, T, C]`` ``Long[B, T]``      entity_precision/recall/f1, accuracy
======================  ============  ==================  ======================================

``metrics(logits, labels)`` takes the lists of per-batch outputs and labels of a whole split (what
``mm.train.evaluate`` collects) and returns plain floats. Pick the validation metric to match the
head: ``train.metric=accuracy`` works for every head but regression; better choices are
``micro_f1`` or ``map`` (multilabel), ``mae`` with ``train.metric_mode=min`` (regression) and
``entity_f1`` (token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score
from torch import nn
from torch.nn import functional as F

from mm.config import ConfigError, check_choice, check_range
from mm.labels import IGNORE_INDEX
from mm.registry import CHECKS, HEADS, NoSettings


def _cat(tensors: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors if isinstance(tensors, torch.Tensor) else torch.cat(list(tensors))


class ClassificationHead(nn.Module):
    """Multi-class classification: a linear layer, cross-entropy, accuracy, macro-F1 and top-k accuracy.

    Args:
        in_dim: size of the fused features.
        num_classes: number of classes.
        top_k: report ``top{k}_accuracy`` for each k smaller than ``num_classes``. A k at or above
            the class count is left out, not an error: its accuracy would be 1 by construction, and
            the class count is known only once the data is read, so the default ``[5]`` also serves
            binary tasks (where it reports nothing). ``self.top_k`` holds the k reported.

    Raises:
        ValueError: a k below 1 (``mm.config`` refuses it before any model is built).
    """

    @staticmethod
    def metric_names(settings: Any) -> list[str]:
        """The names ``metrics`` reports for a head configured by ``settings`` (``train.metric`` is one)."""
        return ["accuracy", "macro_f1", *(f"top{k}_accuracy" for k in settings.top_k)]  # a k >= the class count is left out

    def __init__(self, in_dim: int, num_classes: int, top_k: Sequence[int] = (5,), label_smoothing: float = 0.0):
        super().__init__()
        if any(k < 1 for k in top_k):
            raise ValueError(f"top_k must hold k >= 1, got {list(top_k)}")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.top_k = [k for k in top_k if k < num_classes]
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(fused)  # [B, num_classes]

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy; for a mixed batch (``mm.mixing``) the ``lam``-weighted sum over both labels."""
        y, smoothing = batch["label"], self.label_smoothing
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        if "mix" in batch:
            lam, perm = batch["mix"]["lam"], batch["mix"]["perm"]
            loss = lam * loss + (1 - lam) * F.cross_entropy(logits.float(), y[perm], label_smoothing=smoothing)
        return loss

    def metrics(self, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> dict[str, float]:
        """Metrics over a whole split from its batches' ``logits [B, C]`` and ``labels [B]``."""
        scores, true_t = _cat(logits).float(), _cat(labels)
        pred = scores.argmax(-1).cpu().numpy()
        true = true_t.cpu().numpy()
        out = {
            "accuracy": float(np.mean(pred == true)),
            "macro_f1": float(f1_score(true, pred, average="macro", labels=np.arange(self.num_classes), zero_division=0)),
        }
        for k in self.top_k:
            hits = (scores.topk(k, dim=-1).indices == true_t[:, None]).any(-1)  # [N]
            out[f"top{k}_accuracy"] = float(hits.float().mean())
        return out

    def confusion(self, logits: torch.Tensor | Sequence[torch.Tensor],
                  labels: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
        """Confusion matrix ``[C, C]``: row = true class, column = predicted class (sample counts)."""
        pred = _cat(logits).argmax(-1).cpu().numpy()
        return confusion_matrix(_cat(labels).cpu().numpy(), pred, labels=np.arange(self.num_classes))


class MultiLabelHead(nn.Module):
    """Multi-label classification: one sigmoid per class and binary cross-entropy.

    A class is predicted when its sigmoid exceeds 0.5. Metrics: ``accuracy`` (exact match: every
    class of the sample right), ``micro_f1``, ``macro_f1`` (over all classes) and ``map`` (mean
    average precision over the classes with at least one positive). Validate on ``micro_f1`` or
    ``map`` rather than the strict ``accuracy``.

    Args:
        in_dim: size of the fused features.
        num_classes: number of classes.
    """

    @staticmethod
    def metric_names(settings: Any) -> list[str]:
        """The names ``metrics`` reports for a head configured by ``settings`` (``train.metric`` is one)."""
        return ["accuracy", "micro_f1", "macro_f1", "map"]

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(fused)  # [B, num_classes]

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())

    def metrics(self, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> dict[str, float]:
        """Metrics over a whole split from its batches' ``logits [B, C]`` and multi-hot ``labels [B, C]``."""
        probs = torch.sigmoid(_cat(logits).float()).cpu().numpy()
        true = _cat(labels).cpu().numpy() > 0.5
        pred = probs > 0.5
        positive = np.flatnonzero(true.any(0))
        ap = [average_precision_score(true[:, c], probs[:, c]) for c in positive]
        return {
            "accuracy": float(np.mean((pred == true).all(1))),
            "micro_f1": float(f1_score(true, pred, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0)),
            "map": float(np.mean(ap)) if ap else 0.0,
        }


class RegressionHead(nn.Module):
    """Regression of one number: a linear layer to a scalar, MSE or L1 loss.

    Metrics: ``mae``, ``rmse`` and ``pearson`` (0 when predictions or targets are constant, where
    the correlation is undefined). Validate with ``train.metric=mae`` and ``train.metric_mode=min``.

    Args:
        in_dim: size of the fused features.
        num_classes: must be 1 (kept so that every head is built alike).
        loss: ``mse`` or ``l1``.
    """

    LOSSES = ("mse", "l1")

    @staticmethod
    def metric_names(settings: Any) -> list[str]:
        """The names ``metrics`` reports for a head configured by ``settings`` (``train.metric`` is one)."""
        return ["mae", "rmse", "pearson"]

    def __init__(self, in_dim: int, num_classes: int = 1, loss: str = "mse"):
        super().__init__()
        if num_classes != 1:
            raise ValueError(f"regression has one output, got num_classes={num_classes}")
        if loss not in self.LOSSES:
            raise ValueError(f"unknown regression loss {loss!r}; valid: {list(self.LOSSES)}")
        self.loss_name = loss
        self.linear = nn.Linear(in_dim, 1)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.linear(fused).squeeze(-1)  # [B, 1] -> [B]

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        loss_fn = F.mse_loss if self.loss_name == "mse" else F.l1_loss
        return loss_fn(logits.float(), batch["label"].float())

    def metrics(self, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> dict[str, float]:
        """Metrics over a whole split from its batches' predictions ``[B]`` and targets ``[B]``."""
        pred = _cat(logits).double().cpu().numpy()
        true = _cat(labels).double().cpu().numpy()
        err = pred - true
        constant = pred.std() == 0 or true.std() == 0
        return {
            "mae": float(np.abs(err).mean()),
            "rmse": float(np.sqrt((err**2).mean())),
            "pearson": 0.0 if constant else float(np.corrcoef(pred, true)[0, 1]),
        }


class TokenHead(nn.Module):
    """Token tagging (NER): a linear layer on every token, cross-entropy (or a CRF) on the labelled ones.

    Consumes per-token features ``[B, T, D]`` (a token fusion such as ``text_tokens``). Labels sit
    on the first word piece of each word; -100 elsewhere is ignored. Metrics are computed on the
    word-level tag sequences read back from those first pieces: entity-level precision, recall and
    F1 (``seqeval``, CoNLL rules: exact span and type) and ``accuracy`` (tags right per word).

    Word features (``word_features > 0``): each piece's word-shape id (``batch["word_shape"]``,
    ``mm.encoders.word_features``) is embedded and joined to its vector before the tag layer, so an
    uncased encoder still sees capitals. Decoding (``decode_tags``): with ``crf``, Viterbi over a
    linear-chain CRF trained jointly on the sentence log-likelihood (``mm.crf``); else with
    ``constrained``, Viterbi over the per-word log-probabilities restricted to the transitions the
    tag scheme (BIO or IOBES, read from the tag names) allows, so every sequence is valid; else
    each word's most likely tag on its own.

    Args:
        in_dim: size of the per-token features.
        num_classes: number of tags.
        tags: the tag names (``O``, ``B-PER``, ...), index = tag id.
        label_smoothing: cross-entropy label smoothing (without a CRF).
        word_features: size of the word-shape embedding; 0 = none.
        crf: a CRF layer (loss: negative log-likelihood per word; decoding: Viterbi).
        constrained: decode over the allowed transitions only.
    """

    @staticmethod
    def metric_names(settings: Any) -> list[str]:
        """The names ``metrics`` reports for a head configured by ``settings`` (``train.metric`` is one)."""
        return ["entity_precision", "entity_recall", "entity_f1", "accuracy"]

    def __init__(self, in_dim: int, num_classes: int, tags: Sequence[str], label_smoothing: float = 0.0,
                 word_features: int = 0, crf: bool = False, constrained: bool = True):
        super().__init__()
        from mm.crf import CRF
        from mm.encoders.word_features import WordFeatures

        self.label_smoothing = label_smoothing
        if len(tags) != num_classes:
            raise ValueError(f"{len(tags)} tag names for {num_classes} classes")
        self.num_classes = num_classes
        self.tags = list(tags)
        self.constrained = constrained
        self.word_features = WordFeatures(word_features) if word_features > 0 else None
        self.batch_keys = ("word_shape",) if self.word_features is not None else ()  # what forward reads from the batch
        self.linear = nn.Linear(in_dim + word_features, num_classes)
        self.crf = CRF(self.tags, constrained=constrained) if crf else None

    def forward(self, fused: torch.Tensor, word_shape: torch.Tensor | None = None) -> torch.Tensor:
        if fused.dim() != 3:
            raise ValueError(f"the token head needs per-token features [B, T, D], got shape {tuple(fused.shape)}; "
                             "use a token fusion (fusion.name=text_tokens)")
        if self.word_features is not None:
            if word_shape is None:
                raise ValueError("the token head has word features: pass the batch's word_shape [B, T]")
            shape = self.word_features(word_shape.to(fused.device)).to(fused.dtype)  # [B, T, dim]
            fused = torch.cat([fused, shape], -1)  # [B, T, D + dim]
        return self.linear(fused)  # [B, T, num_classes]

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if self.crf is not None:  # negative log-likelihood of the gold sequences, per word
            from mm.crf import first_pieces

            emissions, tags, mask = first_pieces(logits, batch["label"])
            return -self.crf.log_likelihood(emissions, tags, mask).sum() / mask.sum().clamp_min(1)
        # [B, T, C] -> [B*T, C] against [B*T]; -100 positions are ignored
        return F.cross_entropy(logits.float().flatten(0, 1), batch["label"].flatten(), ignore_index=IGNORE_INDEX,
                               label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def decode_tags(self, logits: torch.Tensor, first: torch.Tensor) -> list[list[int]]:
        """Per row, the predicted tag id of each word: ``logits [B, T, C]`` read at the pieces where
        ``first`` (``Bool[B, T]``: each word's first piece) holds, decoded as the head decodes."""
        from mm.crf import constrained_decode, first_pieces

        marks = torch.where(first, 0, IGNORE_INDEX)
        scores, _, mask = first_pieces(logits.float(), marks)  # [B, W, C]
        if self.crf is not None:
            return self.crf.decode(scores, mask)
        if self.constrained:
            return constrained_decode(scores.log_softmax(-1), mask, self.tags)
        return [row[:n] for row, n in zip(scores.argmax(-1).tolist(), mask.sum(1).tolist(), strict=True)]

    def decode(self, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[list[list[str]], list[list[str]]]:
        """Word-level ``(true, predicted)`` tag sequences, one per sample, from the labelled pieces."""
        true_seqs, pred_seqs = [], []
        for out, lab in zip(logits, labels, strict=True):
            for pred_row, lab_row in zip(self.decode_tags(out, lab != IGNORE_INDEX), lab.tolist(), strict=True):
                true_seqs.append([self.tags[t] for t in lab_row if t != IGNORE_INDEX])
                pred_seqs.append([self.tags[p] for p in pred_row])
        return true_seqs, pred_seqs

    def metrics(self, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> dict[str, float]:
        """Metrics over a whole split from its batches' ``logits [B, T, C]`` and ``labels [B, T]``."""
        from seqeval.metrics import f1_score as entity_f1
        from seqeval.metrics import precision_score, recall_score

        true, pred = self.decode(logits, labels)
        words = sum(len(s) for s in true)
        right = sum(t == p for ts, ps in zip(true, pred, strict=True) for t, p in zip(ts, ps, strict=True))
        return {
            "entity_precision": float(precision_score(true, pred, zero_division=0)),
            "entity_recall": float(recall_score(true, pred, zero_division=0)),
            "entity_f1": float(entity_f1(true, pred, zero_division=0)),
            "accuracy": right / max(words, 1),
        }


def register_head(name: str, settings: type | None = None) -> Any:
    """Class decorator (or one line): register a head as ``name`` with its settings dataclass, the
    ``head`` config section's fields it reads (the section is assembled from every head's)."""
    def register(cls: type) -> type:
        cls.settings = settings or getattr(cls, "settings", None) or NoSettings
        return HEADS.register(name, cls)
    return register


@dataclass
class ClassificationSettings:
    top_k: list[int] = field(default_factory=lambda: [5])  # classification: top-k accuracies (k < classes)
    label_smoothing: float = 0.0  # classification and token: cross-entropy label smoothing


@dataclass
class RegressionSettings:
    loss: str = "mse"  # regression: mse | l1


@dataclass
class TokenSettings:
    label_smoothing: float = 0.0
    crf: bool = False  # token: a linear-chain CRF trained jointly (log-likelihood), decoded by Viterbi (mm.crf)
    constrained: bool = True  # token: decode only the tag transitions the scheme (BIO / IOBES) allows


register_head("classification", ClassificationSettings)(ClassificationHead)
register_head("multilabel")(MultiLabelHead)
register_head("regression", RegressionSettings)(RegressionHead)
register_head("token", TokenSettings)(TokenHead)


@CHECKS.register("head")
def check_head(cfg: Any) -> None:
    """The ``head`` section's own choices and ranges."""
    check_choice("head.loss", cfg.head.loss, RegressionHead.LOSSES)
    for k in cfg.head.top_k:  # k >= the class count is left out by the head (see ClassificationHead)
        check_range("head.top_k", k, 1)
    check_range("head.label_smoothing", cfg.head.label_smoothing, 0, 1, open_high=True)


@CHECKS.register("train.metric")
def check_metric(cfg: Any) -> None:
    """``train.metric``: a name the head reports (``metric_names``) or ``loss``, refused before training
    (a wrong one used to fail at the first validation, an epoch in)."""
    names = getattr(HEADS[cfg.head.name], "metric_names", None)
    if names is None:  # a head that does not list its metrics: its first validation checks
        return
    valid = ["loss", *names(cfg.head)]
    if cfg.train.metric not in valid:
        raise ConfigError(f"invalid value for 'train.metric': {cfg.train.metric!r}; head.name={cfg.head.name} "
                          f"reports {valid}")


def build_head(name: str, in_dim: int, num_classes: int, *, classes: Sequence | None = None,
               top_k: Sequence[int] = (5,), loss: str = "mse", label_smoothing: float = 0.0,
               word_features: int = 0, crf: bool = False, constrained: bool = True) -> nn.Module:
    """Build a head from the registry.

    Args:
        name: one of ``HEADS``.
        in_dim: size of the fused features.
        num_classes: outputs per sample (per token for ``token``); 1 for regression.
        classes: the class names; required by ``token`` (its tags, for entity metrics).
        top_k: ``classification``: the k of the top-k accuracies (those >= ``num_classes`` left out).
        loss: ``regression``: ``mse`` or ``l1``.
        label_smoothing: ``classification`` and ``token``: cross-entropy label smoothing.
        word_features: ``token``: size of the word-shape embedding joined to each word (0 = none).
        crf: ``token``: a linear-chain CRF layer, trained jointly, decoded by Viterbi.
        constrained: ``token``: decode only the transitions the tag scheme allows.
    """
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; valid: {sorted(HEADS)}")
    if name == "classification":
        return ClassificationHead(in_dim, num_classes, top_k=top_k, label_smoothing=label_smoothing)
    if name == "regression":
        return RegressionHead(in_dim, num_classes, loss=loss)
    if name == "token":
        if classes is None:
            raise ValueError("the token head needs the tag names (classes)")
        return TokenHead(in_dim, num_classes, tags=[str(c) for c in classes], label_smoothing=label_smoothing,
                         word_features=word_features, crf=crf, constrained=constrained)
    return HEADS[name](in_dim, num_classes)
