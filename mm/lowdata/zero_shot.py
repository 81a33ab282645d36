"""Zero-shot classification by embedding similarity: no training, no labelled example.

A sample's embedding is compared (cosine similarity) with each class's embedding: the class name
put into a few templates (``"this is about {}."``), each filled template embedded and scaled to
unit length, the mean over templates scaled to unit length again (CLIP's prompt ensembling).
Text samples and class prompts go through the same sentence encoder: mm's text encoder with its
frozen backbone and mean pooling (``mm.encoders.text``), which for ``minilm`` is exactly
all-MiniLM-L6-v2's sentence embedding before normalisation. Logits are the cosines times
``SCALE`` = 20, the scale all-MiniLM-L6-v2 was trained with (sentence-transformers'
contrastive loss): the argmax, and so accuracy and F1, do not depend on it; the softmax
(calibration, loss) does.

Images and audio need a joint embedding model instead: an image (CLIP) or audio (CLAP) tower
trained to map into its text tower's space. The functions take such a pair as they are:
``class_embeddings`` takes the text side as any function from strings to vectors, and
``zero_shot_logits`` any sample embeddings of the same width. mm's image and audio encoders
(ImageNet EfficientNet, ViT, wav2vec2) are not aligned with a text encoder and no joint
checkpoint installs offline, so ``zero_shot`` accepts the text modality alone rather than compare
vectors from unrelated spaces; with a hub checkpoint of a joint model, its towers plug in here.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from mm.config import Config, ConfigError, to_dict, to_yaml
from mm.lowdata.fewshot import curve_row
from mm.lowdata.shallow import Features, build_frozen_model, extract_features
from mm.prepare import prepare
from mm.run.runtime import pick_device

TEMPLATES = ("this is about {}.", "a text about {}.", "{}", "a sentence that mentions {}.")
SCALE = 20.0


def check_modalities(modalities: Sequence[str]) -> None:
    """Zero-shot needs samples embedded in the space of the class prompts: text alone here.

    Raises:
        ValueError: any other modality, with why (no joint text-image / text-audio model).
    """
    if sorted(modalities) != ["text"]:
        raise ValueError(f"zero-shot classifies text only (data.modalities=[text], not {list(modalities)}): "
                         "images and audio need a joint embedding model (CLIP / CLAP style) whose image or audio "
                         "tower maps into its text tower's space; mm has no such checkpoint offline")


def check_templates(templates: Sequence[str]) -> list[str]:
    """The templates, each with exactly one ``{}`` where the class name goes.

    Raises:
        ValueError: no templates, or one without exactly one ``{}``.
    """
    templates = list(templates)
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"zero-shot templates need exactly one '{{}}' each, got {templates}")
    return templates


def text_embedder(encoder: torch.nn.Module, device: torch.device | str = "cpu",
                  batch_size: int = 64) -> Callable[[list[str]], torch.Tensor]:
    """A function from strings to the text encoder's pooled vectors ``[N, D]`` (eval mode, no gradient)."""

    @torch.no_grad()
    def embed(texts: list[str]) -> torch.Tensor:
        encoder.eval().to(device)
        parts = []
        for i in range(0, len(texts), batch_size):
            inputs = {k: v.to(device) for k, v in encoder.tokenize(texts[i : i + batch_size]).items()}
            parts.append(encoder(inputs).pooled.float().cpu())
        return torch.cat(parts)

    return embed


