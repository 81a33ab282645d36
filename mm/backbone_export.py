"""Export a run's encoders as pretrained checkpoints, for transfer to another task.

Each encoder is written in the layout the same encoder loads from, so a later run uses it with
``encoders.<modality>.source=<folder>`` and no other change:

- text and wav2vec2 audio: the backbone's ``save_pretrained`` folder (``config.json``,
  ``model.safetensors``) with the tokenizer / feature extractor of the run's source beside it;
- image and spectrogram audio (timm backbones): timm's hub layout (``config.json`` with
  ``architecture``, ``model_args`` and ``pretrained_cfg``, and ``model.safetensors``), as
  ``timm.models.save_for_hf`` writes it, for a backbone without classifier (``num_classes`` 0).

Each encoder writes its own layout (``Encoder.export``).

A LoRA-adapted backbone is exported with its adapters merged into the base weights: the folder
holds a plain backbone with no ``lora_`` keys that computes what the adapted one computed.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from torch import nn

from mm.encoders import Encoder


def merge_lora(backbone: nn.Module) -> nn.Module:
    """A copy of ``backbone`` with every peft adapter layer merged and replaced by its base layer.

    A backbone without adapters is returned as a copy unchanged.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(backbone)
    adapted = [(name, m) for name, m in merged.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in adapted:
        layer.merge()  # base weight += scaling * B @ A, for the active adapter
        parent_name, _, child_name = name.rpartition(".")
        setattr(merged.get_submodule(parent_name), child_name, layer.get_base_layer())
    return merged


def export_encoder(encoder: Encoder, out_dir: str | Path) -> Path:
    """Write ``encoder``'s backbone (LoRA merged) and its preprocessing into ``out_dir``.

    Args:
        encoder: any encoder (``Encoder.export`` writes its own layout).
        out_dir: the folder to write; created, and must not exist already.

    Returns:
        ``out_dir``, loadable as the encoder's ``source``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=False)
    encoder.export(out_dir, merge_lora(encoder.backbone))
    return out_dir


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, checkpoint: str = "best",
               overwrite: bool = False) -> dict[str, Path]:
    """Export every encoder of a finished run to ``out_dir/<modality>``.

    Args:
        run_dir: a run folder written by ``mm.train.train``.
        out_dir: where to write; default ``run_dir/export``.
        checkpoint: ``best`` or ``last``.
        overwrite: replace the modality folders of an earlier export instead of failing.

    Returns:
        modality -> exported folder. ``out_dir/export.json`` records them with the run and the
        sources the encoders started from.
    """
    from mm.analysis.evaluation import load_run

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    cfg, model, _ = load_run(run_dir, checkpoint)
    folders = {m: out_dir / m for m in model.modalities}
    existing = [str(f) for f in folders.values() if f.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"already exported (pass overwrite=True / --overwrite): {', '.join(existing)}")
    for m, folder in folders.items():
        shutil.rmtree(folder, ignore_errors=True)
        export_encoder(model.encoders[m], folder)
    record = {
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "folders": {m: str(f) for m, f in folders.items()},
        "trained_from": {m: getattr(cfg.encoders, m).source for m in folders},
        "policies": {m: getattr(cfg.encoders, m).trainable for m in folders},
    }
    (out_dir / "export.json").write_text(json.dumps(record, indent=2) + "\n")
    return folders
