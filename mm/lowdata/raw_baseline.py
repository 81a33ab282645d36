"""Raw-input shallow baseline: logistic regression on raw pixels and log-mel statistics.

The floor that mm's deep models must beat on a manifest folder. Images become their greyscale
pixels resized to ``size`` x ``size`` and scaled to [0, 1]; audio (read with ``load_audio`` at
16 kHz) becomes the per-mel mean and standard deviation over time of a 64-band log-mel spectrogram
and of its deltas. Features of several modalities are concatenated in sorted order (an absent
one is zeros). The fit is ``mm.lowdata.shallow.fit_logistic``: standardised logistic regression for each
``C`` of a grid, the best validation accuracy chosen (the smallest ``C`` on ties), then tested.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio
from PIL import Image

from mm.data.audio_io import load_audio
from mm.data.manifest import SPLITS, ManifestError, read_manifest
from mm.lowdata.shallow import Features, ShallowResult, fit_logistic

RAW_MODALITIES = ("image", "audio")
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
SAMPLE_RATE = 16_000
N_MELS = 64


def image_features(path: Path, size: int = 28) -> np.ndarray:
    """``float32 [size*size]``: greyscale pixels, bilinearly resized, scaled to [0, 1]."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return pixels.reshape(-1) / 255.0


class LogMelStats:
    """Waves ``[..., S]`` -> ``float32 [..., 4 * n_mels]``: mean and std over time of log-mel and of its deltas."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS) -> None:
        self.sample_rate = sample_rate
        self.dim = 4 * n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=400, hop_length=160, n_mels=n_mels)

    def __call__(self, wave: torch.Tensor) -> np.ndarray:
        logmel = torch.log(self.mel(wave) + 1e-6)  # [..., S] -> [..., n_mels, T]
        deltas = torchaudio.functional.compute_deltas(logmel)  # [..., n_mels, T]
        parts = [logmel.mean(-1), logmel.std(-1), deltas.mean(-1), deltas.std(-1)]
        return torch.cat(parts, -1).numpy().astype(np.float32)  # [..., 4 * n_mels]


def read_labelled(root: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """The rows of each split and the classes (sorted distinct labels of train); an unknown label
    in val or test is an error naming ``file:line``."""
    rows = {s: read_manifest(root / f"{s}.jsonl") for s in SPLITS}
    classes = sorted({str(r["label"]) for r in rows["train"] if "label" in r})
    for split_rows in rows.values():
        for r in split_rows:
            if str(r.get("label")) not in classes:
                raise ManifestError(f"{r['_where']}: label {r.get('label')!r} is not one of the training classes")
    return rows, classes


def modality_features(root: Path, rows: list[dict], modality: str, size: int = 28,
                      audio: LogMelStats | None = None) -> np.ndarray:
    """``float32 [N, D]`` raw features of one modality for ``rows``; a row without it gets zeros."""
    audio = audio or LogMelStats()
    dim = size * size if modality == "image" else audio.dim
    out = np.zeros((len(rows), dim), dtype=np.float32)
    if modality not in RAW_MODALITIES:
        raise ValueError(f"unknown raw modality {modality!r}; expected one of {list(RAW_MODALITIES)}")
    present = [i for i, r in enumerate(rows) if r.get(modality) is not None]
    if modality == "image":
        for i in present:
            out[i] = image_features(root / rows[i]["image"], size)
        return out
    # Audio: clips of equal length go through the spectrogram together (much faster than one by one).
    waves = {i: load_audio(root / rows[i]["audio"], audio.sample_rate) for i in present}
    by_length: dict[int, list[int]] = {}
    for i, w in waves.items():
        by_length.setdefault(len(w), []).append(i)
    for group in by_length.values():
        for start in range(0, len(group), 256):
            chunk = group[start:start + 256]
            out[chunk] = audio(torch.stack([waves[i] for i in chunk]))  # [B, S] -> [B, 4 * n_mels]
    return out


def subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``modalities`` in sorted order, singletons first."""
    ms = sorted(modalities)
    return [s for k in range(1, len(ms) + 1) for s in itertools.combinations(ms, k)]


def run_raw_baseline(root: str | Path, modalities: Sequence[str] = RAW_MODALITIES, grid: Sequence[float] = C_GRID,
                     size: int = 28, max_iter: int = 2000) -> tuple[list[dict], dict[tuple[str, ...], ShallowResult]]:
    """Fit the raw-input baseline on every modality subset of a manifest folder.

    Args:
        root: the manifest folder (``train/val/test.jsonl``).
        modalities: raw modalities to use, a subset of ``image`` and ``audio``.
        grid: the inverse regularisation strengths to try; chosen on val accuracy.
        size: image side after resizing.
        max_iter: lbfgs iterations.

    Returns:
        One summary row per subset (chosen C, val/test accuracy and macro-F1, feature width,
        wall time including its share of feature extraction) and the fitted results by subset.
    """
    root = Path(root)
    unknown = sorted(set(modalities) - set(RAW_MODALITIES))
    if unknown:
        raise ValueError(f"unknown raw modalities {unknown}; expected a subset of {list(RAW_MODALITIES)}")
    rows, classes = read_labelled(root)
    labels = {s: np.array([classes.index(str(r["label"])) for r in rs]) for s, rs in rows.items()}
    audio, feats, extract_s = LogMelStats(), {}, {}
    for m in sorted(modalities):  # each modality's features once, shared by every subset
        t0 = time.perf_counter()
        feats[m] = {s: modality_features(root, rs, m, size, audio) for s, rs in rows.items()}
        extract_s[m] = time.perf_counter() - t0
    table, results = [], {}
    for subset in subsets(modalities):
        features = {s: Features(np.concatenate([feats[m][s] for m in subset], 1), labels[s],
                                {m: feats[m][s].shape[1] for m in subset}) for s in SPLITS}
        result = results[subset] = fit_logistic(features, len(classes), grid=grid, max_iter=max_iter)
        table.append({
            "modalities": "+".join(subset), "features": int(features["train"].x.shape[1]), "C": result.C,
            "val acc": result.val["accuracy"], "test acc": result.test["accuracy"],
            "val macro-F1": result.val["macro_f1"], "test macro-F1": result.test["macro_f1"],
            "wall time (s)": result.fit_time_s + sum(extract_s[m] for m in subset),
            "val acc by C": {str(c): a for c, a in result.val_accuracy_by_C.items()},
        })
    return table, results
