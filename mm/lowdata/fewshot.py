"""Few-shot learning: k-shot episodes, classifiers on frozen features, and the shots curve's tables.

An episode (seed ``e``) orders each class's training examples by a seeded permutation; its k-shot
set is the first ``k`` of every class (``episode``), so the 1-shot set is inside the 2-shot set,
and so on, and the curve measures what more examples add rather than which examples were drawn.

Two classifiers fit on an episode's rows of the frozen features ``mm.lowdata.shallow.extract_splits``
computes once per curve (``CLASSIFIERS``):

- ``prototype``: nearest class mean. Each modality's block of the feature vector is scaled to unit
  length (an absent modality stays zeros), a class is the mean of its k support vectors, a sample
  goes to the nearest mean (squared Euclidean distance). Its own few lines rather than
  scikit-learn's ``NearestCentroid``, whose scores (since 1.5) divide each feature by its
  within-class standard deviation: undefined at one shot and not the prototype rule.
- ``logistic``: ``mm.lowdata.shallow.logistic_pipeline`` (standardised features, lbfgs) at a fixed
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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mm.analysis import stats
from mm.config import Config, ConfigError, DataConfig
from mm.heads import ClassificationHead
from mm.lowdata.shallow import Features, extract_splits, logistic_pipeline
from mm.registry import ENCODERS

LOGISTIC_C = 1.0
EPISODE_SPLITS = ("train", "val", "test")


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
    """``mm.lowdata.shallow.logistic_pipeline`` at ``LOGISTIC_C``; scores are log-probabilities."""

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
    for key, value in out.items():  # a media modality's values are files relative to the dataset folder
        if isinstance(value, str) and key in ENCODERS and ENCODERS.kind(key).media:
            out[key] = str((root / value).resolve())
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


def episode_overrides(out_dir: Path, data: DataConfig, k: int, seed: int) -> list[str]:
    """What points a trained run of a shots curve at its episode folder (``episode_folder``)."""
    label_key = f"labels.{data.task}" if data.dataset == "synthetic" else data.label_key
    return [f"data.dataset={episode_folder(out_dir, data, k, seed)}", f"data.label_key={label_key}",
            "data.allow_outside_paths=true"]


def training_labels(data: DataConfig) -> tuple[Path, dict[str, list[dict]], np.ndarray]:
    """The dataset folder of a classification data config, its rows per split and the class index of
    every training row (in ``training_classes`` order, as the head encodes them)."""
    from mm.data import resolve_dataset, training_classes
    from mm.data.manifest import read_split
    from mm.labels import build_codec, label_at

    root, label_key = resolve_dataset(data)  # generates the synthetic benchmark once
    codec = build_codec("classification", training_classes(data, "classification"))
    rows = {s: read_split(root, s) for s in EPISODE_SPLITS}
    return root, rows, np.array([codec.index[label_at(r, label_key)] for r in rows["train"]])


def write_episodes(out_dir: Path, data: DataConfig, ks: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
    """Write every (k, seed) episode folder of a shots curve; returns the training labels they index."""
    root, rows, labels = training_labels(data)
    for seed in seeds:
        for k in ks:
            write_episode(episode_folder(out_dir, data, k, seed), root, rows, episode(labels, k, seed))
    return labels


# ---- The frozen-feature methods of a shots curve ----


@dataclass
class FrozenMethod:
    """A frozen-feature classifier of a shots curve: its name, classifier (``CLASSIFIERS``) and the
    overrides of the config whose frozen features it reads (e.g. a transferred encoder's source)."""

    name: str
    classifier: str
    overrides: list[str] = field(default_factory=list)


def parse_frozen(raw: Any, path: Path) -> list[FrozenMethod]:
    """A shots curve's ``frozen`` entry: a list of classifier names or ``{name, classifier, overrides}``;
    absent: every classifier on the curve's own features, ``[]``: none.

    Raises:
        ConfigError: a malformed entry or an unknown classifier (the message names the file).
    """
    if raw is None:
        return [FrozenMethod(c, c) for c in CLASSIFIERS]
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: 'frozen' must be a list of classifiers ({sorted(CLASSIFIERS)}) or "
                          "{name, classifier, overrides} entries")
    methods = []
    for entry in raw:
        entry = {"name": entry, "classifier": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or set(entry) - {"name", "classifier", "overrides"} or not entry.get("name"):
            raise ConfigError(f"{path}: each of 'frozen' is a classifier name or {{name, classifier, overrides}}, "
                              f"not {entry!r}")
        classifier = entry.get("classifier", entry["name"])
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"{path}: unknown few-shot classifier {classifier!r}; valid: {sorted(CLASSIFIERS)}")
        methods.append(FrozenMethod(str(entry["name"]), classifier, [str(o) for o in entry.get("overrides") or []]))
    return methods


