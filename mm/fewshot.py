"""Few-shot learning: k-shot episodes, classifiers on frozen features, and the shots curve's tables.

An episode (seed ``e``) orders each class's training examples by a seeded permutation; its k-shot
set is the first ``k`` of every class (``episode``), so the 1-shot set is inside the 2-shot set,
and so on, and the curve measures what more examples add rather than which examples were drawn.

Two classifiers fit on an episode's rows of the frozen features ``mm.shallow.extract_splits``
computes once per curve (``CLASSIFIERS``):

- ``prototype``: nearest class mean. Each modality's block of the feature vector is scaled to unit
  length (an absent modality stays zeros), a class is the mean of its k support vectors, a sample
  goes to the nearest mean (squared Euclidean distance). Its own few lines rather than
  scikit-learn's ``NearestCentroid``, whose scores (since 1.5) divide each feature by its
  within-class standard deviation: undefined at one shot and not the prototype rule.
- ``logistic``: ``mm.shallow.logistic_pipeline`` (standardised features, lbfgs) at a fixed
  ``C`` = ``LOGISTIC_C``: no validation split chooses it, as none would exist with k labels.

Both are scored by the classification head's own metrics on the class scores (``head_metrics``:
accuracy, macro-F1, top-k), exactly as a trained run is. The trained strategies (``linear_probe``,
``lora``, ``last_n``, ``full``, ``prompt``) read an episode as a dataset folder
(``write_episode``), which ``mm.train.train`` runs on unchanged. ``summarize``, ``shots_markdown``
and ``shots_plot`` turn the per-episode rows of a shots curve into its table and plot.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm import stats
from mm.config import DataConfig
from mm.heads import ClassificationHead
from mm.shallow import Features, logistic_pipeline

LOGISTIC_C = 1.0
EPISODE_SPLITS = ("train", "val", "test")
MEDIA_KEYS = ("image", "audio")  # manifest values that are files relative to the dataset folder


def episode(labels: Sequence[int] | np.ndarray, k: int, seed: int) -> np.ndarray:
    """The sorted training indices of episode ``seed``'s k-shot set.

    Each class (in sorted order) gets its indices permuted by one ``np.random.default_rng(seed)``;
    the set is the first ``k`` of every class. The permutations do not depend on ``k``, so the
    sets of one seed are nested: ``episode(y, 1, s)`` is inside ``episode(y, 2, s)``.

    Raises:
        ValueError: ``k`` < 1, or a class with fewer than ``k`` examples.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < k:
            raise ValueError(f"class {c} has {len(members)} training examples, fewer than k={k}")
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen))


def head_metrics(scores: np.ndarray, y: np.ndarray, num_classes: int, top_k: Sequence[int] = (5,)) -> dict[str, float]:
    """``ClassificationHead.metrics`` of class scores ``[N, C]`` (logits, log-probabilities, negative
    distances: anything whose argmax is the prediction) against labels ``[N]``."""
    head = ClassificationHead(1, num_classes, top_k)
    return head.metrics([torch.as_tensor(np.asarray(scores, dtype=np.float32))], [torch.as_tensor(y)])


def unit_blocks(x: np.ndarray, dims: dict[str, int]) -> np.ndarray:
    """``x [N, D]`` with each modality's block of columns (``dims``, in column order) scaled to unit
    length; an all-zero block (absent modality) stays zero."""
    out, start = np.array(x, dtype=np.float64), 0
    for width in dims.values():
        block = out[:, start : start + width]
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        out[:, start : start + width] = block / np.where(norm > 0, norm, 1.0)
        start += width
    return out


@dataclass
class Prototypes:
    """Nearest class mean on per-modality unit-length features.

    Attributes:
        means: ``[C, D]`` the class means of the normalised support features.
        dims: modality -> width, as ``Features.dims``.
    """

    means: np.ndarray
    dims: dict[str, int]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, num_classes: int, dims: dict[str, int]) -> Prototypes:
        """The class means of ``x [N, D]``; every class in ``range(num_classes)`` needs a support example."""
        missing = sorted(set(range(num_classes)) - set(np.asarray(y).tolist()))
        if missing:
            raise ValueError(f"no support example for classes {missing}")
        z = unit_blocks(x, dims)
        return cls(np.stack([z[y == c].mean(0) for c in range(num_classes)]), dims)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """``[N, C]``: minus the squared Euclidean distance of each normalised sample to each mean."""
        z = unit_blocks(x, self.dims)
        return -((z[:, None, :] - self.means[None, :, :]) ** 2).sum(-1)

    @property
    def params(self) -> int:
        return int(self.means.size)


