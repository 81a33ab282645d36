"""Statistics of results: calibration, bootstrap intervals, paired comparisons, intervals across seeds.

Calibration (classification). A prediction's *confidence* is its largest softmax probability; it is
*correct* when that class is the label. The expected calibration error over ``M`` fixed,
equal-width bins ``B_m = ((m-1)/M, m/M]`` (a confidence of 0 goes to the first) is
``ECE = sum_m |B_m| / N * |accuracy(B_m) - mean confidence(B_m)|``, empty bins left out; ``M`` = 15
by default (Guo et al., 2017). Temperature scaling divides the logits by one scalar ``T > 0``
fitted on validation logits to minimise the negative log-likelihood; it leaves every argmax,
hence accuracy, unchanged.

Uncertainty. A metric is decomposed into per-example statistics ``values [N, K]`` and a function
of their column means that gives the metric (``Decomposed``): accuracy is the mean of 0/1 hits,
macro-F1 a function of per-class true positive, predicted and true counts, entity F1 of each
sentence's entity counts. A bootstrap resample draws N examples with replacement, i.e. a count
per example; the means of all resamples are then one matrix product (counts ``[R, N]`` @
``values [N, K]``), so 1000 resamples of 10 000 examples take well under a second. Intervals are
percentile intervals (the 2.5 % and 97.5 % quantiles of the R resampled metrics), seeded.

Paired comparison of two prediction sets on the same examples: both are resampled with the same
counts, and the two-sided p-value of "no difference" is that of the centred bootstrap,
``(1 + #{r : |d_r - d| >= |d|}) / (R + 1)`` with ``d`` the observed difference and ``d_r`` the
resampled ones (1 exactly for identical sets). Cells of a grid, trained with several seeds,
pair their runs by seed; the metric of a cell is the mean over its seeds, and each resample
draws the same test examples for every seed (an example that is hard for one seed tends to be
hard for all), so the p-value is about the test examples, given the trained models. McNemar's
exact test on accuracy counts the examples one set gets right and the other wrong.

Across seeds (grid tables): the Student-t interval ``mean ± t_{0.975, n-1} s / sqrt(n)`` of the
seeds' metrics. With 2-5 seeds a bootstrap over seeds would be far too narrow (2 seeds give 3
distinct means); the t-interval is wide, as it should be. One seed has no interval.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit, log_softmax, softmax

from mm.analysis.fingerprints import first_difference

ECE_BINS = 15
RESAMPLES = 1000
PREDICTIONS = Path("report") / "test_predictions.npz"  # in a run folder, written at the end of training
_CHUNK = 2**22  # resample counts held at once (R x N), about 32 MB


# ---- Calibration ----


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram: per equal-width confidence bin, its examples, accuracy and mean confidence."""

    edges: np.ndarray  # [M + 1], 0 to 1
    count: np.ndarray  # [M]
    accuracy: np.ndarray  # [M], NaN for an empty bin
    confidence: np.ndarray  # [M], NaN for an empty bin

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of |accuracy - confidence| over the bins."""
        full = self.count > 0
        gaps = np.abs(self.accuracy[full] - self.confidence[full])
        return float(np.sum(self.count[full] * gaps) / self.count.sum())


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """The reliability diagram of class probabilities ``[N, C]`` against labels ``[N]``."""
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.digitize(confidence, edges[1:-1], right=True)  # bin m holds (edges[m], edges[m + 1]]
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, correct.astype(float), bins) / count
        mean_conf = np.bincount(index, confidence, bins) / count
    return Reliability(edges, count, accuracy, mean_conf)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins (see the module docstring)."""
    return reliability(probs, labels, bins).ece


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under ``softmax(logits / temperature)``."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The temperature ``T`` in ``bounds`` that minimises ``nll(logits, labels, T)``.

    One-dimensional bounded Brent search over ``log T`` (``scipy.optimize.minimize_scalar``); the
    NLL is convex in ``1 / T``, hence unimodal in ``log T``.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    found = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), method="bounded",
                            bounds=(math.log(bounds[0]), math.log(bounds[1])), options={"xatol": 1e-6})
    return float(math.exp(found.x))


def calibration(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0,
                bins: int = ECE_BINS) -> dict[str, float]:
    """``ece``, ``nll`` and ``accuracy`` of ``softmax(logits / temperature)``."""
    probs = softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return {"ece": ece(probs, labels, bins), "nll": nll(logits, labels, temperature),
            "accuracy": float(np.mean(probs.argmax(1) == labels))}