def curve_row(name: str, kind: str, k: int, seed: int | None, n_train: int, params: int, metrics: dict[str, dict],
         metric: str, wall_time_s: float) -> dict[str, Any]:
    """One results.csv row of a shots curve, with the columns of a trained run's row (``mm.experiments.curves.run_row``)."""
    error = {s: 1 - metrics[s][metric] if s in metrics else math.nan for s in ("train", "val", "test")}
    return {"run": name if seed is None else f"method={name}__k={k}__seed={seed}", "method": name, "fraction": 1.0,
            "k": k, "seed": seed, "kind": kind, "n_train": n_train, "params_trainable": params,
            "params_total": params, "train_error": error["train"], "val_error": error["val"],
            "test_error": error["test"], "best_step": None, "steps": 0, "wall_time_s": wall_time_s}


def frozen_rows(cfg: Config, methods: Sequence[FrozenMethod], ks: Sequence[int], seeds: Sequence[int], metric: str,
                labels: np.ndarray, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Fit each of ``methods`` (which share ``cfg``'s features) on every (k, seed) episode of
    ``cfg``'s frozen features, extracted once.

    Each row's wall time is the extraction plus that episode's fit: what the episode alone would cost.

    Raises:
        RuntimeError: the features' training labels are not ``labels`` (rows skipped as unreadable).
    """
    t0 = time.perf_counter()
    features, classes = extract_splits(cfg)
    extract_s = time.perf_counter() - t0
    if not np.array_equal(features["train"].y, labels):
        raise RuntimeError("the training features are not the rows the episodes index "
                           "(data.on_error=skip left samples out?)")
    log(f"[shots] {', '.join(m.name for m in methods)}: {features['train'].x.shape[1]}-d features of "
        f"{len(labels)} training samples in {extract_s:.1f}s")
    rows = []
    for method in methods:
        for seed in seeds:
            for k in ks:
                t1, index = time.perf_counter(), episode(labels, k, seed)
                out = fit_episode(method.classifier, features, index, len(classes), cfg.head.top_k)
                rows.append(curve_row(method.name, "frozen", k, seed, len(index), out["params"], out, metric,
                                      extract_s + time.perf_counter() - t1))
    return rows


# ---- The shots curve's table and plot ----


def summarize(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per method and k, in row order: episodes, n_train, params, the mean (and sample std) of each
    error, and the val/test ``metric``'s mean with its 95 % Student-t interval over episodes
    (``mm.analysis.stats.seed_interval``; NaN bounds for one episode)."""
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


def draw_shots(ax: Any, table: list[dict[str, Any]], metric: str, suffix: str = "", style: str | None = None,
               colors: dict[str, str] | None = None, bands: bool = True) -> None:
    """Draw a shots summary on ``ax``: test ``metric`` against k (log axis), one line per method with
    its 95 % band (unless ``bands`` is false); trained strategies solid, frozen-feature classifiers
    dashed (or all ``style``), zero-shot a dotted horizontal line. ``suffix`` is appended to each
    label; ``colors`` maps a method to its colour (new methods are added to it), so panels and
    overlays agree."""
    col, colors = f"test_{metric}", {} if colors is None else colors
    for method in dict.fromkeys(g["method"] for g in table):
        gs = sorted((g for g in table if g["method"] == method), key=lambda g: g["k"])
        color = colors.setdefault(method, f"C{len(colors) % 10}")
        if gs[0]["kind"] == "zero-shot":
            ax.axhline(gs[0][col], color=color, linestyle=":", label=f"{method}{suffix} (k=0)")
            continue
        xs, ys = [g["k"] for g in gs], [g[col] for g in gs]
        ax.plot(xs, ys, linestyle=style or ("-" if gs[0]["kind"] == "trained" else "--"), marker="o",
                color=color, label=f"{method}{suffix}")
        low = [g[col + "_low"] for g in gs]
        if bands and not any(math.isnan(v) for v in low):
            ax.fill_between(xs, low, [g[col + "_high"] for g in gs], color=color, alpha=0.12)
    ks = sorted({g["k"] for g in table if g["k"] > 0})
    ax.set_xscale("log")
    if ks:
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    ax.set_xlabel("labelled examples per class (k)")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3, which="both")


def shots_plot(name: str, table: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """``draw_shots`` of one curve, written to ``path`` (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    draw_shots(ax, table, metric)
    ax.set_title(f"{name}: mean and 95 % interval over episodes")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
