"""Renderers for the synthetic benchmark: one picture, one caption and one clip per sample.

Each renderer maps factor values (strings) plus a private random stream to raw data. The
vocabulary lives here so that tests can check which words a caption may and may not use.
"""

from __future__ import annotations

import re
import string

import numpy as np
from PIL import Image, ImageDraw

# ---------------------------------------------------------------- image

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (225, 210, 40),
}
BACKGROUND_GRAY: dict[str, tuple[int, int]] = {"dark": (20, 60), "light": (190, 235)}
COLOR_JITTER = 20  # +- per channel, in 0-255 units
SUPERSAMPLE = 4  # draw at 4x and box-downsample, so edges are anti-aliased


def render_image(
    rng: np.random.Generator, *, color: str, shape: str, brightness: str, size: int, noise: float
) -> np.ndarray:
    """Draws one shape on a plain grey background.

    The shape's bounding box stays at least ``max(3, size // 10)`` pixels away from every
    edge, so the corner pixels always show the background.

    Args:
        rng: The sample's image stream.
        color: Fill colour name, a key of ``COLOR_RGB``.
        shape: ``circle``, ``square`` or ``triangle``.
        brightness: ``dark`` or ``light`` background.
        size: Side of the square picture in pixels.
        noise: Standard deviation of the Gaussian pixel noise, in [0, 1] pixel units.

    Returns:
        A ``uint8`` array of shape ``[size, size, 3]``.
    """
    gray = int(rng.integers(*BACKGROUND_GRAY[brightness], endpoint=True))
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3)
    fill = tuple(int(c) for c in np.clip(np.array(COLOR_RGB[color]) + jitter, 0, 255))
    diameter = rng.uniform(0.4, 0.6) * size
    margin = max(3, size // 10)
    low, high = margin + diameter / 2, size - margin - diameter / 2
    cx, cy = rng.uniform(low, high), rng.uniform(low, high)

    s = SUPERSAMPLE
    canvas = Image.new("RGB", (size * s, size * s), (gray, gray, gray))
    draw = ImageDraw.Draw(canvas)
    half = diameter / 2
    left, top, right, bottom = (cx - half) * s, (cy - half) * s, (cx + half) * s, (cy + half) * s
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx * s, top), (left, bottom), (right, bottom)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    small = canvas.resize((size, size), Image.Resampling.BOX)

    pixels = np.asarray(small, dtype=np.float64) + rng.normal(0.0, noise * 255.0, (size, size, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- audio

PITCH_HZ: dict[str, tuple[float, float]] = {"low": (300.0, 400.0), "high": (1200.0, 1600.0)}
N_SLOTS = 3  # the clip is cut into 3 slots; each beep sits inside its own slot
RAMP_SECONDS = 0.005


def render_audio(
    rng: np.random.Generator, *, pitch: str, count: int, seconds: float, sample_rate: int, snr_db: float
) -> np.ndarray:
    """Synthesises ``count`` sine beeps of one frequency in white noise.

    The beeps occupy ``count`` of three equal slots (chosen at random), each with a jittered
    onset and length, and leave at least 9% of a slot of silence on either side, so beeps never
    merge. The noise power is the beep power divided by ``10 ** (snr_db / 10)``.

    Args:
        rng: The sample's audio stream.
        pitch: ``low`` or ``high``; picks the frequency range in ``PITCH_HZ``.
        count: Number of beeps, 1 to 3.
        seconds: Clip length.
        sample_rate: Samples per second.
        snr_db: Beep-to-noise power ratio in decibels.

    Returns:
        A ``float64`` array of ``round(seconds * sample_rate)`` samples in [-1, 1].
    """
    n = round(seconds * sample_rate)
    freq = rng.uniform(*PITCH_HZ[pitch])
    amplitude = rng.uniform(0.2, 0.4)
    slot = n / N_SLOTS
    slots = np.sort(rng.choice(N_SLOTS, size=count, replace=False))

    signal = np.zeros(n)
    ramp_len = max(1, round(RAMP_SECONDS * sample_rate))
    for k in slots:
        length = round(rng.uniform(0.3, 0.45) * slot)
        start = round(k * slot + rng.uniform(0.09 * slot, 0.91 * slot - length))
        t = np.arange(length) / sample_rate
        beep = amplitude * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp_len) / ramp_len)  # raised cosine, no clicks
        beep[:ramp_len] *= ramp
        beep[-ramp_len:] *= ramp[::-1]
        signal[start : start + length] = beep

    noise_std = np.sqrt(amplitude**2 / 2 / 10 ** (snr_db / 10))
    return np.clip(signal + rng.normal(0.0, noise_std, n), -1.0, 1.0)


# ---------------------------------------------------------------- text