def reliability_plot(diagrams: dict[str, Reliability], path: Path) -> Path:
    """One panel per diagram: accuracy per confidence bin against the diagonal, ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(diagrams), figsize=(4.2 * len(diagrams), 4.2), squeeze=False)
    for ax, (title, d) in zip(axes[0], diagrams.items(), strict=True):
        left, width = d.edges[:-1], np.diff(d.edges)
        ax.bar(left, np.nan_to_num(d.accuracy), width, align="edge", edgecolor="black", label="accuracy")
        ax.bar(left, np.nan_to_num(d.confidence - d.accuracy), width, bottom=np.nan_to_num(d.accuracy), align="edge",
               color="red", alpha=0.3, label="gap to confidence")
        ax.plot(left + width / 2, d.confidence, "k.", label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max softmax probability)", ylabel="accuracy",
               title=f"{title}: ECE {d.ece:.4f} ({len(width)} bins)")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- Intervals ----


@dataclass(frozen=True)
class Interval:
    """A value and its confidence interval (NaN bounds: none, e.g. for one seed)."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def format(self, digits: int = 4) -> str:
        """``0.8610 [0.8520, 0.8700]``, or just the value without an interval."""
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def seed_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """The mean of per-seed values and its Student-t interval (NaN bounds for fewer than two)."""
    from scipy.stats import t

    mean = statistics.fmean(values) if values else math.nan
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan, level)
    half = t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, level)


@dataclass(frozen=True)
class Decomposed:
    """A metric as per-example statistics ``values [N, K]`` and the function of their column means
    (``[R, K]`` -> ``[R]``, one row per resample) that gives it."""

    values: np.ndarray
    statistic: Callable[[np.ndarray], np.ndarray]

    @classmethod
    def mean(cls, values: np.ndarray) -> Decomposed:
        """The mean of one value per example, e.g. 0/1 hits for accuracy."""
        return cls(np.asarray(values, dtype=np.float64).reshape(-1, 1), lambda m: m[:, 0])

    def value(self) -> float:
        return float(self.statistic(self.values.mean(0, keepdims=True))[0])


