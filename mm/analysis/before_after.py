"""Before and after continued fine-tuning: both models on the old test set and on the new one.

What was gained on the new data is the new model minus the old on the new test set; what was
forgotten is the old model minus the new on the old test set. Both are paired comparisons on the
same examples (``mm.analysis.stats.compare``: bootstrap intervals of the difference, a paired
bootstrap p-value, McNemar's exact test for accuracy).

The two models are scored in the new run's class space. A run continued with
``train.init_from`` keeps the old classes first and appends the new ones, so the old model's
logits are placed at its classes' positions and the classes it never had get a logit of
``-1e4`` (never predicted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mm.analysis.stats import RESAMPLES, Comparison, Predictions, compare

ABSENT_LOGIT = -1e4
HEADS = ("classification", "multilabel")


@dataclass
class Side:
    """One test set: where it is, and the comparison of the new model (A) with the old (B) on it."""

    name: str
    root: Path
    split: str
    result: Comparison


@torch.no_grad()
def split_predictions(model: Any, head: str, own_classes: list, space: list, root: Path, label_key: str,
                      split: str, allow_outside: bool, batch_size: int = 64) -> Predictions:
    """A model's predictions on a dataset split, with logits laid out over the class list ``space``."""
    from mm.data.collate import Collator
    from mm.data.manifest import ManifestDataset
    from mm.labels import build_codec

    encoders = dict(model.encoders)
    ds = ManifestDataset(root, split, encoders, label_key, space, codec=build_codec(head, space),
                         allow_outside_paths=allow_outside)
    where = torch.tensor([space.index(c) for c in own_classes])  # own class i -> its column in space
    logits, labels = [], []
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=Collator(sorted(encoders), encoders, head=head)):
        out = model(batch).float()
        placed = torch.full((len(out), len(space)), ABSENT_LOGIT)
        placed[:, where] = out
        logits.append(placed)
        labels.append(batch["label"])
    return Predictions(head, torch.cat(logits).numpy(), torch.cat(labels).numpy(), [str(c) for c in space])


def before_after(old_run: str | Path, new_run: str | Path, old_data: str | Path | None = None,
                 new_data: str | Path | None = None, split: str = "test", metric: str | None = None,
                 resamples: int = RESAMPLES, seed: int = 0) -> tuple[str, list[Side]]:
    """Scores the old and the new run on the old and the new test sets.

    Args:
        old_run, new_run: finished run folders (the new one usually ``train.init_from`` the old).
        old_data, new_data: dataset folders; by default each run's own ``data.dataset``.
        split: the split of each folder to score.
        metric: a per-example metric (``accuracy``, ``macro_f1``, ...); by default the new run's
            ``train.metric``.

    Returns:
        The metric and the two sides, old test set first.

    Raises:
        ValueError: a head other than classification/multilabel, or an old class the new run lacks.
    """
    from mm.analysis.evaluation import load_run
    from mm.data import resolve_dataset

    old_cfg, old_model, old_classes = load_run(old_run)
    new_cfg, new_model, new_classes = load_run(new_run)
    if new_cfg.head.name not in HEADS or old_cfg.head.name != new_cfg.head.name:
        raise ValueError(f"before/after compares {' or '.join(HEADS)} runs of one head "
                         f"(got {old_cfg.head.name} and {new_cfg.head.name})")
    lost = [c for c in old_classes if c not in new_classes]
    if lost:
        raise ValueError(f"{new_run} has no class {lost[0]!r} of {old_run}: not a continuation of it")
    metric = metric or new_cfg.train.metric
    sides = []
    for name, cfg, folder in (("old", old_cfg, old_data), ("new", new_cfg, new_data)):
        root, label_key = resolve_dataset(cfg.data)
        root = Path(folder) if folder is not None else root
        if not (root / f"{split}.jsonl").is_file():
            raise FileNotFoundError(f"{name} test set {root}: no {split}.jsonl")
        preds = [split_predictions(model, cfg.head.name, classes, new_classes, root, label_key, split,
                                   cfg.data.allow_outside_paths)
                 for model, classes in ((new_model, new_classes), (old_model, old_classes))]
        sides.append(Side(name, root, split, compare([preds[0]], [preds[1]], metric, resamples, seed)))
    return metric, sides


def table(metric: str, sides: list[Side]) -> str:
    """Markdown: each test set's old and new score with intervals, the difference and its tests."""
    lines = [f"| test set | n | old model {metric} | new model {metric} | new - old | paired p | McNemar p |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in sides:
        p = s.result.paired
        mc = f"{s.result.mcnemar[0].p:.3g}" if s.result.mcnemar else "-"
        lines.append(f"| {s.name} ({s.root.name}/{s.split}) | {p.n} | {p.b.format()} | {p.a.format()} | "
                     f"{p.diff.value:+.4f} [{p.diff.low:+.4f}, {p.diff.high:+.4f}] | {p.p:.4f} | {mc} |")
    old, new = sides[0].result.paired.diff, sides[1].result.paired.diff
    lines += ["", f"gained on the new data: {new.value:+.4f} [{new.low:+.4f}, {new.high:+.4f}]; "
                  f"forgotten on the old data: {-old.value:+.4f} [{-old.high:+.4f}, {-old.low:+.4f}] "
                  "(old model minus new model on the old test set; 95 % paired bootstrap intervals)"]
    return "\n".join(lines)


def summary(metric: str, sides: list[Side]) -> dict[str, Any]:
    """The JSON form of ``table``."""
    out: dict[str, Any] = {"metric": metric}
    for s in sides:
        p = s.result.paired
        out[s.name] = {"data": str(s.root), "split": s.split, "n": p.n,
                       "old_model": _interval(p.b), "new_model": _interval(p.a), "new_minus_old": _interval(p.diff),
                       "p": p.p, "mcnemar_p": s.result.mcnemar[0].p if s.result.mcnemar else None}
    out["gained"] = float(np.round(sides[1].result.paired.diff.value, 6))
    out["forgotten"] = float(np.round(-sides[0].result.paired.diff.value, 6))
    return out


def _interval(i: Any) -> dict[str, float]:
    return {"value": i.value, "low": i.low, "high": i.high}
