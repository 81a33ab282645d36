"""End-of-training reports of the test split, in ``run_dir/report/`` and W&B (``write_test_reports``).

Per class (classification, with a confusion-matrix plot), per label (multilabel) or per entity type
(token tagging): precision, recall, F1 and support. Also the predictions themselves
(``test_predictions.npz``, in split order, for ``scripts/compare.py``), the 95 % bootstrap interval
of the validation metric on test and, for classification, calibration: ECE and a reliability diagram
(``mm.analysis.stats``). ``write_calibration`` reports temperature scaling (``scripts/evaluate.py --calibrate``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit, softmax
from sklearn.metrics import classification_report, confusion_matrix

from mm.analysis import stats


def write_classification_report(pred: np.ndarray, true: np.ndarray, classes: list, out_dir: Path,
                                split: str = "test", plot: bool = True) -> dict[str, Path]:
    """Write ``<split>_report.{txt,json}`` (sklearn's per-class precision/recall/F1, and the confusion
    matrix's counts) and, with ``plot``, ``<split>_confusion.png`` (rows: true class, columns:
    predicted, row-normalised colours with counts written in the cells) into ``out_dir``; return the
    paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [str(c) for c in classes]
    labels = np.arange(len(classes))
    paths = {"txt": out_dir / f"{split}_report.txt", "json": out_dir / f"{split}_report.json"}
    paths["txt"].write_text(classification_report(true, pred, labels=labels, target_names=names, digits=3, zero_division=0))
    report = classification_report(true, pred, labels=labels, target_names=names, output_dict=True, zero_division=0)
    cm = confusion_matrix(true, pred, labels=labels)
    report["confusion_matrix"] = {"classes": names, "counts": cm.tolist()}  # rows: true, columns: predicted
    paths["json"].write_text(json.dumps(report, indent=2))
    if not plot:
        return paths

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths["png"] = out_dir / f"{split}_confusion.png"
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(labels, names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(labels, names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{split} confusion matrix (accuracy {np.mean(pred == true):.3f})")
    if len(classes) <= 20:
        for i, j in np.ndindex(cm.shape):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class")
    fig.savefig(paths["png"], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


REPORT_COLUMNS = ["entity", "precision", "recall", "f1", "support"]


def token_report(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, dict[str, Any]]:
    """seqeval's entity-level report over word-level tag sequences (``TokenHead.decode``): for each
    entity type, then ``micro avg``, ``macro avg`` and ``weighted avg``, its ``precision``,
    ``recall``, ``f1-score`` and ``support`` (gold entities), as plain floats and ints. Entities are
    read as ``TokenHead.metrics`` reads them (CoNLL rules: exact span and type). Without any entity,
    gold or predicted, the macro average is 0 (as ``zero_division=0`` makes the others)."""
    from seqeval.metrics import classification_report as entity_report

    with warnings.catch_warnings():  # the macro average of no entity type: numpy's mean of nothing
        warnings.simplefilter("ignore", RuntimeWarning)
        report = entity_report(list(map(list, true)), list(map(list, pred)), output_dict=True, zero_division=0)
    return _plain(report)


def multilabel_report(true: np.ndarray, pred: np.ndarray, classes: Sequence) -> dict[str, dict[str, Any]]:
    """sklearn's per-label report of multi-hot ``true`` and ``pred`` ``[N, C]``: for each label, then
    ``micro avg``, ``macro avg``, ``weighted avg`` and ``samples avg``, its ``precision``, ``recall``,
    ``f1-score`` and ``support`` (samples with the label), as plain floats and ints."""
    report = classification_report(true.astype(int), pred.astype(int), labels=np.arange(len(classes)),
                                   target_names=[str(c) for c in classes], output_dict=True, zero_division=0)
    return _plain(report)


def _plain(report: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {k: int(v) if k == "support" else float(np.nan_to_num(v)) for k, v in row.items()}
            for name, row in report.items()}


def report_table(report: dict[str, Any], first: str = "entity") -> tuple[list[str], list[list]]:
    """A per-entity / per-label / per-class report as table columns and rows (its names, then the
    averages), e.g. for W&B; entries that are not rows (sklearn's ``accuracy``, the confusion
    matrix) are left out. ``first`` names the first column."""
    rows = [[name, row["precision"], row["recall"], row["f1-score"], int(row["support"])] for name, row in report.items()
            if isinstance(row, dict) and "f1-score" in row]
    return [first, *REPORT_COLUMNS[1:]], rows


def write_token_report(report: dict[str, dict[str, Any]], out_dir: Path, split: str = "test",
                       first: str = "entity") -> dict[str, Path]:
    """Write ``token_report`` (or ``multilabel_report``, ``first="label"``) as ``<split>_report.json``
    and as a table in ``<split>_report.txt`` (aligned columns) and ``<split>_report.md`` (Markdown)
    into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{split}_report.{ext}" for ext in ("txt", "json", "md")}
    paths["json"].write_text(json.dumps(report, indent=2))
    columns, rows = report_table(report, first)
    cells = [[str(r[0]), *(f"{v:.3f}" for v in r[1:4]), str(r[4])] for r in rows]
    width = max([len(columns[0])] + [len(c[0]) for c in cells])
    lines = [f"{columns[0]:>{width}}" + "".join(f"{c:>11}" for c in columns[1:])]
    for c in cells:
        if c[0] == "micro avg":
            lines.append("")  # the averages under the entity types, as seqeval and sklearn print them
        lines.append(f"{c[0]:>{width}}" + "".join(f"{v:>11}" for v in c[1:]))
    paths["txt"].write_text("\n".join(lines) + "\n")
    md = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join(c) + " |" for c in cells]
    paths["md"].write_text("\n".join(md) + "\n")
    return paths


def predictions(head: torch.nn.Module, head_name: str, outputs: dict[str, list], classes: list) -> stats.Predictions:
    """A split's predictions (``mm.analysis.evaluation.evaluate``'s per-batch ``outputs``) as ``mm.analysis.stats.Predictions``:
    logits as float32, token tags as the word-level tag ids ``TokenHead.decode`` reads."""
    names = [str(c) for c in classes]
    if head_name == "token":
        true, pred = head.decode(outputs["logits"], outputs["labels"])
        index = {tag: i for i, tag in enumerate(names)}
        ids = [np.array([index[t] for seq in seqs for t in seq], dtype=np.int64) for seqs in (pred, true)]
        return stats.Predictions(head_name, ids[0], ids[1], names, np.array([len(s) for s in true], dtype=np.int64),
                                 fingerprints=_fingerprints(outputs))
    logits = torch.cat(outputs["logits"]).float().numpy()
    return stats.Predictions(head_name, logits, torch.cat(outputs["labels"]).numpy(), names, fingerprints=_fingerprints(outputs))


def _fingerprints(outputs: dict[str, list]) -> np.ndarray | None:
    """The examples' fingerprints ``evaluate`` kept (``mm.analysis.fingerprints``), as a string array."""
    fingerprints = outputs.get("fingerprints")
    return None if fingerprints is None else np.array(fingerprints, dtype=str)


def write_test_reports(head: torch.nn.Module, head_name: str, outputs: dict[str, list], classes: list, metric: str,
                       out_dir: Path, tracker: Any, step: int, plot: bool = True) -> dict[str, Any]:
    """Everything a run reports about its test split at the end, into ``out_dir`` and the tracker.

    Writes ``test_predictions.npz``; the per-class (classification: ``test_report.{txt,json}``,
    ``test_confusion.png``), per-label (multilabel) or per-entity-type (token:
    ``test_report.{txt,json,md}``) report, also logged as the W&B table ``test/class_report``,
    ``test/label_report`` or ``test/entity_report``; for classification ``test_reliability.json``
    and ``test_reliability.png``. Sets the W&B summary's ``test_ci/*`` and ``test_ece``.

    Returns:
        ``{"test_ci": {"metric", "value", "low", "high", "level", "resamples", "n"} or None (a metric
        without a per-example form), "test_ece": float or None (heads other than classification)}``.
    """
    preds = predictions(head, head_name, outputs, classes)
    preds.save(out_dir / stats.PREDICTIONS.name)
    test_ece = None
    if head_name == "classification":
        report = write_classification_report(preds.outputs.argmax(1), preds.labels, classes, out_dir, "test", plot=plot)
        tracker.log_table("test/class_report", *report_table(json.loads(report["json"].read_text()), "class"))
        if "png" in report:
            tracker.log_image("test/confusion_matrix", report["png"], step)
        diagram = stats.reliability(softmax(preds.outputs.astype(np.float64), axis=1), preds.labels)
        test_ece = diagram.ece
        (out_dir / "test_reliability.json").write_text(json.dumps(
            {"ece": test_ece, "bins": len(diagram.count), "edges": diagram.edges.tolist(), "count": diagram.count.tolist(),
             "accuracy": _nulls(diagram.accuracy), "confidence": _nulls(diagram.confidence)}, indent=2))
        if plot:
            png = stats.reliability_plot({"test": diagram}, out_dir / "test_reliability.png")
            tracker.log_image("test/reliability", png, step)
    elif head_name in ("multilabel", "token"):
        if head_name == "multilabel":
            report, first = multilabel_report(preds.labels > 0.5, expit(preds.outputs) > 0.5, classes), "label"
        else:
            report, first = token_report(*head.decode(outputs["logits"], outputs["labels"])), "entity"
        write_token_report(report, out_dir, "test", first)
        tracker.log_table(f"test/{first}_report", *report_table(report, first))
    test_ci = None
    try:
        interval = stats.bootstrap_ci(stats.decompose(preds, metric))
    except KeyError:
        pass
    else:
        test_ci = {"metric": metric, "value": interval.value, "low": interval.low, "high": interval.high,
                   "level": interval.level, "resamples": stats.RESAMPLES, "n": preds.examples}
        tracker.summary({f"test_ci/{k}": v for k, v in test_ci.items()})
    if test_ece is not None:
        tracker.summary({"test_ece": test_ece})
    return {"test_ci": test_ci, "test_ece": test_ece}


def _nulls(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def write_calibration(val: stats.Predictions, test: stats.Predictions, out_dir: Path,
                      bins: int = stats.ECE_BINS) -> dict[str, Any]:
    """Temperature scaling of a classification run: ``T`` fitted on ``val``, ECE, NLL and accuracy on
    ``test`` before and after. Writes ``calibration.json`` (what this returns) and
    ``test_reliability_calibrated.png`` (the two reliability diagrams) into ``out_dir``."""
    temperature = stats.fit_temperature(val.outputs, val.labels)
    result = {"temperature": temperature, "bins": bins, "fitted_on": {"split": "val", "n": val.examples},
              "test": {"n": test.examples, "before": stats.calibration(test.outputs, test.labels, 1.0, bins),
                       "after": stats.calibration(test.outputs, test.labels, temperature, bins)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "calibration.json").write_text(json.dumps(result, indent=2))
    logits = test.outputs.astype(np.float64)
    diagrams = {"before": stats.reliability(softmax(logits, axis=1), test.labels, bins),
                f"after (T = {temperature:.3f})": stats.reliability(softmax(logits / temperature, axis=1),
                                                                   test.labels, bins)}
    stats.reliability_plot(diagrams, out_dir / "test_reliability_calibrated.png")
    return result
