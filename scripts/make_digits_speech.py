#!/usr/bin/env python
"""Build "digits speech": a real, offline, paired image+audio manifest dataset of ten digit classes.

    python scripts/make_digits_speech.py OUT_DIR [--seed 0] [--occlusion 0.5] [--occlusion-size 0.4 0.7] [--pixel-noise 0.15]
        [--snr-db 0 20] [--max-shift 0.3] [--limit N] [--force]

Images are scikit-learn's 1797 handwritten 8x8 digits, upsampled (bicubic) to 28x28 greyscale PNGs
(bright ink on black), with a random grey/black occluding rectangle and additive pixel noise. Each
image is paired with a spoken word of the same digit ("zero".."nine") synthesised by espeak-ng with
one of several speakers (a voice plus a variant such as ``+f3``), speeds and pitches, resampled to
16 kHz mono, trimmed, shifted by a random leading silence and mixed with white, pink or brown noise
at a random SNR. Images are split 60/20/20 per class, each image in one split only; the test split
speaks with speakers never heard in train or val. The folder gets ``{train,val,test}.jsonl``,
``images/``, ``audio/``, ``meta.json`` and ``README.md``. Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional
from PIL import Image
from sklearn.datasets import load_digits

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng speakers: an English accent plus a voice variant. The test speakers use variants
# (m6, m7, f3, klatt) and two accents (Caribbean, West Midlands) that train and val never hear.
TRAIN_SPEAKERS = ("en-us+m1", "en-us+f2", "en-gb+m3", "en-gb+f1", "en-gb-scotland+m2",
                  "en-gb-x-rp+f4", "en-gb-x-gbclan+m4", "en-us-nyc+f5")
TEST_SPEAKERS = ("en-029+m7", "en-gb-x-gbcwmd+f3", "en-gb-x-rp+m6", "en-us+klatt")
SPEEDS = (130, 155, 180, 205)  # words per minute (espeak-ng -s)
PITCHES = (30, 45, 60, 75)  # 0..99 (espeak-ng -p)
SAMPLE_RATE = 16_000
INSTALL = "apt-get install espeak-ng"

# (word, speaker, speed, pitch) -> (wave, sample rate); espeak-ng by default, a fake in the tests.
Synthesizer = Callable[[str, str, int, int], tuple[np.ndarray, int]]


def espeak(word: str, speaker: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Speak ``word`` with espeak-ng (``-w`` to a temporary WAV, 22050 Hz); returns the wave and rate."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "u.wav"
        subprocess.run(["espeak-ng", "-v", speaker, "-s", str(speed), "-p", str(pitch), "-w", str(path), word],
                       check=True, capture_output=True)
        wave, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return wave.mean(axis=1), rate


def split_images(labels: np.ndarray, seed: int, fractions: Sequence[float] = (0.6, 0.2)) -> dict[str, np.ndarray]:
    """Stratified, seeded split of image indices into disjoint ``train``/``val``/``test`` (the rest)."""
    rng = np.random.default_rng([seed, 1])
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train, n_val = round(fractions[0] * len(idx)), round(fractions[1] * len(idx))
        parts["train"] += idx[:n_train].tolist()
        parts["val"] += idx[n_train:n_train + n_val].tolist()
        parts["test"] += idx[n_train + n_val:].tolist()
    return {s: np.sort(np.array(v, dtype=int)) for s, v in parts.items()}


def render_digit(pixels: np.ndarray, size: int, rng: np.random.Generator, occlusion: float,
                 pixel_noise: float, occlusion_size: tuple[float, float] = (0.4, 0.7)) -> np.ndarray:
    """An 8x8 digit (0..16) as a ``size``x``size`` float image in [0, 1], occluded and noised."""
    img = Image.fromarray((pixels / 16.0).astype(np.float32)).resize((size, size), Image.BICUBIC)
    occluded = occlude(np.clip(np.asarray(img), 0, 1), rng, occlusion, occlusion_size)
    return add_pixel_noise(occluded, rng, pixel_noise)


def occlude(img: np.ndarray, rng: np.random.Generator, prob: float, extent: tuple[float, float] = (0.4, 0.7)) -> np.ndarray:
    """With probability ``prob``, cover a random rectangle (sides ``extent`` of the image's) with a
    flat grey-to-black value; returns a new array."""
    out = img.copy()
    if rng.random() < prob:
        h, w = (max(1, round(rng.uniform(*extent) * n)) for n in img.shape)
        top, left = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
        out[top:top + h, left:left + w] = rng.uniform(0.0, 0.6)
    return out


def add_pixel_noise(img: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """Additive Gaussian noise of ``std``, clipped to [0, 1]."""
    return np.clip(img + rng.normal(0.0, std, img.shape), 0.0, 1.0) if std > 0 else img.copy()


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power ``white``, ``pink`` (1/f power) or ``brown`` (1/f^2 power) noise of ``n`` samples."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(len(spectrum)), 1.0)
    spectrum *= {"white": 1.0, "pink": f ** -0.5, "brown": 1.0 / f}[color]
    noise = np.fft.irfft(spectrum, n)
    return noise / np.sqrt(np.mean(noise ** 2) + 1e-12)


def scale_to_snr(noise: np.ndarray, speech: np.ndarray, snr_db: float) -> np.ndarray:
    """``noise`` scaled so that the power of ``speech`` over its power is ``snr_db`` decibels."""
    return noise * np.sqrt(np.mean(speech ** 2) / ((np.mean(noise ** 2) + 1e-12) * 10 ** (snr_db / 10)))


def trim(wave: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Cut the leading and trailing samples quieter than ``threshold`` times the peak."""
    loud = np.flatnonzero(np.abs(wave) > threshold * (np.abs(wave).max() + 1e-12))
    return wave[loud[0]:loud[-1] + 1] if len(loud) else wave


def place_utterance(utterance: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float],
                    max_shift_s: float, clip_s: float) -> tuple[np.ndarray, dict]:
    """A fixed-length 16 kHz clip: random leading silence, the utterance, background noise at a random
    SNR (measured over the utterance) and a random peak level; returns it and what was drawn."""
    n, shift = round(clip_s * SAMPLE_RATE), round(rng.uniform(0, max_shift_s) * SAMPLE_RATE)
    clip = np.zeros(n)
    speech = utterance[: n - shift]
    clip[shift:shift + len(speech)] = speech
    color, snr = str(rng.choice(["white", "pink", "brown"])), float(rng.uniform(*snr_db))
    clip = clip + scale_to_snr(colored_noise(n, color, rng), speech, snr)  # speech power of the words only
    clip *= rng.uniform(0.3, 0.9) / (np.abs(clip).max() + 1e-12)
    return clip.astype(np.float32), {"noise": color, "snr_db": round(snr, 2), "shift_s": round(shift / SAMPLE_RATE, 6)}