# (singular, plural) for every way a caption names a shape.
SHAPE_WORDS: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("circle", "circles"), ("ring", "rings"), ("disc", "discs"), ("round thing", "round things")),
    "square": (("square", "squares"), ("box", "boxes"), ("block", "blocks")),
    "triangle": (("triangle", "triangles"), ("wedge", "wedges"), ("three-sided thing", "three-sided things")),
}
ANIMAL_WORDS: dict[str, tuple[str, ...]] = {
    "cat": ("cat", "kitten", "feline", "tomcat"),
    "dog": ("dog", "puppy", "hound", "pooch"),
    "bird": ("bird", "sparrow", "parrot", "finch"),
    "fish": ("fish", "trout", "salmon", "goldfish"),
}
CLAIM_WORDS: dict[str, tuple[str, ...]] = {
    "dark": ("dark", "dim", "shadowy", "black"),
    "light": ("light", "bright", "pale", "white"),
}
COUNT_WORDS: dict[str, tuple[str, ...]] = {
    "1": ("one", "a single"),
    "2": ("two", "a pair of"),
    "3": ("three", "a trio of"),
}

TEMPLATES: tuple[str, ...] = (
    "{objects} beside a {animal} against a {claim} background.",
    "a {animal} looks at {objects}; the backdrop is {claim}.",
    "on a {claim} backdrop, a {animal} waits near {objects}.",
    "the {animal} found {objects} in a {claim} room.",
    "{objects}, a {animal} and a {claim} background.",
    "picture of a {animal} with {objects}, all on {claim} paper.",
    "there is a {animal} here, plus {objects}, and the setting is {claim}.",
    "a {claim} scene: {objects} and a {animal}.",
)
# Irrelevant phrases; they must never use a word from ``factor_vocabulary()``.
PREFIXES: tuple[str, ...] = (
    "in this scene, ",
    "apparently, ",
    "believe it or not, ",
    "for what it is worth, ",
    "at first glance, ",
)
SUFFIXES: tuple[str, ...] = (
    " Nothing else happens.",
    " The weather was calm that day.",
    " It is hard to say why.",
    " Nobody seems to mind.",
    " The photo was taken last spring.",
    " Everything is quiet.",
)


Segment = tuple[str, "str | None"]  # (text, slot): slot names the factor phrase, None elsewhere
SLOTS: tuple[str, ...] = ("count", "shape", "animal", "claim")


def render_caption(
    rng: np.random.Generator, *, shape: str, animal: str, claim: str, count: str, filler_prob: float
) -> list[Segment]:
    """Writes a caption naming the shape, the count, the animal and the claimed background.

    Args:
        rng: The sample's text stream.
        shape: Shape factor value.
        animal: Animal factor value.
        claim: Claimed background brightness, ``dark`` or ``light``.
        count: Count factor value, ``"1"``, ``"2"`` or ``"3"``.
        filler_prob: Probability of adding one irrelevant prefix or suffix.

    Returns:
        The caption (first letter capitalised) as consecutive segments ``(text, slot)``: each factor
        phrase is one segment whose slot is one of ``SLOTS``; template and filler text have None.
    """

    def pick(options: tuple) -> object:
        return options[int(rng.integers(len(options)))]

    singular, plural = pick(SHAPE_WORDS[shape])
    phrases = {"count": pick(COUNT_WORDS[count]), "shape": singular if count == "1" else plural}
    template = pick(TEMPLATES)
    phrases |= {"animal": pick(ANIMAL_WORDS[animal]), "claim": pick(CLAIM_WORDS[claim])}
    segments: list[Segment] = []
    for literal, field, _, _ in string.Formatter().parse(template):
        segments.append((literal, None))
        if field == "objects":
            segments += [(phrases["count"], "count"), (" ", None), (phrases["shape"], "shape")]
        elif field is not None:
            segments.append((phrases[field], field))
    if rng.random() < filler_prob:
        if rng.random() < 0.5:
            segments.insert(0, (pick(PREFIXES), None))
        else:
            segments.append((pick(SUFFIXES), None))
    segments = [(text, slot) for text, slot in segments if text]
    first, slot = segments[0]
    segments[0] = (first[0].upper() + first[1:], slot)
    return segments


WORD = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")  # words (hyphenated ones whole) and punctuation marks


def caption_words(segments: list[Segment]) -> list[tuple[str, str | None]]:
    """The caption's words and punctuation marks, each with the slot of the segment it is in."""
    return [(word, slot) for text, slot in segments for word in WORD.findall(text)]


def slot_phrases() -> dict[str, list[str]]:
    """Every phrase a caption may use for each slot."""
    return {
        "count": [w for ws in COUNT_WORDS.values() for w in ws],
        "shape": [w for pairs in SHAPE_WORDS.values() for pair in pairs for w in pair],
        "animal": [w for ws in ANIMAL_WORDS.values() for w in ws],
        "claim": [w for ws in CLAIM_WORDS.values() for w in ws],
    }


def words(text: str) -> list[str]:
    """Lower-case word tokens (hyphenated words split), as the vocabulary checks see them."""
    return re.findall(r"[a-z]+", text.lower())


def factor_vocabulary() -> set[str]:
    """Every word that could reveal a factor: synonyms, number, colour and brightness words."""
    phrases = [w for pairs in SHAPE_WORDS.values() for pair in pairs for w in pair]
    phrases += [w for group in (ANIMAL_WORDS, CLAIM_WORDS, COUNT_WORDS) for ws in group.values() for w in ws]
    phrases += list(COLOR_RGB) + list(BACKGROUND_GRAY) + ["four", "five", "six", "pair", "trio", "single"]
    return {w for phrase in phrases for w in words(phrase)} - {"a", "of", "thing", "things"}