@dataclass
class Logistic:
    """``mm.shallow.logistic_pipeline`` at ``LOGISTIC_C``; scores are log-probabilities."""

    pipeline: Any
    num_classes: int

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, num_classes: int, dims: dict[str, int]) -> Logistic:
        return cls(logistic_pipeline(LOGISTIC_C, max_iter=1000).fit(x, y), num_classes)

    def scores(self, x: np.ndarray) -> np.ndarray:
        out = np.full((len(x), self.num_classes), -np.inf)
        out[:, self.pipeline.classes_] = self.pipeline.predict_log_proba(x)
        return out

    @property
    def params(self) -> int:
        lr = self.pipeline[-1]
        return int(lr.coef_.size + lr.intercept_.size)


CLASSIFIERS = {"prototype": Prototypes, "logistic": Logistic}


def fit_episode(classifier: str, features: dict[str, Features], index: np.ndarray, num_classes: int,
                top_k: Sequence[int] = (5,)) -> dict[str, Any]:
    """Fit ``classifier`` on the training rows ``index`` of ``features``; score its support set, val and test.

    Returns:
        ``{"train": metrics on the support set, "val": ..., "test": ..., "params": fitted parameters}``.

    Raises:
        ValueError: an unknown classifier (the message lists ``CLASSIFIERS``).
    """
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown few-shot classifier {classifier!r}; valid: {sorted(CLASSIFIERS)}")
    train = features["train"]
    support = Features(train.x[index], train.y[index], train.dims)
    model = CLASSIFIERS[classifier].fit(support.x, support.y, num_classes, train.dims)
    parts = {"train": support, "val": features["val"], "test": features["test"]}
    out: dict[str, Any] = {s: head_metrics(model.scores(f.x), f.y, num_classes, top_k) for s, f in parts.items()}
    out["params"] = model.params
    return out


# ---- Episodes as dataset folders (for the strategies the training loop trains) ----


