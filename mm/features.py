"""Frozen-feature caching: a frozen encoder's outputs for a split are computed once, then reused.

A modality is cached when its encoder stays frozen for the whole run (policy ``frozen`` or
``linear_probe``: no backbone parameter requires a gradient, and nothing thaws it later), its
preprocessing is deterministic (``deterministic_preprocessing``, the hook augmentation must turn
off) and ``data.cache_features`` is ``auto``. Modality dropout and missing modalities act on the
encoders' outputs (``MultimodalModel.fill_missing``), so they keep the cache valid.

An entry lives under ``cache_dir()/features/<key>/`` (layout: ``mm.data.cached``). The key hashes
everything that decides the outputs (``feature_key``): encoder class, source and resolved path, the
backbone's weights and architecture, the preprocessing config, the split's rows and media file
stats, the split, the precision and the library versions; when anything changes, so does the key.

The loop sees two calls: ``use_feature_cache`` after the splits are built (datasets that skip the
cached modalities, a collate function that gathers their outputs) and ``encode_with_cache`` before
the model call (cached outputs merged with the live encoders' ones).
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mm.data.cached import CachedCollator, CachedSplit, FeatureTable, compute_table, load_or_build
from mm.data.collate import TEXT, Collator
from mm.encoders.base import FROZEN_POLICIES, Encoder, EncoderOutput
from mm.encoders.sources import resolve_source
from mm.paths import cache_dir
from mm.run.runtime import autocast as run_autocast

FORMAT_VERSION = 2  # bump when preprocessing or encoding code changes in a way the key cannot see


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def deterministic_preprocessing(encoder: Encoder) -> bool:
    """Whether a sample's encoder input is the same every time it is loaded.

    The hook for augmentation: an encoder with random training-time preprocessing sets
    ``augment = True``; an evaluation transform with a ``Random*`` step (torchvision / timm) also counts.
    """
    if getattr(encoder, "augment", False):
        return False
    transform = getattr(encoder, "transform", None)
    steps = getattr(transform, "transforms", [transform])
    return not any(type(step).__name__.startswith("Random") for step in steps)


def off_reason(cfg: Any, modality: str, encoder: Encoder) -> str | None:
    """Why ``modality``'s outputs cannot come from the cache in the run ``cfg`` describes, or None."""
    policy = getattr(encoder, "policy", None)
    if cfg.data.cache_features == "off":
        return "data.cache_features=off"
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        return "mixup/cutmix blend the inputs"
    if policy not in FROZEN_POLICIES:
        return f"trainable={policy}"
    if not encoder.frozen_for_run:
        return "backbone has trainable parameters"
    if not deterministic_preprocessing(encoder):
        return "random preprocessing (augmentation)"
    if modality == TEXT and cfg.head.name == "token":
        return "the token head aligns its labels with the tokenization"
    return None


