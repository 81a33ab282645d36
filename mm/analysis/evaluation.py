"""Evaluating trained runs: reload a run, and measure robustness to missing and noisy modalities.

The robustness matrix has two parts, each a metric on one split:

- *removed*: the metric with each subset of the model's modalities removed at test time (their
  ``present`` mask set to False, so the model sees its learned missing embedding);
- *noise*: the metric with noise of growing strength ``s`` added to one modality at a time, as
  its encoder defines it (``Encoder.corrupt``): images and audio get Gaussian noise of standard
  deviation ``2 s`` on their normalised inputs (so ``s = 0.5`` is an SNR of 0 dB for a wave),
  text gets each real token replaced by a random vocabulary token with probability ``s``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from mm.analysis.fingerprints import split_fingerprints
from mm.config import Config, load_config
from mm.features import encode_with_cache
from mm.labels import build_codec
from mm.model import MultimodalModel, build_model
from mm.run.checkpoint import WEIGHTS, load_weights, verify_checkpoint
from mm.run.distributed import Dist, gather
from mm.run.runtime import autocast, to_device

if TYPE_CHECKING:
    from mm.tracking import Tracker

NOISE_LEVELS = (0.0, 0.1, 0.25, 0.5, 1.0)


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[Config, MultimodalModel, list]:
    """Rebuild a run's model from ``config.yaml`` and load its ``best`` (or ``last``) weights.

    Returns:
        The config, the model in eval mode on CPU, and the class list.
    """
    run_dir = Path(run_dir)
    for name in ("config.yaml", "classes.json", f"checkpoints/{checkpoint}/model.safetensors"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a finished mm run: {name} is missing")
    verify_checkpoint(run_dir / "checkpoints" / checkpoint)  # sizes and sha256 of its manifest
    cfg = load_config(run_dir / "config.yaml")
    classes = json.loads((run_dir / "classes.json").read_text())
    model = build_model(cfg, num_classes=build_codec(cfg.head.name, classes).num_outputs, classes=classes)
    load_weights(model, run_dir / "checkpoints" / checkpoint / WEIGHTS)
    return cfg, model.eval(), classes

@torch.no_grad()
def evaluate(model: MultimodalModel, loader: DataLoader, device: torch.device, precision: str,
             outputs: dict[str, list] | None = None, dist: Dist | None = None) -> dict[str, float]:
    """Loss and the head's metrics over a whole split (per-batch logits and labels are kept in
    ``outputs`` when given, with ``fingerprints``: each example's in the same order,
    ``mm.analysis.fingerprints``, or None for a dataset without manifest rows).

    Under torchrun (``dist``) each rank's loader holds its contiguous share of the split
    (``mm.run.distributed.eval_batches``); the shares are gathered in rank order, so every rank computes
    the metrics of the whole split, each sample counted once.
    """
    model.eval()
    logits, labels, indices, loss_sum, n = [], [], [], 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, precision):
            out = model(batch, outputs=encode_with_cache(model, batch))
        loss_sum += model.head.loss(out, batch).item() * len(batch["label"])
        n += len(batch["label"])
        logits.append(out.float().cpu())
        labels.append(batch["label"].cpu())
        indices += batch["index"].tolist() if "index" in batch else []
    if dist is not None and dist.enabled:
        shares = gather((logits, labels, indices, loss_sum, n), dist)
        logits, labels = [t for s in shares for t in s[0]], [t for s in shares for t in s[1]]
        indices = [i for s in shares for i in s[2]]
        loss_sum, n = sum(s[3] for s in shares), sum(s[4] for s in shares)
    metrics = model.head.metrics(logits, labels)
    if outputs is not None:
        fingerprints = split_fingerprints(loader.dataset, indices) if len(indices) == n else None
        outputs.update(logits=logits, labels=labels, fingerprints=fingerprints)
    return {"loss": loss_sum / n, **metrics}


def remove_modalities(batch: dict[str, Any], removed: tuple[str, ...]) -> dict[str, Any]:
    """A shallow copy of ``batch`` whose ``removed`` modalities are marked absent for every sample."""
    present = dict(batch["present"])
    for m in removed:
        present[m] = torch.zeros_like(present[m])
    return {**batch, "present": present}


@torch.no_grad()
def robustness(model: MultimodalModel, loader: DataLoader, levels: tuple[float, ...] = NOISE_LEVELS,
               seed: int = 0) -> list[dict[str, Any]]:
    """The robustness matrix as rows ``{"kind", "modality", "level", <metrics>}``.

    ``kind`` is ``removed`` (``modality`` = the removed ones joined by ``+``, or ``none``) or
    ``noise`` (``modality`` = the noisy one, ``level`` = its strength). The split is encoded once;
    a condition re-encodes only the modality it corrupts.
    """
    model.eval()
    batches = list(loader)
    clean = [model.encode(b) for b in batches]
    mods = model.modalities

    def score(conditioned: list[tuple[dict, dict]]) -> dict[str, float]:
        logits = [model(b, outputs=o).float() for b, o in conditioned]
        n = sum(len(b["label"]) for b, _ in conditioned)
        loss = sum(model.head.loss(lg, b).item() * len(b["label"]) for lg, (b, _) in zip(logits, conditioned, strict=True))
        # The loss as the training loop's evaluation reports it: a calibration check that accuracy misses.
        return {"loss": loss / n, **model.head.metrics(logits, [b["label"] for b, _ in conditioned])}

    rows = []
    for k in range(len(mods)):
        for removed in itertools.combinations(mods, k):
            m = score([(remove_modalities(b, removed), o) for b, o in zip(batches, clean, strict=True)])
            rows.append({"kind": "removed", "modality": "+".join(removed) or "none", "level": None, **m})
    for modality in mods:
        encoder = model.encoders[modality]
        for level in levels:
            g = torch.Generator().manual_seed(seed)
            conditioned = []
            for b, o in zip(batches, clean, strict=True):
                noisy = {**b, modality: encoder.corrupt(b[modality], level, g)} if level else b
                conditioned.append((noisy, {**o, modality: encoder(noisy[modality])}))
            rows.append({"kind": "noise", "modality": modality, "level": level, **score(conditioned)})
    return rows


def write_robustness(rows: list[dict[str, Any]], out_dir: Path, metric: str = "accuracy") -> dict[str, Path]:
    """Write the matrix as CSV, Markdown and a heatmap PNG; return their paths.

    Raises:
        KeyError: ``metric`` is not a column of the rows (the message lists those there are).
    """
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(rows[0])
    if metric not in keys:
        raise KeyError(f"metric {metric!r} is not in the robustness rows; have {[k for k in keys if k not in ('kind', 'modality', 'level')]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "robustness.csv", "md": out_dir / "robustness.md", "png": out_dir / "robustness.png"}
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    removed = [r for r in rows if r["kind"] == "removed"]
    noise = [r for r in rows if r["kind"] == "noise"]
    mods = sorted({r["modality"] for r in noise})
    levels = sorted({r["level"] for r in noise})
    grid = [[next(r[metric] for r in noise if r["modality"] == m and r["level"] == lv) for lv in levels] for m in mods]
    lines = [f"### {metric} with modalities removed at test time", "", "| removed | " + metric + " |", "| --- | --- |"]
    lines += [f"| {r['modality']} | {r[metric]:.3f} |" for r in removed]
    lines += ["", f"### {metric} with noise on one modality", "",
              "| modality | " + " | ".join(f"s={lv:g}" for lv in levels) + " |", "| --- |" + " --- |" * len(levels)]
    lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for m, row in zip(mods, grid, strict=True)]
    paths["md"].write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [1, len(levels)]})
    panels = [([[r[metric]] for r in removed], [r["modality"] for r in removed], [metric], "removed at test time"),
              (grid, mods, [f"{lv:g}" for lv in levels], "noise strength")]
    every = [r[metric] for r in rows]
    lo, hi = (0.0, 1.0) if 0 <= min(every) and max(every) <= 1 else (min(every), max(every))  # loss, MAE: their range
    for ax, (values, ylabels, xlabels, title) in zip(axes, panels, strict=True):
        im = ax.imshow(values, vmin=lo, vmax=hi, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(ylabels)), ylabels)
        ax.set_xticks(range(len(xlabels)), xlabels)
        ax.set_title(title)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center",
                        color="white" if (v - lo) < 0.6 * (hi - lo) else "black")
    fig.colorbar(im, ax=axes, shrink=0.8, label=metric)
    fig.savefig(paths["png"], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def log_robustness(tracker: Tracker, rows: list[dict[str, Any]], split: str, metric: str) -> None:
    """Logs the matrix to W&B as native charts, beside the table and heatmap ``evaluate.py`` logs.

    ``robustness/<split>/removed``: a bar of ``metric`` per removed subset of modalities;
    ``robustness/<split>/noise``: ``metric`` against noise strength, one line per modality. Every
    run logs the same keys, so one workspace panel overlays the runs of a group.
    """
    removed = [[r["modality"], r[metric]] for r in rows if r["kind"] == "removed"]
    tracker.log_bar(f"robustness/{split}/removed", ["removed", metric], removed, "removed", metric,
                    title=f"{metric} ({split}) with modalities removed at test time")
    noise = [[r["level"], r[metric], r["modality"]] for r in rows if r["kind"] == "noise"]
    tracker.log_line(f"robustness/{split}/noise", ["level", metric, "modality"], noise, "level", metric,
                     stroke="modality", title=f"{metric} ({split}) with noise on one modality")
