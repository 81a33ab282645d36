"""End-of-training reports for classification: per-class report and confusion-matrix plot."""

from __future__ import annotations

import json
from pathlib import Path

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