def source_key(data: DataConfig) -> str:
    """A short hash of what decides a config's training rows and labels (dataset, task, label key,
    synthetic parameters): episode folders of different sources never share a path."""
    fields = {"dataset": data.dataset, "task": data.task, "label_key": data.label_key, "synthetic": asdict(data.synthetic)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def episode_folder(out_dir: Path, data: DataConfig, k: int, seed: int) -> Path:
    """``out_dir/episodes/<source_key>/k=<k>/episode=<seed>``: where ``write_episode`` puts one episode."""
    return Path(out_dir).resolve() / "episodes" / source_key(data) / f"k={k}" / f"episode={seed}"


def _portable(row: dict[str, Any], root: Path) -> dict[str, Any]:
    """A manifest row without its ``_where`` bookkeeping, media paths made absolute."""
    out = {k: v for k, v in row.items() if not k.startswith("_")}
    for key in MEDIA_KEYS:
        if isinstance(out.get(key), str):
            out[key] = str((root / out[key]).resolve())
    return out


def write_episode(folder: Path, root: Path, rows: dict[str, list[dict]], index: np.ndarray) -> Path:
    """Write one episode as a manifest folder: ``train.jsonl`` holds the training rows ``index``,
    ``val.jsonl`` and ``test.jsonl`` the whole splits; media paths are absolute (runs on it need
    ``data.allow_outside_paths=true``). An existing folder with the same content is left as it is.

    Args:
        folder: the episode's folder (``episode_folder``).
        root: the source dataset folder.
        rows: split -> the source manifest's rows.
        index: the episode's training indices (``episode``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    chosen = {"train": [rows["train"][i] for i in index], "val": rows["val"], "test": rows["test"]}
    for split, found in chosen.items():
        text = "".join(json.dumps(_portable(r, root)) + "\n" for r in found)
        path = folder / f"{split}.jsonl"
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return folder


# ---- The shots curve's table and plot ----


def summarize(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per method and k, in row order: episodes, n_train, params, the mean (and sample std) of each
    error, and the val/test ``metric``'s mean with its 95 % Student-t interval over episodes
    (``mm.stats.seed_interval``; NaN bounds for one episode)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["k"]), []).append(row)
    table = []
    for (method, k), found in groups.items():
        entry: dict[str, Any] = {"method": method, "kind": found[0]["kind"], "k": k, "n": len(found),
                                 "n_train": found[0]["n_train"], "params_trainable": found[0]["params_trainable"]}
        for split in ("train", "val", "test"):
            errors = [r[f"{split}_error"] for r in found if not math.isnan(r[f"{split}_error"])]
            entry[f"{split}_error"] = statistics.fmean(errors) if errors else math.nan
            entry[f"{split}_error_std"] = statistics.stdev(errors) if len(errors) > 1 else 0.0
        for split in ("val", "test"):
            interval = stats.seed_interval([1 - r[f"{split}_error"] for r in found])
            entry[f"{split}_{metric}"] = interval.value
            entry[f"{split}_{metric}_low"], entry[f"{split}_{metric}_high"] = interval.low, interval.high
        entry["wall_time_s"] = statistics.fmean(r["wall_time_s"] for r in found)
        table.append(entry)
    return table


def _cell(g: dict[str, Any], col: str) -> str:
    low, high = g[col + "_low"], g[col + "_high"]
    return f"{g[col]:.3f}" if math.isnan(low) else f"{g[col]:.3f} [{low:.3f}, {high:.3f}]"


def shots_markdown(name: str, table: list[dict[str, Any]], metric: str, episodes: Sequence[int]) -> str:
    """The summary as one Markdown table: a row per method, a column per k (k = 0: zero-shot), each
    cell the test ``metric``'s mean [95 % interval] over episodes; then trainable parameters and
    the mean wall time of one episode at the largest k."""
    ks = sorted({g["k"] for g in table})
    methods = list(dict.fromkeys(g["method"] for g in table))
    by = {(g["method"], g["k"]): g for g in table}
    header = ["method", "kind", *(f"k={k}" for k in ks), "trainable params", "wall s"]
    lines = [f"## {name}: test {metric}, mean [95 % interval] over episodes {list(episodes)}\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        gs = [by[(method, k)] for k in ks if (method, k) in by]
        last = gs[-1]
        cells = [_cell(by[(method, k)], f"test_{metric}") if (method, k) in by else "" for k in ks]
        lines.append(f"| {method} | {last['kind']} | " + " | ".join(cells)
                     + f" | {last['params_trainable']:,} | {last['wall_time_s']:.1f} |")
    n_train = {g["k"]: g["n_train"] for g in table}
    note = ("\nk: labelled training examples per class (n_train = " + ", ".join(f"{n_train[k]} at k={k}" for k in ks)
            + "); the k-shot sets of an episode are nested. 95 % Student-t interval over episodes (none for one "
            "value: zero-shot has no episodes). Trained strategies validate once, at their last step (no "
            "selection on the validation split); logistic regression uses C = 1; trainable params and wall "
            "time at the largest k.")
    return "\n".join(lines) + "\n" + note + "\n"


def shots_plot(name: str, table: list[dict[str, Any]], metric: str, path: Path, title: str | None = None) -> Path:
    """Test ``metric`` against k (log axis), one line per method with its 95 % band; trained
    strategies solid, frozen-feature classifiers dashed, zero-shot a dotted horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = f"test_{metric}"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ks = sorted({g["k"] for g in table if g["k"] > 0})
    for i, method in enumerate(dict.fromkeys(g["method"] for g in table)):
        gs = sorted((g for g in table if g["method"] == method), key=lambda g: g["k"])
        color = f"C{i % 10}"
        if gs[0]["kind"] == "zero-shot":
            ax.axhline(gs[0][col], color=color, linestyle=":", label=f"{method} (k=0)")
            continue
        xs, ys = [g["k"] for g in gs], [g[col] for g in gs]
        style = "-" if gs[0]["kind"] == "trained" else "--"
        ax.plot(xs, ys, linestyle=style, marker="o", color=color, label=method)
        low = [g[col + "_low"] for g in gs]
        if not any(math.isnan(v) for v in low):
            ax.fill_between(xs, low, [g[col + "_high"] for g in gs], color=color, alpha=0.12)
    ax.set_xscale("log")
    if ks:
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    ax.set_xlabel("labelled examples per class (k)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title or f"{name}: mean and 95 % interval over episodes")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