def synthesize_all(keys: set[tuple[str, str, int, int]], synthesize: Synthesizer,
                   workers: int) -> dict[tuple[str, str, int, int], np.ndarray]:
    """Each distinct (word, speaker, speed, pitch) utterance once, trimmed and resampled to 16 kHz."""
    def one(key: tuple[str, str, int, int]) -> np.ndarray:
        wave, rate = synthesize(*key)
        wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if rate != SAMPLE_RATE:
            wave = torchaudio.functional.resample(wave, orig_freq=rate, new_freq=SAMPLE_RATE)
        return trim(wave.double().numpy())

    ordered = sorted(keys)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(ordered, pool.map(one, ordered), strict=True))


def build(out_dir: Path, seed: int = 0, occlusion: float = 0.5, occlusion_size: tuple[float, float] = (0.4, 0.7),
          pixel_noise: float = 0.15, snr_db: tuple[float, float] = (0.0, 20.0), max_shift_s: float = 0.3, clip_s: float = 1.25,
          size: int = 28, limit: int | None = None, synthesize: Synthesizer = espeak, workers: int = 2) -> dict:
    """Write the dataset folder; returns its ``meta.json`` content.

    Args:
        out_dir: the folder (created; expected empty).
        seed: drives the split, the pairing and every random draw.
        occlusion: probability that an image gets an occluding rectangle.
        occlusion_size: range of the rectangle's sides as fractions of the image's.
        pixel_noise: standard deviation of additive pixel noise (image in [0, 1]).
        snr_db: range of the background-noise SNR in dB, drawn uniformly per clip.
        max_shift_s: the leading silence is drawn uniformly from [0, max_shift_s] seconds.
        clip_s: length of every clip in seconds.
        size: image side in pixels.
        limit: use only the first ``limit`` sklearn images (quick builds and tests).
        synthesize: the text-to-speech function, espeak-ng by default.
        workers: parallel synthesiser calls.
    """
    digits = load_digits()
    images, labels = digits.images[:limit], digits.target[:limit]
    splits = split_images(labels, seed)
    speakers = {"train": TRAIN_SPEAKERS, "val": TRAIN_SPEAKERS, "test": TEST_SPEAKERS}
    # One independent generator per sample, so every draw depends on (seed, split, index) only.
    plan = []
    for s_i, split in enumerate(("train", "val", "test")):
        for idx in splits[split]:
            rng = np.random.default_rng([seed, 2, s_i, int(idx)])
            key = (WORDS[labels[idx]], str(rng.choice(speakers[split])), int(rng.choice(SPEEDS)), int(rng.choice(PITCHES)))
            plan.append((split, int(idx), key, rng))
    utterances = synthesize_all({key for _, _, key, _ in plan}, synthesize, workers)

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "audio").mkdir(exist_ok=True)
    rows: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for split, idx, (word, speaker, speed, pitch), rng in plan:
        sid = f"{split}_{idx:04d}"
        img = render_digit(images[idx], size, rng, occlusion, pixel_noise, occlusion_size)
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(out_dir / "images" / f"{sid}.png")
        clip, drawn = place_utterance(utterances[(word, speaker, speed, pitch)], rng, snr_db, max_shift_s, clip_s)
        soundfile.write(str(out_dir / "audio" / f"{sid}.wav"), clip, SAMPLE_RATE, subtype="PCM_16")
        rows[split].append({"id": sid, "image": f"images/{sid}.png", "audio": f"audio/{sid}.wav", "label": word,
                            "digit_index": idx, "speaker": speaker, "speed": speed, "pitch": pitch, **drawn})
    for split, split_rows in rows.items():
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows))

    meta = {
        "name": "digits_speech", "seed": seed, "classes": list(WORDS), "image_size": size, "sample_rate": SAMPLE_RATE,
        "occlusion": occlusion, "occlusion_size": list(occlusion_size), "pixel_noise": pixel_noise, "snr_db": list(snr_db), "max_shift_s": max_shift_s,
        "clip_s": clip_s, "speeds": list(SPEEDS), "pitches": list(PITCHES), "limit": limit,
        "speakers": {s: sorted({r["speaker"] for r in rs}) for s, rs in rows.items()},
        "counts": {s: len(rs) for s, rs in rows.items()}, "distinct_utterances": len(utterances),
        "synthesizer": getattr(synthesize, "__name__", str(synthesize)),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out_dir / "README.md").write_text(readme(meta))
    return meta