def class_embeddings(embed: Callable[[list[str]], torch.Tensor], names: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """``[C, D]``: per class name, the unit-length mean of its unit-length template embeddings.

    Args:
        embed: the text side of the embedding space (``text_embedder``, or a joint model's text tower).
        names: the class names, in class order.
        templates: strings with one ``{}`` (``check_templates``).
    """
    templates = check_templates(templates)
    prompts = [t.format(name) for name in names for t in templates]
    vectors = F.normalize(embed(prompts).float(), dim=-1).view(len(names), len(templates), -1)  # [C, T, D]
    return F.normalize(vectors.mean(1), dim=-1)


def zero_shot_logits(samples: torch.Tensor | np.ndarray, classes: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """``[N, C]``: ``scale`` x the cosine similarity of each sample embedding ``[N, D]`` to each class ``[C, D]``."""
    samples = F.normalize(torch.as_tensor(samples, dtype=torch.float32), dim=-1)
    return scale * samples @ F.normalize(classes.float(), dim=-1).T


@dataclass
class ZeroShot:
    """A zero-shot evaluation: per split its ``[N, C]`` logits, labels and the head's metrics (with ``loss``)."""

    classes: list
    names: list[str]
    templates: list[str]
    logits: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    metrics: dict[str, dict[str, float]]
    head: torch.nn.Module
    params_total: int


def zero_shot(cfg: Config, templates: Sequence[str] = TEMPLATES, names: dict[str, str] | None = None,
              features: dict[str, Features] | None = None, splits: Sequence[str] = ("val", "test")) -> ZeroShot:
    """Classify the ``splits`` of a text config with no training (see the module docstring).

    Args:
        cfg: a classification config with ``data.modalities=[text]``; its text encoder is used frozen.
        templates: the prompt templates, averaged.
        names: class label -> the words put into the templates (default: the label itself).
        features: the splits' frozen features when already computed (``mm.lowdata.shallow.extract_splits``).
        splits: the splits to classify.

    Raises:
        ValueError: another modality than text (``check_modalities``) or bad templates.
    """
    check_modalities(cfg.data.modalities)
    templates = check_templates(templates)
    device = pick_device(cfg.train.device)
    model, classes = build_frozen_model(cfg)
    if features is None:
        job = prepare(cfg, classes, model, device, cache=False, augment=False)
        features = {s: extract_features(model, job.loader(s), device) for s in splits}
    words = [(names or {}).get(str(c), str(c)) for c in classes]
    prototypes = class_embeddings(text_embedder(model.encoders["text"], device), words, templates)
    logits, labels, metrics = {}, {}, {}
    for s in splits:
        logits[s] = zero_shot_logits(features[s].x, prototypes)
        labels[s] = torch.as_tensor(features[s].y)
        loss = model.head.loss(logits[s], {"label": labels[s]}).item()
        metrics[s] = {"loss": loss, **model.head.metrics([logits[s]], [labels[s]])}
    return ZeroShot(classes, words, templates, logits, labels, metrics, model.head,
                    sum(p.numel() for p in model.encoders.parameters()))


def write_run(cfg: Config, result: ZeroShot, run_dir: Path, wall_time_s: float, plots: bool = True) -> dict[str, Any]:
    """Write a zero-shot evaluation as a trained run writes its results: ``config.yaml``,
    ``classes.json``, ``results.json`` (val/test metrics, 0 trainable parameters) and the test
    reports in ``report/`` (``mm.analysis.reports.write_test_reports``), also logged to W&B (job type ``zero-shot``).

    Returns:
        The ``results.json`` content.
    """
    from mm.analysis.reports import write_test_reports
    from mm.tracking import Tracker

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "classes.json").write_text(json.dumps(result.classes))
    counts = {"params/total": result.params_total, "params/trainable": 0}
    with Tracker(run_dir, to_dict(cfg), mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                 group=cfg.wandb.group, name=run_dir.name, tags=cfg.wandb.tags, job_type="zero-shot") as tracker:
        tracker.summary(counts)
        outputs = {"logits": [result.logits["test"]], "labels": [result.labels["test"]]}
        extra = write_test_reports(result.head, "classification", outputs, result.classes, cfg.train.metric,
                                   run_dir / "report", tracker, 0, plot=plots)
        tracker.log({**{f"val/{k}": v for k, v in result.metrics["val"].items()},
                     **{f"test/{k}": v for k, v in result.metrics["test"].items()}}, 0)
        tracker.summary({f"test/{k}": v for k, v in result.metrics["test"].items()})
    results = {"run_dir": str(run_dir), "method": "zero_shot", "templates": result.templates, "names": result.names,
               "best_step": 0, "steps": 0, "val": result.metrics["val"], "test": result.metrics["test"], **extra,
               "classes": len(result.classes), "params": counts, "wall_time_s": round(wall_time_s, 2)}
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def run(cfg: Config, run_dir: Path, templates: Sequence[str] = TEMPLATES,
        names: dict[str, str] | None = None, plots: bool = True) -> dict[str, Any]:
    """``zero_shot`` on val and test, written to ``run_dir`` by ``write_run``; returns the results."""
    t0 = time.perf_counter()
    result = zero_shot(cfg, templates, names)
    return write_run(cfg, result, run_dir, time.perf_counter() - t0, plots)


# ---- The k = 0 point of a shots curve (mm.experiments.curves) ----


@dataclass
class ZeroShotMethod:
    """A shots curve's k = 0 point: text zero-shot (``mm.lowdata.zero_shot``) with these templates and class words."""

    name: str = "zero_shot"
    templates: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)


def parse_zero_shot(raw: Any, path: Path) -> ZeroShotMethod | None:
    """A shots curve's ``zero_shot`` entry: absent or false (none), true (the default templates) or
    ``{name, templates, names, overrides}``.

    Raises:
        ConfigError: a malformed entry or bad templates (the message names the file).
    """
    if raw is None or raw is False:
        return None
    raw = {} if raw is True else raw
    if not isinstance(raw, dict) or set(raw) - {"name", "templates", "names", "overrides"}:
        raise ConfigError(f"{path}: 'zero_shot' is true or {{name, templates, names, overrides}}, not {raw!r}")
    try:
        templates = check_templates(raw.get("templates") or TEMPLATES)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    names = {str(k): str(v) for k, v in (raw.get("names") or {}).items()}
    return ZeroShotMethod(str(raw.get("name") or "zero_shot"), templates, names, [str(o) for o in raw.get("overrides") or []])


def zero_shot_row(cfg: Config, method: ZeroShotMethod, metric: str, run_dir: Path) -> dict[str, Any]:
    """The k = 0 row: ``mm.lowdata.zero_shot`` on val and test, also written as a run folder (``run_dir``)."""
    t0 = time.perf_counter()
    result = zero_shot(cfg, method.templates, method.names)
    shutil.rmtree(run_dir, ignore_errors=True)
    res = write_run(cfg, result, run_dir, time.perf_counter() - t0)
    return curve_row(method.name, "zero-shot", 0, None, 0, 0, res, metric, res["wall_time_s"])
