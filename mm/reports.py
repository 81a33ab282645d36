"""End-of-training reports: per-class report and confusion-matrix plot for classification, per-entity-type
report for token tagging."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix


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
    return {name: {k: int(v) if k == "support" else float(np.nan_to_num(v)) for k, v in row.items()}
            for name, row in report.items()}


def report_table(report: dict[str, dict[str, Any]]) -> tuple[list[str], list[list]]:
    """``token_report`` as table columns and rows (entity types, then the averages), e.g. for W&B."""
    rows = [[name, row["precision"], row["recall"], row["f1-score"], row["support"]] for name, row in report.items()]
    return list(REPORT_COLUMNS), rows


def write_token_report(report: dict[str, dict[str, Any]], out_dir: Path, split: str = "test") -> dict[str, Path]:
    """Write ``token_report`` as ``<split>_report.json`` and as a table in ``<split>_report.txt``
    (aligned columns) and ``<split>_report.md`` (Markdown) into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{split}_report.{ext}" for ext in ("txt", "json", "md")}
    paths["json"].write_text(json.dumps(report, indent=2))
    columns, rows = report_table(report)
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