def readme(meta: dict) -> str:
    """The folder's README: what is in it and how it was made."""
    speakers = "\n".join(f"- {s}: {', '.join(v)}" for s, v in meta["speakers"].items())
    return (
        "# digits_speech\n\nTen classes (zero..nine). Each sample pairs a handwritten digit image "
        "(scikit-learn `load_digits`, 8x8 upsampled bicubic to "
        f"{meta['image_size']}x{meta['image_size']}, bright ink on black) with the spoken word of the same digit "
        "(espeak-ng, resampled to 16 kHz mono). Each sklearn image is in exactly one split; test speakers "
        f"are never heard in train or val.\n\nCounts: {meta['counts']}.\n\nSpeakers per split:\n{speakers}\n\n"
        f"Image realism: occluding grey/black rectangle (sides {meta['occlusion_size'][0]}-"
        f"{meta['occlusion_size'][1]} of the image's) with probability {meta['occlusion']}, "
        f"additive pixel noise std {meta['pixel_noise']}. Audio realism: speeds {meta['speeds']} wpm, "
        f"pitches {meta['pitches']}, leading silence 0-{meta['max_shift_s']} s, {meta['clip_s']} s clips, "
        f"white/pink/brown noise at SNR {meta['snr_db'][0]}-{meta['snr_db'][1]} dB.\n\n"
        f"Built with `python scripts/make_digits_speech.py OUT_DIR --seed {meta['seed']} "
        f"--occlusion {meta['occlusion']} --occlusion-size {meta['occlusion_size'][0]} {meta['occlusion_size'][1]} "
        f"--pixel-noise {meta['pixel_noise']} "
        f"--snr-db {meta['snr_db'][0]} {meta['snr_db'][1]} --max-shift {meta['max_shift_s']}`; "
        "full parameters in `meta.json`; per-sample draws (speaker, speed, pitch, noise, SNR, shift) in the manifests.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--occlusion", type=float, default=0.5, help="probability of an occluding rectangle")
    parser.add_argument("--occlusion-size", type=float, nargs=2, default=(0.4, 0.7), metavar=("LO", "HI"),
                        help="range of the rectangle's sides, as fractions of the image's")
    parser.add_argument("--pixel-noise", type=float, default=0.15, help="std of additive pixel noise in [0, 1]")
    parser.add_argument("--snr-db", type=float, nargs=2, default=(0.0, 20.0), metavar=("LO", "HI"))
    parser.add_argument("--max-shift", type=float, default=0.3, help="max leading silence in seconds")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N sklearn images")
    parser.add_argument("--workers", type=int, default=2, help="parallel espeak-ng processes")
    parser.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()) and not args.force:
        print(f"error: {args.out_dir} is not empty; pass --force to write into it", file=sys.stderr)
        return 1
    if shutil.which("espeak-ng") is None:
        print(f"error: espeak-ng is not installed; install it with: {INSTALL}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    meta = build(args.out_dir, seed=args.seed, occlusion=args.occlusion, occlusion_size=tuple(args.occlusion_size),
                 pixel_noise=args.pixel_noise,
                 snr_db=tuple(args.snr_db), max_shift_s=args.max_shift, limit=args.limit, workers=args.workers)
    print(f"wrote {args.out_dir}: {meta['counts']} samples, {meta['distinct_utterances']} distinct utterances, "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
