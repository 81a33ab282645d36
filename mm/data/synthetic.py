"""A deterministic synthetic tri-modal benchmark with exactly known ceilings.

Seven independent, uniform latent factors are each visible to some modalities (``FACTORS``);
every task label is a function of a few factors (``TASKS``). So the best accuracy reachable
from any subset of modalities follows from the factor table alone (``ceiling``), and the data
can be checked against it (``empirical_ceiling``).

``generate`` writes a folder in the manifest layout real datasets use::

    <root>/{train,val,test}.jsonl  images/<split>/<i>.png  audio/<split>/<i>.wav  meta.json

``ensure_synthetic`` caches that folder under a hash of the generation parameters.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import itertools
import json
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from mm.data.synthetic_render import render_audio, render_image, render_text

FORMAT_VERSION = 1
MODALITIES: tuple[str, ...] = ("audio", "image", "text")
SPLITS: tuple[str, ...] = ("train", "val", "test")
COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class FactorSpec:
    """A latent factor: its values (drawn uniformly) and the modalities that show it."""

    values: tuple[str, ...]
    modalities: frozenset[str]


@dataclass(frozen=True)
class TaskSpec:
    """A task: the factors its label reads and the label as a function of those factors."""

    description: str
    factors: tuple[str, ...]
    label: Callable[[dict[str, str]], str]


def _trimodal_label(f: dict[str, str]) -> str:
    warmth = "warm" if f["color"] in ("red", "yellow") else "cool"
    kind = "mammal" if f["animal"] in ("cat", "dog") else "other"
    return f"{warmth}-{kind}-{f['pitch']}"


FACTORS: dict[str, FactorSpec] = {
    "color": FactorSpec(("red", "green", "blue", "yellow"), frozenset({"image"})),
    "shape": FactorSpec(("circle", "square", "triangle"), frozenset({"image", "text"})),
    "brightness": FactorSpec(("dark", "light"), frozenset({"image"})),
    "animal": FactorSpec(("cat", "dog", "bird", "fish"), frozenset({"text"})),
    "claim": FactorSpec(("dark", "light"), frozenset({"text"})),
    "pitch": FactorSpec(("low", "high"), frozenset({"audio"})),
    "count": FactorSpec(("1", "2", "3"), frozenset({"audio", "text"})),
}

TASKS: dict[str, TaskSpec] = {
    "color_animal": TaskSpec(
        "colour of the shape (image) and animal named (text): needs both",
        ("color", "animal"),
        lambda f: f"{f['color']}-{f['animal']}",
    ),
    "match": TaskSpec(
        "does the caption's brightness claim match the picture? interaction, late fusion fails",
        ("claim", "brightness"),
        lambda f: "yes" if f["claim"] == f["brightness"] else "no",
    ),
    "trimodal": TaskSpec(
        "warm/cool colour (image), mammal or not (text), pitch (audio): needs all three",
        ("color", "animal", "pitch"),
        _trimodal_label,
    ),
    "color": TaskSpec(
        "colour of the shape: the image alone solves it (transfer source)", ("color",), lambda f: f["color"]
    ),
    "shape": TaskSpec("shape: redundant, image or text alone solves it", ("shape",), lambda f: f["shape"]),
    "count": TaskSpec(
        "number of beeps / objects: redundant, text or audio alone solves it",
        ("count",),
        lambda f: f["count"],
    ),
    "pitch": TaskSpec("low or high tone: the audio alone solves it", ("pitch",), lambda f: f["pitch"]),
}


def _task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown synthetic task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]


def task_label(task: str, factors: dict[str, str]) -> str:
    """The label of ``task`` for one sample; the label function sees only its own factors."""
    spec = _task(task)
    return spec.label({k: factors[k] for k in spec.factors})


def _grid() -> list[dict[str, str]]:
    """Every joint factor assignment; each is equally likely."""
    return [
        dict(zip(FACTORS, values, strict=True))
        for values in itertools.product(*(f.values for f in FACTORS.values()))
    ]


def task_classes(task: str) -> tuple[str, ...]:
    """The sorted class names of ``task``."""
    return tuple(sorted({task_label(task, f) for f in _grid()}))


def _visible(modalities: Iterable[str]) -> tuple[str, ...]:
    mods = set(modalities)
    if unknown := mods - set(MODALITIES):
        raise ValueError(f"unknown modalities {sorted(unknown)}; valid: {list(MODALITIES)}")
    return tuple(name for name, spec in FACTORS.items() if spec.modalities & mods)


def _majority_accuracy(pairs: Iterable[tuple[tuple[str, ...], str]]) -> Fraction:
    """Accuracy of predicting the most common label within each group of ``(group, label)``."""
    groups: dict[tuple[str, ...], Counter] = defaultdict(Counter)
    for key, label in pairs:
        groups[key][label] += 1
    total = sum(sum(c.values()) for c in groups.values())
    return Fraction(sum(max(c.values()) for c in groups.values()), total)


def ceiling(task: str, modalities: Iterable[str]) -> float:
    """Bayes-optimal accuracy of ``task`` from the factors the given modalities show.

    Computed exactly over the joint factor grid: the sum over visible-factor assignments v of
    P(v) * max_y P(y | v). With no modalities this is the majority-class rate.
    """
    return float(_exact_ceiling(task, _visible(modalities)))


@functools.cache
def _exact_ceiling(task: str, visible: tuple[str, ...]) -> Fraction:
    return _majority_accuracy((tuple(f[k] for k in visible), task_label(task, f)) for f in _grid())


def subset_key(modalities: Iterable[str]) -> str:
    """``["text", "image"]`` -> ``"image+text"``."""
    return "+".join(sorted(modalities))


def modality_subsets() -> list[tuple[str, ...]]:
    """The 7 non-empty subsets of the modalities, smallest first."""
    return [s for r in range(1, len(MODALITIES) + 1) for s in itertools.combinations(MODALITIES, r)]


def ceiling_table() -> dict[str, dict[str, float]]:
    """``{task: {"image+text": ceiling, ...}}`` over all non-empty modality subsets."""
    return {task: {subset_key(s): ceiling(task, s) for s in modality_subsets()} for task in TASKS}


def empirical_ceiling(rows: list[dict], task: str, modalities: Iterable[str]) -> float:
    """The ceiling measured on generated manifest rows.

    Rows are grouped by the visible factors that the task's label reads; the score is the
    accuracy of predicting each group's majority label. Grouping only by relevant factors
    keeps the small-sample optimism low (irrelevant factors would split the groups further).
    """
    spec = _task(task)
    keys = [k for k in _visible(modalities) if k in spec.factors]
    return float(_majority_accuracy((tuple(r["factors"][k] for k in keys), r["labels"][task]) for r in rows))


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
    text = render_text(
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
    row = {
        "id": f"{split}-{index:06d}",
        "text": text,
        "image": f"images/{split}/{index:06d}.png",
        "audio": f"audio/{split}/{index:06d}.wav",
        "factors": factors,
        "labels": {task: task_label(task, factors) for task in TASKS},
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
                "factors": list(t.factors),
                "classes": list(task_classes(name)),
            }
            for name, t in TASKS.items()
        },
        "ceilings": ceiling_table(),
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