def data_fingerprint(dataset: Any, modality: str, media: bool) -> str:
    """sha256 of a split's rows (as parsed from its JSONL) and, for media, each file's size and mtime."""
    h = hashlib.sha256(str(Path(dataset.root).resolve()).encode())
    h.update(json.dumps(dataset.rows, sort_keys=True, default=str).encode())
    if media:
        for row in dataset.rows:
            if row.get(modality) is not None:
                st = (Path(dataset.root) / row[modality]).stat()
                h.update(f"|{row[modality]}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def encoder_fields(encoder: Encoder) -> dict[str, Any]:
    """What decides a frozen encoder's outputs for given inputs: class, source, weights,
    architecture and preprocessing (computed once per encoder and run: hashing the weights reads them all)."""
    backbone = encoder.backbone
    config = backbone.config.to_dict() if hasattr(backbone, "config") else getattr(backbone, "pretrained_cfg", {})
    return {
        "encoder": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
        "source": encoder.source,
        "resolved": str(Path(resolve_source(encoder.source)).expanduser().resolve()),
        "weights": encoder.weights_digest(),
        "architecture": _sha256(repr(backbone) + json.dumps(config, sort_keys=True, default=str)),
        "preprocessing": encoder.fingerprint(),
        "media": encoder.media,
        "torch": torch.__version__,
    }


def feature_key(encoder: dict[str, Any], modality: str, dataset: Any, split: str,
                dtype: str) -> tuple[str, dict[str, Any]]:
    """The cache key of an encoder's outputs on one split, and the fields it hashes.

    Args:
        encoder: ``encoder_fields`` of a frozen encoder.
        modality: the encoder's modality.
        dataset: the split (``root``, ``rows``).
        split: the split's name.
        dtype: how the outputs are computed: ``<device type>/<dtype>``, e.g. ``cpu/torch.float32``
            or ``cuda/torch.bfloat16`` (under autocast).
    """
    data = data_fingerprint(dataset, modality, encoder["media"])
    fields = {"format": FORMAT_VERSION, "modality": modality, **encoder, "data": data, "split": split, "dtype": dtype}
    return _sha256(json.dumps(fields, sort_keys=True, default=str))[:24], fields


def encode_with_cache(model: nn.Module, batch: dict[str, Any]) -> dict[str, EncoderOutput] | None:
    """The cached modalities' outputs carried by the batch; the model's forward encodes the others
    (inside its own forward, where DDP and FSDP expect every trainable encoder to run).

    None when the batch carries no cached outputs (the model then encodes everything itself).
    """
    cached = batch.get("cached")
    if not cached:
        return None
    return {m: EncoderOutput(**cached[m]) for m in model.modalities if m in cached}


def describe(entry: dict[str, Any]) -> str:
    """One modality's report in words: ``train=built val=hit test=hit`` or ``off (trainable=full)``."""
    if not entry["used"]:
        return f"off ({entry['reason']})"
    return " ".join(f"{s}={e['status']}" for s, e in entry["splits"].items())


def use_feature_cache(cfg: Any, model: nn.Module, splits: dict[str, Any], collate: Collator,
                      device: torch.device) -> tuple[dict[str, Any], Callable, dict[str, Any]]:
    """Serve the frozen modalities of a run from the feature cache, building missing entries.

    Args:
        cfg: the run's config (``data.cache_features``, ``head.name``, ``train.eval_batch_size``).
        model: the built model; its encoders compute missing entries.
        splits: split name -> dataset.
        collate: the run's collate function.
        device: where missing entries are computed, in the run's precision (``train.precision``).

    Returns:
        The splits and collate function to train with (unchanged when nothing is cached) and a
        report per modality: ``{"used": False, "reason": ...}`` or ``{"used": True, "splits":
        {split: {"key": ..., "status": "hit" | "built"}}}``.
    """
    autocast = functools.partial(run_autocast, device, cfg.train.precision)
    with autocast():
        on = torch.is_autocast_enabled(device.type)
        dtype = f"{device.type}/{torch.get_autocast_dtype(device.type) if on else torch.float32}"
    report: dict[str, Any] = {}
    tables: dict[str, dict[str, FeatureTable]] = {s: {} for s in splits}
    for m, encoder in sorted(model.encoders.items()):
        reason = off_reason(cfg, m, encoder)
        if reason is not None:
            report[m] = {"used": False, "reason": reason}
            continue
        fingerprint = encoder_fields(encoder)  # once per encoder, for all splits
        report[m] = {"used": True, "splits": {}}
        for s, dataset in splits.items():
            key, fields = feature_key(fingerprint, m, dataset, s, dtype)
            build = functools.partial(compute_table, encoder, m, dataset, cfg.train.eval_batch_size, device,
                                      autocast, cfg.data.num_workers)
            tables[s][m], status = load_or_build(cache_dir() / "features", key, fields, build)
            report[m]["splits"][s] = {"key": key, "status": status}
    print("feature cache:", "; ".join(f"{m} {describe(r)}" for m, r in report.items()), file=sys.stderr)
    cached = [m for m, r in report.items() if r["used"]]
    if not cached:
        return splits, collate, report
    return {s: CachedSplit(d, tables[s]) for s, d in splits.items()}, CachedCollator(collate, cached), report