def _counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` examples as counts ``[r, n]`` (how often each was drawn), in chunks."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _CHUNK // max(n, 1)))
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        drawn = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]  # [r, n], row-offset indices
        yield np.bincount(drawn.ravel(), minlength=r * n).reshape(r, n).astype(np.float64)


def _resampled(metrics: Sequence[Decomposed], resamples: int, seed: int) -> np.ndarray:
    """``[R]``: per resample, the mean over ``metrics`` (a cell's seeds) of each metric, all on the same draws."""
    n = len(metrics[0].values)
    out = [np.mean([m.statistic(w @ m.values / n) for m in metrics], axis=0) for w in _counts(n, resamples, seed)]
    return np.concatenate(out)


def _percentiles(draws: np.ndarray, value: float, level: float) -> Interval:
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(value, float(low), float(high), level)


def bootstrap_ci(metric: Decomposed | np.ndarray, resamples: int = RESAMPLES, level: float = 0.95,
                 seed: int = 0) -> Interval:
    """Percentile bootstrap interval of a metric over examples (a 1-D array: of its mean)."""
    metric = metric if isinstance(metric, Decomposed) else Decomposed.mean(metric)
    return _percentiles(_resampled([metric], resamples, seed), metric.value(), level)


@dataclass(frozen=True)
class Paired:
    """A paired bootstrap comparison: each side's metric, their difference ``a - b``, and its p-value."""

    a: Interval
    b: Interval
    diff: Interval
    p: float
    n: int  # examples
    seeds: int  # pairs of runs
    resamples: int


def paired_bootstrap(a: Sequence[Decomposed], b: Sequence[Decomposed], resamples: int = RESAMPLES,
                     level: float = 0.95, seed: int = 0) -> Paired:
    """Compares two sets of runs on the same examples: ``a[i]`` pairs with ``b[i]`` (same seed).

    Each side's metric is its mean over the runs; every resample draws the same examples for all
    runs of both sides. The p-value is the centred bootstrap's (module docstring).

    Raises:
        ValueError: the sides differ in length, or the runs in their number of examples.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_bootstrap needs as many runs on each side, got {len(a)} and {len(b)}")
    n = {len(m.values) for m in [*a, *b]}
    if len(n) != 1:
        raise ValueError(f"paired runs must share their examples, got example counts {sorted(n)}")
    value_a, value_b = statistics.fmean(m.value() for m in a), statistics.fmean(m.value() for m in b)
    draws_a, draws_b = _resampled(a, resamples, seed), _resampled(b, resamples, seed)  # same seed: same draws
    d, draws_d = value_a - value_b, draws_a - draws_b
    p = (1 + int(np.sum(np.abs(draws_d - d) >= abs(d)))) / (resamples + 1)
    return Paired(_percentiles(draws_a, value_a, level), _percentiles(draws_b, value_b, level),
                  _percentiles(draws_d, d, level), p, n.pop(), len(a), resamples)


def format_p(p: float, resamples: int = RESAMPLES, relation: bool = False) -> str:
    """A bootstrap p-value with 3 decimals (``= `` before it with ``relation``); at its floor
    ``1 / (resamples + 1)`` (no resample as extreme as the observed difference), ``<= floor``:
    the true p may be smaller."""
    if p <= 1 / (resamples + 1):
        return f"<= {1 / (resamples + 1):.3f}"
    return f"= {p:.3f}" if relation else f"{p:.3f}"


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: examples only ``a`` gets right, only ``b`` gets right, and the p-value."""

    a_only: int
    b_only: int
    p: float


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """Two-sided exact McNemar test: a binomial test of the discordant pairs against 1/2."""
    from scipy.stats import binomtest

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    a_only, b_only = int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b))
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return McNemar(a_only, b_only, float(p))


# ---- Saved predictions and their metrics ----


@dataclass
class Predictions:
    """A split's predictions in split order, as a run saves them (``PREDICTIONS``).

    ``outputs``: logits ``[N, C]`` (classification, multilabel), predictions ``[N]`` (regression) or
    predicted tag ids, all sentences one after the other (token, ``lengths`` words each).
    ``labels``: the matching labels (``[N]``, multi-hot ``[N, C]``, ``[N]``, tag ids).
    ``fingerprints``: each example's fingerprint ``<id>:<digest>`` (``mm.analysis.fingerprints``), or
    None in files saved before mm stored them.
    """

    head: str
    outputs: np.ndarray
    labels: np.ndarray
    classes: list[str]
    lengths: np.ndarray | None = None
    fingerprints: np.ndarray | None = None

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {} if self.lengths is None else {"lengths": self.lengths}
        if self.fingerprints is not None:
            extra["fingerprints"] = np.asarray(self.fingerprints, dtype=str)
        with path.open("wb") as f:
            np.savez_compressed(f, head=np.array(self.head), outputs=self.outputs, labels=self.labels,
                                classes=np.array(self.classes, dtype=str), **extra)
        return path

    @classmethod
    def load(cls, path: Path) -> Predictions:
        with np.load(path, allow_pickle=False) as f:
            return cls(str(f["head"]), f["outputs"], f["labels"], [str(c) for c in f["classes"]],
                       f["lengths"] if "lengths" in f else None, f["fingerprints"] if "fingerprints" in f else None)

    @property
    def examples(self) -> int:
        return len(self.labels) if self.lengths is None else len(self.lengths)

    def difference(self, other: Predictions) -> str | None:
        """Why ``other`` was not tested on the same examples, or None when it was: the same count,
        labels and, where both saved them, example fingerprints (the first differing example named)."""
        if (self.head, self.classes) != (other.head, other.classes):
            return f"different heads or classes ({self.head}, {len(self.classes)} vs {other.head}, {len(other.classes)})"
        if self.examples != other.examples:
            return f"{self.examples} vs {other.examples} test examples"
        same_lengths = self.lengths is None or np.array_equal(self.lengths, other.lengths)
        if not same_lengths or not np.array_equal(self.labels, other.labels):
            return f"the same count ({self.examples}) but different labels"
        if self.fingerprints is not None and other.fingerprints is not None:
            return first_difference([str(x) for x in self.fingerprints], [str(x) for x in other.fingerprints])
        return None


def _f1(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """F1 = 2 tp / (predicted + true), 0 where both are 0 (sklearn's ``zero_division=0``)."""
    denom = pred + true
    return np.divide(2 * tp, denom, out=np.zeros_like(denom), where=denom > 0)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(den), where=den > 0)


def _counts_f1(tp: np.ndarray, pred: np.ndarray, true: np.ndarray, macro: bool) -> Decomposed:
    """F1 from per-example true-positive, predicted and true counts ``[N, C]``: per class, averaged
    (``macro``), or from the totals over classes (micro)."""
    if not macro:
        tp, pred, true = tp.sum(1, keepdims=True), pred.sum(1, keepdims=True), true.sum(1, keepdims=True)
    c = tp.shape[1]
    return Decomposed(np.concatenate([tp, pred, true], 1).astype(np.float64),
                      lambda m: _f1(m[:, :c], m[:, c:2 * c], m[:, 2 * c:]).mean(1))


def decompose(p: Predictions, metric: str) -> Decomposed:
    """The metric ``head.metrics`` reports, as per-example statistics (``Decomposed.value()`` equals it).

    Raises:
        KeyError: a metric of no per-example form here (``map``, ``loss``); the message lists those there are.
    """
    supported = {"classification": ["accuracy", "macro_f1", "top{k}_accuracy"],
                 "multilabel": ["accuracy", "micro_f1", "macro_f1"], "regression": ["mae", "rmse", "pearson"],
                 "token": ["entity_precision", "entity_recall", "entity_f1", "accuracy"]}[p.head]
    if p.head == "classification":
        onehot = np.eye(len(p.classes))
        pred, top = p.outputs.argmax(1), re.fullmatch(r"top(\d+)_accuracy", metric)
        if metric == "accuracy":
            return Decomposed.mean(pred == p.labels)
        if metric == "macro_f1":
            true = onehot[p.labels]
            return _counts_f1(true * (pred == p.labels)[:, None], onehot[pred], true, macro=True)
        if top:
            k = int(top.group(1))
            return Decomposed.mean((p.outputs > p.outputs[np.arange(len(pred)), p.labels][:, None]).sum(1) < k)
    elif p.head == "multilabel":
        pred, true = expit(p.outputs.astype(np.float32)) > 0.5, p.labels > 0.5
        if metric == "accuracy":
            return Decomposed.mean((pred == true).all(1))
        if metric in ("micro_f1", "macro_f1"):
            return _counts_f1(pred & true, pred, true, macro=metric == "macro_f1")
    elif p.head == "regression":
        pred, true = p.outputs.astype(np.float64), p.labels.astype(np.float64)
        if metric == "mae":
            return Decomposed.mean(np.abs(pred - true))
        if metric == "rmse":
            return Decomposed((pred - true)[:, None] ** 2, lambda m: np.sqrt(m[:, 0]))
        if metric == "pearson":  # from the moments E[p], E[t], E[p^2], E[t^2], E[pt]; 0 when one is constant
            moments = np.stack([pred, true, pred**2, true**2, pred * true], 1)

            def pearson(m: np.ndarray) -> np.ndarray:
                var = (m[:, 2] - m[:, 0] ** 2) * (m[:, 3] - m[:, 1] ** 2)
                return _ratio(m[:, 4] - m[:, 0] * m[:, 1], np.sqrt(np.clip(var, 0, None)))

            return Decomposed(moments, pearson)
    elif p.head == "token" and metric in supported:
        return _token_metric(p, metric)
    raise KeyError(f"metric {metric!r} has no per-example form for the {p.head} head; have {supported}")


def _token_metric(p: Predictions, metric: str) -> Decomposed:
    """Per sentence: right entities, predicted and gold entities (seqeval's CoNLL rules), right and all words."""
    from seqeval.metrics.sequence_labeling import get_entities

    tags = np.array(p.classes)
    rows = []
    for true, pred in zip(np.split(p.labels, np.cumsum(p.lengths)[:-1]), np.split(p.outputs, np.cumsum(p.lengths)[:-1]),
                          strict=True):
        gold, found = set(get_entities(list(tags[true]))), set(get_entities(list(tags[pred])))
        rows.append([len(gold & found), len(found), len(gold), int(np.sum(true == pred)), len(true)])
    values = np.array(rows, dtype=np.float64).reshape(-1, 5)
    statistic = {"entity_precision": lambda m: _ratio(m[:, 0], m[:, 1]),
                 "entity_recall": lambda m: _ratio(m[:, 0], m[:, 2]),
                 "entity_f1": lambda m: _f1(m[:, 0], m[:, 1], m[:, 2]),
                 "accuracy": lambda m: _ratio(m[:, 3], m[:, 4])}[metric]
    return Decomposed(values, statistic)


@dataclass(frozen=True)
class Comparison:
    """``compare``'s answer: the paired bootstrap, and McNemar per pair of runs for accuracy."""

    metric: str
    paired: Paired
    mcnemar: list[McNemar]


def compare(a: Sequence[Predictions], b: Sequence[Predictions], metric: str, resamples: int = RESAMPLES,
            seed: int = 0) -> Comparison:
    """Paired comparison of runs ``a[i]`` and ``b[i]`` (one pair per seed) on their test examples.

    McNemar's test is added for ``accuracy`` of the classification and multilabel heads (one
    right-or-wrong per example), one test per pair of runs.

    Raises:
        ValueError: a run was tested on other examples than the first of ``a`` (the message says how).
        KeyError: the metric has no per-example form (``decompose``).
    """
    for i, other in enumerate([*a, *b]):
        why = a[0].difference(other)
        if why:
            side = "A" if i < len(a) else "B"
            raise ValueError(f"not tested on the same examples: {side} run {i % len(a)} differs from A run 0: {why}")
    da, db = [decompose(p, metric) for p in a], [decompose(p, metric) for p in b]
    tests = []
    if metric == "accuracy" and a[0].head in ("classification", "multilabel"):
        tests = [mcnemar(x.values[:, 0], y.values[:, 0]) for x, y in zip(da, db, strict=True)]
    return Comparison(metric, paired_bootstrap(da, db, resamples, seed=seed), tests)
