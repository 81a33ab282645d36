"""A deterministic synthetic tri-modal benchmark with exactly known ceilings.

The factors, the tasks and their exact ceilings live in ``mm.data.synthetic_tasks`` and are
re-exported here; this module renders samples from them. ``generate`` writes a folder in the
manifest layout real datasets use::

    <root>/{train,val,test}.jsonl  images/<split>/<i>.png  audio/<split>/<i>.wav  meta.json

Each row has ``text``, the caption's words under ``tokens`` (for the token task ``tags``),
``image``, ``audio``, its ``factors`` and ``labels: {task: label}``. ``ensure_synthetic`` caches
that folder under a hash of the generation parameters.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image

from mm.data.synthetic_render import caption_words, render_audio, render_caption, render_image
from mm.data.synthetic_tasks import (  # noqa: F401  (re-exported)
    CEILING_METRIC,
    FACTORS,
    MODALITIES,
    TAG_SLOTS,
    TASKS,
    FactorSpec,
    TaskSpec,
    caption_tags,
    ceiling,
    ceiling_table,
    empirical_ceiling,
    min_mse,
    min_mse_table,
    modality_subsets,
    subset_key,
    task_classes,
    task_label,
)

FORMAT_VERSION = 2
SPLITS: tuple[str, ...] = ("train", "val", "test")
COMPLETE_MARKER = ".complete"


def _sample(seed: int, split: str, index: int, params: dict) -> tuple[dict, np.ndarray, np.ndarray]:
    """Draws one sample's factors, picture, caption and clip from its own random streams."""
    streams = np.random.SeedSequence([seed, SPLITS.index(split), index]).spawn(4)
    factor_ss, image_ss, text_ss, audio_ss = streams
    frng = np.random.default_rng(factor_ss)
    factors = {name: spec.values[int(frng.integers(len(spec.values)))] for name, spec in FACTORS.items()}
    image = render_image(
        np.random.default_rng(image_ss),
        color=factors["color"],
        shape=factors["shape"],
        brightness=factors["brightness"],
        size=params["image_size"],
        noise=params["image_noise"],
    )
    caption = render_caption(
        np.random.default_rng(text_ss),
        shape=factors["shape"],
        animal=factors["animal"],
        claim=factors["claim"],
        count=factors["count"],
        filler_prob=params["text_noise"],
    )
    audio = render_audio(
        np.random.default_rng(audio_ss),
        pitch=factors["pitch"],
        count=int(factors["count"]),
        seconds=params["audio_seconds"],
        sample_rate=params["sample_rate"],
        snr_db=params["audio_snr_db"],
    )
    words = caption_words(caption)
    labels: dict[str, Any] = {}
    for task, spec in TASKS.items():
        label = task_label(task, factors)
        labels[task] = caption_tags(words, label) if spec.kind == "token" else label
        labels[task] = list(labels[task]) if isinstance(labels[task], tuple) else labels[task]
    row = {
        "id": f"{split}-{index:06d}",
        "text": "".join(text for text, _ in caption),
        "tokens": [word for word, _ in words],
        "image": f"images/{split}/{index:06d}.png",
        "audio": f"audio/{split}/{index:06d}.wav",
        "factors": factors,
        "labels": labels,
    }
    return row, image, audio


def generate(
    root: Path,
    *,
    seed: int = 0,
    n_train: int = 2000,
    n_val: int = 400,
    n_test: int = 400,
    image_size: int = 32,
    image_noise: float = 0.08,
    text_noise: float = 0.3,
    audio_snr_db: float = 10.0,
    audio_seconds: float = 1.0,
    sample_rate: int = 16000,
) -> Path:
    """Writes the benchmark into ``root``; the same arguments give byte-identical files.

    Every sample has its own random streams, seeded by (seed, split, index), so splits never
    share draws and one sample does not depend on how many came before it.

    Returns:
        ``root``.
    """
    params = {k: v for k, v in locals().items() if k != "root"}
    root = Path(root)
    for split, n in zip(SPLITS, (n_train, n_val, n_test), strict=True):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "audio" / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for index in range(n):
            row, image, audio = _sample(seed, split, index, params)
            Image.fromarray(image, mode="RGB").save(root / row["image"])
            wav = io.BytesIO()  # soundfile flushes slowly to disk files; write the bytes at once
            sf.write(wav, audio, sample_rate, subtype="PCM_16", format="WAV")
            (root / row["audio"]).write_bytes(wav.getvalue())
            lines.append(json.dumps(row) + "\n")
        (root / f"{split}.jsonl").write_text("".join(lines))

    meta = {
        "format_version": FORMAT_VERSION,
        "params": params,
        "factors": {
            name: {"values": list(f.values), "modalities": sorted(f.modalities)}
            for name, f in FACTORS.items()
        },
        "tasks": {
            name: {
                "description": t.description,
                "kind": t.kind,
                "ceiling_metric": CEILING_METRIC[t.kind],
                "factors": list(t.factors),
                "classes": list(task_classes(name)),
            }
            for name, t in TASKS.items()
        },
        "ceilings": ceiling_table(),
        "min_mse": min_mse_table(),
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root


def _resolve_params(params: dict) -> dict:
    """Fills in ``generate``'s defaults and normalises types, so equal settings hash equally."""
    defaults = {n: p.default for n, p in inspect.signature(generate).parameters.items() if n != "root"}
    if unknown := set(params) - set(defaults):
        raise TypeError(f"unknown synthetic parameters {sorted(unknown)}; valid: {sorted(defaults)}")
    return {k: type(v)(params.get(k, v)) for k, v in defaults.items()}


def ensure_synthetic(cache_root: Path, **params) -> Path:
    """Returns a generated benchmark folder for ``params``, generating it once.

    The folder is ``cache_root / "synthetic" / <hash of params and FORMAT_VERSION>``. It is
    generated in a temporary sibling and renamed into place, so a partial folder is never
    returned; when two processes race, the loser deletes its copy and uses the winner's.

    Args:
        cache_root: Cache directory, e.g. ``mm.paths.cache_dir()``.
        **params: Keyword arguments of ``generate``.
    """
    resolved = _resolve_params(params)
    digest = hashlib.sha256(
        json.dumps({**resolved, "format_version": FORMAT_VERSION}, sort_keys=True).encode()
    ).hexdigest()[:12]
    final = Path(cache_root) / "synthetic" / digest
    if (final / COMPLETE_MARKER).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # left behind without a marker by something other than this function
        shutil.rmtree(final, ignore_errors=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.tmp-", dir=final.parent))
    try:
        generate(tmp, **resolved)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        os.rename(tmp, final)
    except OSError:
        if not (final / COMPLETE_MARKER).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return final
