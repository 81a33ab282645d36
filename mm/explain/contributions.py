"""Modality contributions of a whole split: per-sample exact Shapley values averaged per class
and over the split, written as CSV / Markdown / JSON and a bar plot, and logged to W&B.

Averages are of signed values (a modality that pushes the predicted class down counts negative)
in both currencies, probability and log-odds, grouped by the true class of the sample; the
``all`` row is the split. ``share`` columns give each modality's mean
Shapley value (and each pair's interaction) as a fraction of the mean gain of the predicted class's
log-odds over the all-missing model: the modalities' shares sum to 1, a scale-free "who decided".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from mm.explain.shapley import MEASURES, modality_shapley

if TYPE_CHECKING:
    from mm.tracking import Tracker


def split_shapley(model: torch.nn.Module, loader: DataLoader) -> dict[str, Any]:
    """``modality_shapley`` over every batch of ``loader``, concatenated (``labels`` added)."""
    parts, labels = [], []
    for batch in loader:
        parts.append(modality_shapley(model, batch))
        labels.append(batch["label"].cpu())
    first = parts[0]
    out: dict[str, Any] = {"modalities": first["modalities"], "pairs": first["pairs"], "labels": torch.cat(labels),
                           "forward_rows": sum(p["forward_rows"] for p in parts)}
    for key in ("target", "predicted", "present"):
        out[key] = torch.cat([p[key] for p in parts])
    for name in MEASURES:
        out[name] = {k: torch.cat([p[name][k] for p in parts]) for k in first[name]}
    return out


def summarize(result: dict[str, Any], classes: list) -> list[dict[str, Any]]:
    """Rows ``{"group", "n", "accuracy", "<measure>/<modality>", "<measure>/<a>:<b>", "<measure>/output",
    "<measure>/baseline", "share/<modality or pair>"}``: the split (``all``), then each true class."""
    mods, pairs = result["modalities"], [f"{a}:{b}" for a, b in result["pairs"]]
    labels = result["labels"]
    groups = [("all", torch.ones_like(labels, dtype=torch.bool))]
    groups += [(str(c), labels == i) for i, c in enumerate(classes) if bool((labels == i).any())]
    rows = []
    for name, sel in groups:
        row: dict[str, Any] = {"group": name, "n": int(sel.sum()),
                               "accuracy": float((result["predicted"][sel] == labels[sel]).double().mean())}
        for measure in MEASURES:
            r = result[measure]
            phi, inter = r["shapley"][sel], r["interaction"][sel]
            for i, m in enumerate(mods):
                row[f"{measure}/{m}"] = float(phi[:, i].mean())
            for p, pair in enumerate(pairs):
                row[f"{measure}/{pair}"] = float(inter[:, p].mean())
            row[f"{measure}/output"] = float(r["output"][sel].mean())
            row[f"{measure}/baseline"] = float(r["baseline"][sel].mean())
        # Shares of the mean gain over the all-missing model (log-odds): the modalities' shares sum
        # to 1 (efficiency); a pair's share is its mean interaction over the same gain.
        gain = row["logodds/output"] - row["logodds/baseline"]
        gain = gain if abs(gain) > 1e-12 else float("nan")
        row |= {f"share/{k}": row[f"logodds/{k}"] / gain for k in [*mods, *pairs]}
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], modalities: list[str], pairs: list[str], measure: str = "logodds") -> str:
    """The table of one measure: per group, each modality's mean Shapley value, each pair's mean
    interaction, the mean output and all-missing baseline, and accuracy."""
    cols = [*modalities, *pairs]
    unit = "log-odds" if measure == "logodds" else "probability"
    lines = [f"Exact modality Shapley values (all 2^M coalitions, not sampled), {unit} of the predicted class, "
             "mean per true class", "",
             "| class | n | accuracy | " + " | ".join(f"phi {m}" for m in modalities)
             + "".join(f" | I {p}" for p in pairs) + " | output | all missing |",
             "| --- | --- | --- |" + " --- |" * (len(cols) + 2)]
    for r in rows:
        cells = [r["group"], str(r["n"]), f"{r['accuracy']:.3f}"]
        cells += [f"{r[f'{measure}/{c}']:+.3f}" for c in cols]
        cells += [f"{r[f'{measure}/output']:.3f}", f"{r[f'{measure}/baseline']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], modalities: list[str], pairs: list[str], path: Path,
         measure: str = "logodds", title: str = "") -> Path:
    """Grouped bars: per group (split, then classes), each modality's mean Shapley value and each
    pair's mean interaction (hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cols = [*modalities, *pairs]
    x = np.arange(len(rows))
    width = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) * len(cols) / 2 + 2), 3.4))
    for k, c in enumerate(cols):
        ax.bar(x + (k - (len(cols) - 1) / 2) * width, [r[f"{measure}/{c}"] for r in rows], width,
               label=(f"phi {c}" if c in modalities else f"I {c}"), hatch="//" if c in pairs else None)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, [f"{r['group']}\n(n={r['n']})" for r in rows], fontsize=7)
    ax.set_ylabel("log-odds" if measure == "logodds" else "probability")
    ax.set_title(title or "exact modality Shapley values of the predicted class", fontsize=9)
    ax.legend(fontsize=7, ncol=min(len(cols), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_contributions(result: dict[str, Any], classes: list, out_dir: Path, title: str = "") -> dict[str, Path]:
    """Write ``contributions.{csv,md,json,png}`` (and ``contributions_samples.csv``, one row per
    sample) into ``out_dir``; return their paths."""
    from mm.explain.shapley import per_sample_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(result, classes)
    mods, pairs = result["modalities"], [f"{a}:{b}" for a, b in result["pairs"]]
    paths = {k: out_dir / f"contributions.{k}" for k in ("csv", "md", "json", "png")}
    paths["samples"] = out_dir / "contributions_samples.csv"
    for path, table in ((paths["csv"], rows), (paths["samples"], per_sample_rows(result, classes, result["labels"]))):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    paths["md"].write_text(markdown(rows, mods, pairs) + "\n" + markdown(rows, mods, pairs, "prob"))
    paths["json"].write_text(json.dumps({"exact": True, "coalitions": 2 ** len(mods), "modalities": mods,
                                         "forward_rows": result["forward_rows"], "rows": rows}, indent=2) + "\n")
    plot(rows, mods, pairs, paths["png"], title=title)
    return paths


def log_contributions(tracker: Tracker, result: dict[str, Any], classes: list, paths: dict[str, Path],
                      split: str) -> None:
    """The per-class table and the bar plot to W&B (``contributions/<split>`` and ``_plot``)."""
    rows = summarize(result, classes)
    columns = list(rows[0])
    tracker.log_table(f"contributions/{split}", columns, [[r[c] for c in columns] for r in rows])
    tracker.log_image(f"contributions/{split}_plot", paths["png"])
