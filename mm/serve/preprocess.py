"""The exported model's preprocessing in numpy, PIL, soundfile and tokenizers: no torch, no mm training code.

Each modality of a bundle has a ``preprocessing`` section in ``bundle.json`` (written by
``mm.serve.export`` from the trained encoder) whose ``kind`` picks one of the classes here:

- ``tokenizer`` (``TextPrep``): the checkpoint's ``tokenizer.json`` read by the ``tokenizers`` library,
  truncated at ``max_length`` and padded to the longest text as the text encoder's ``tokenize`` does
  (or pre-split words, never truncated, for a token head, as ``tokenize_words``);
- ``image`` (``ImagePrep``): the timm evaluation transform as a list of ops (resize the shorter side
  with PIL, centre crop, scale to [0, 1], normalise), the same PIL calls torchvision makes;
- ``spectrogram`` (``SpectrogramPrep``): wave -> power STFT (periodic Hann, reflect padding) ->
  the stored mel filter bank -> ``log(mel + 1e-6)`` -> standardised over the clip, as
  ``torchaudio.transforms.MelSpectrogram`` and the spectrogram encoder compute it;
- ``wav2vec2`` (``Wav2Vec2Prep``): crop, per-wave zero-mean unit-variance normalisation and
  zero padding, as the checkpoint's ``Wav2Vec2FeatureExtractor`` does.

Audio files are read with soundfile, averaged to mono and resampled with ``resample`` (a numpy
port of ``torchaudio.functional.resample``'s windowed-sinc kernel). ``mm.serve.export`` checks at
export time that these give the encoders' own ``load`` + ``collate`` results on sample inputs.

Every ``load`` takes one raw value (text; a file path, bytes or PIL image; a file path, bytes or a
``(wave, rate)`` pair) and returns the decoded sample value; ``collate`` pads a list of those
(``None`` where a sample lacks the modality) into the graph's named input arrays.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from PIL import Image

MIN_FRAMES = 32  # as mm.encoders.spectrogram: a stride-32 CNN needs that much time
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


# Word shapes for a token head with word features: the ids of ``mm.encoders.word_features.SHAPES``
# (the export refuses a model whose table differs), computed by ``word_shape`` as that module does.
SHAPES = ("none", "lower", "title", "upper", "single_upper", "mixed", "digits", "has_digit", "punct", "other",
          "title_first")


def word_shape(word: str, first: bool = False) -> int:
    """``mm.encoders.word_features.word_shape`` without torch: the id in ``SHAPES`` of a word's shape."""
    letters = [c for c in word if c.isalpha()]
    if word.isdigit():
        return SHAPES.index("digits")
    if any(c.isdigit() for c in word):
        return SHAPES.index("has_digit")
    if not letters:
        return SHAPES.index("punct") if all(not c.isalnum() and not c.isspace() for c in word) and word else SHAPES.index("other")
    cased = [c for c in letters if c.isupper() or c.islower()]
    if not cased:
        return SHAPES.index("other")
    if all(c.islower() for c in cased):
        return SHAPES.index("lower")
    if all(c.isupper() for c in cased):
        return SHAPES.index("single_upper" if len(cased) == 1 else "upper")
    if cased[0].isupper() and all(c.islower() for c in cased[1:]):
        return SHAPES.index("title_first" if first else "title")
    return SHAPES.index("mixed")


class InputError(ValueError):
    """A raw input that cannot be decoded (the message names the modality and the reason)."""


# -- reading files -----------------------------------------------------------------------------------


def _source(value: Any, root: str | Path | None) -> Any:
    """A file-like or path for PIL / soundfile: bytes are wrapped, a relative path joins ``root``."""
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value)
    if isinstance(value, (str, Path)):
        path = Path(root) / value if root is not None else Path(value)
        if not path.is_file():
            raise InputError(f"file not found: {path}")
        return path
    raise InputError(f"expected a file path or bytes, got {type(value).__name__}")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as ``mm.data.media`` decodes it: 16-bit grey scaled by 1/257, transparency on black.

    The same steps as ``mm.data.media._to_rgb``, restated here because that module imports torch
    (through its audio reader); the export's check compares the two on sample pictures."""
    if img.mode in HIGH_DEPTH_MODES:
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257
        return Image.fromarray(np.round(grey).astype(np.uint8)).convert("RGB")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def read_image(value: Any, root: str | Path | None = None) -> Image.Image:
    """A picture (path, bytes or PIL image) fully decoded as 8-bit RGB."""
    if isinstance(value, Image.Image):
        return to_rgb(value)
    source = _source(value, root)
    try:
        with Image.open(source) as img:
            img.load()
            return to_rgb(img)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise InputError(f"cannot be decoded as an image: {err}") from None


def resample_kernel(orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    """``torchaudio.functional``'s windowed-sinc (Hann) kernel ``[new, 2 * width + orig]`` in float32,
    for rates already divided by their gcd, and its half ``width``."""
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float32)[None, :] / np.float32(orig)
    t = np.arange(0, -new, -1, dtype=np.float32)[:, None] / np.float32(new) + idx
    t = np.clip(t * np.float32(base), -width_zeros, width_zeros).astype(np.float32)
    window = np.cos(t * np.float32(math.pi / width_zeros / 2)) ** 2
    t = t * np.float32(math.pi)
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = np.where(t == 0, np.float32(1.0), np.sin(t) / t)
    return (kernel * (window * np.float32(base / orig))).astype(np.float32), width


def resample(wave: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """``torchaudio.functional.resample(wave, orig_freq, new_freq)`` (default sinc Hann) in numpy."""
    if orig_freq == new_freq:
        return wave
    gcd = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // gcd, int(new_freq) // gcd
    kernel, width = resample_kernel(orig, new)
    padded = np.pad(wave.astype(np.float32), (width, width + orig))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]  # [F, K]
    out = (frames @ kernel.T).reshape(-1)  # [F, new] -> [F * new]
    return out[: math.ceil(new * len(wave) / orig)].astype(np.float32)


def read_audio(value: Any, sample_rate: int, root: str | Path | None = None) -> np.ndarray:
    """A recording (path, bytes or ``(wave, rate)``) as a mono float32 wave at ``sample_rate``."""
    if isinstance(value, tuple) and len(value) == 2:
        data, rate = np.asarray(value[0], dtype=np.float32), int(value[1])
        data = data[:, None] if data.ndim == 1 else data
    else:
        source = _source(value, root)
        try:
            data, rate = soundfile.read(source, dtype="float32", always_2d=True)  # [S, C]
        except Exception as err:
            reason = getattr(err, "error_string", None) or str(err)
            raise InputError(f"cannot be decoded as audio: {reason}") from None
    if data.shape[0] == 0:
        raise InputError("the recording holds no samples")
    wave = data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise InputError("the recording holds NaN or infinite samples")
    return resample(wave, rate, sample_rate)


# -- the preprocessing of each encoder kind -----------------------------------------------------------


class TextPrep:
    """Tokenizer from ``tokenizer.json``; ``mode`` ``pooled`` (truncate at ``max_length``) or ``words``."""

    def __init__(self, spec: dict[str, Any], folder: Path):
        from tokenizers import Tokenizer

        self.spec = spec
        self.tokenizer = Tokenizer.from_file(str(folder / spec["tokenizer"]))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        if spec["mode"] == "pooled":  # as the text encoder's tokenize: truncation=True, max_length
            self.tokenizer.enable_truncation(max_length=spec["max_length"])
        self.names = spec["inputs"]  # e.g. input_ids, token_type_ids, attention_mask
        self.window = spec["window"]

    def load(self, value: Any, root: str | Path | None = None) -> Any:
        if self.spec["mode"] == "words":
            words = value.split() if isinstance(value, str) else value
            if not isinstance(words, (list, tuple)) or not words or not all(isinstance(w, str) for w in words):
                raise InputError("token tagging needs a non-empty text (or list of words)")
            return list(words)
        if not isinstance(value, str):
            raise InputError(f"expected a text (a string), got {type(value).__name__}")
        return value

    def encode(self, values: list[Any]) -> tuple[dict[str, np.ndarray], list[list[int | None]]]:
        """The graph's text inputs and, per sample, each piece's word index (None: special / padding)."""
        if self.spec["mode"] == "words":
            if any(v is None for v in values):
                raise InputError("token tagging needs the text of every sample")
            encodings = self.tokenizer.encode_batch([list(v) for v in values], is_pretokenized=True)
            too_long = [len(e.ids) for e in encodings if len(e.ids) > self.window]
            if too_long:
                raise InputError(f"a text of {max(too_long)} word pieces is longer than the exported graph's "
                                 f"window of {self.window} (the PyTorch model reads it in overlapping windows)")
        else:
            encodings = self.tokenizer.encode_batch(["" if v is None else v for v in values])
        T = max(len(e.ids) for e in encodings)
        out = {"input_ids": np.full((len(values), T), self.spec["pad_id"], dtype=np.int64),
               "token_type_ids": np.zeros((len(values), T), dtype=np.int64),
               "attention_mask": np.zeros((len(values), T), dtype=np.int64)}
        for i, e in enumerate(encodings):
            n = len(e.ids)
            out["input_ids"][i, :n] = e.ids
            out["token_type_ids"][i, :n] = e.type_ids
            out["attention_mask"][i, :n] = 1
        word_ids = [list(e.word_ids) + [None] * (T - len(e.ids)) for e in encodings]
        arrays = {k: out[k] for k in self.names}
        if self.spec.get("word_shapes"):  # the token head's word-shape ids, per piece (0: no word)
            shapes = [[word_shape(w, first=j == 0) for j, w in enumerate(words)] for words in values]
            arrays["word_shape"] = np.array([[0 if w is None else s[w] for w in ids] for s, ids in zip(shapes, word_ids, strict=True)],
                                            dtype=np.int64).reshape(len(values), T)
        return arrays, word_ids

    def collate(self, values: list[Any]) -> dict[str, np.ndarray]:
        return self.encode(values)[0]


class ImagePrep:
    """The evaluation transform as ops: ``resize`` (PIL), ``center_crop``, ``to_float``, ``normalize``."""

    RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
                "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}

    def __init__(self, spec: dict[str, Any], folder: Path):
        self.spec = spec
        self.shape = tuple(spec["input_size"])  # (3, H, W)

    def load(self, value: Any, root: str | Path | None = None) -> np.ndarray:
        img = read_image(value, root)
        for op in self.spec["ops"]:
            if op["op"] == "resize":
                img = _resize(img, op["size"], self.RESAMPLE[op["interpolation"]], op.get("max_size"))
            elif op["op"] == "center_crop":
                img = _center_crop(img, *op["size"])
            elif op["op"] == "to_float":
                img = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
            elif op["op"] == "normalize":
                mean = np.asarray(op["mean"], dtype=np.float32)[:, None, None]
                std = np.asarray(op["std"], dtype=np.float32)[:, None, None]
                img = (img - mean) / std
            else:
                raise ValueError(f"unknown image op {op['op']!r} in bundle.json")
        return np.ascontiguousarray(img, dtype=np.float32)

    def collate(self, values: list[np.ndarray | None]) -> dict[str, np.ndarray]:
        zeros = np.zeros(self.shape, dtype=np.float32)
        return {"pixel_values": np.stack([zeros if v is None else v for v in values])}


def _resize(img: Image.Image, size: list[int], resample: int, max_size: int | None) -> Image.Image:
    """torchvision ``Resize`` of a PIL image: one size = the shorter side (the longer one truncated)."""
    w, h = img.size
    if len(size) == 2:
        oh, ow = size
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size[0], int(size[0] * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
        ow, oh = (new_short, new_long) if w <= h else (new_long, new_short)
    if (ow, oh) == (w, h):
        return img
    return img.resize((ow, oh), resample)


def _center_crop(img: Image.Image, ch: int, cw: int) -> Image.Image:
    """torchvision ``CenterCrop`` of a PIL image that is at least the crop's size."""
    w, h = img.size
    if cw > w or ch > h:
        raise ValueError(f"centre crop {ch}x{cw} of a {h}x{w} picture: the resize should have made it larger")
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return img.crop((left, top, left + cw, top + ch))


class SpectrogramPrep:
    """Wave -> standardised log-mel ``[n_mels, frames]`` with the stored filter bank (``mel_fb``)."""

    def __init__(self, spec: dict[str, Any], folder: Path):
        self.spec = spec
        self.fb = np.load(folder / spec["mel_fb"]).astype(np.float32)  # [n_fft // 2 + 1, n_mels]
        n = spec["n_fft"]
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)  # periodic Hann

    def load(self, value: Any, root: str | Path | None = None) -> np.ndarray:
        s = self.spec
        wave = read_audio(value, s["sample_rate"], root)[: s["max_samples"]]
        pad = s["n_fft"] // 2
        if len(wave) <= pad:
            raise InputError(f"the recording is {len(wave)} samples long; at least {pad + 1} are needed")
        padded = np.pad(wave, pad, mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, s["n_fft"])[:: s["hop"]]  # [T, n_fft]
        power = np.abs(np.fft.rfft(frames * self.window, axis=1)) ** 2  # [T, F]
        mel = (power.astype(np.float32) @ self.fb).T  # [n_mels, T]
        logmel = np.log(mel + np.float32(1e-6))
        std = max(float(logmel.std(ddof=1)), 1e-5) if logmel.size > 1 else 1e-5
        return ((logmel - logmel.mean()) / np.float32(std)).astype(np.float32)

    def collate(self, values: list[np.ndarray | None]) -> dict[str, np.ndarray]:
        n_mels = self.spec["n_mels"]
        specs = [np.zeros((n_mels, 1), np.float32) if v is None else v for v in values]
        frames = np.array([s.shape[1] for s in specs], dtype=np.int64)
        T = max(MIN_FRAMES, int(frames.max()))
        batch = np.zeros((len(specs), 1, n_mels, T), dtype=np.float32)
        for i, s in enumerate(specs):
            batch[i, 0, :, : s.shape[1]] = s
        return {"spectrogram": batch, "frames": frames}


class Wav2Vec2Prep:
    """Crop to ``max_samples``, pad with zeros, normalise each wave over its own samples."""

    def __init__(self, spec: dict[str, Any], folder: Path):
        self.spec = spec

    def load(self, value: Any, root: str | Path | None = None) -> np.ndarray:
        return read_audio(value, self.spec["sample_rate"], root)

    def collate(self, values: list[np.ndarray | None]) -> dict[str, np.ndarray]:
        s = self.spec
        waves = [np.zeros(400, np.float32) if v is None else np.asarray(v, np.float32)[: s["max_samples"]] for v in values]
        S = max(len(w) for w in waves)
        values_out = np.full((len(waves), S), s["padding_value"], dtype=np.float32)
        mask = np.zeros((len(waves), S), dtype=np.int64)
        for i, w in enumerate(waves):
            values_out[i, : len(w)] = w
            mask[i, : len(w)] = 1
        if s["do_normalize"]:  # as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, on the padded rows
            for i, w in enumerate(waves):
                row, n = values_out[i], len(w)
                normed = (row - row[:n].mean()) / np.sqrt(row[:n].var() + 1e-7)
                normed[n:] = s["padding_value"]
                values_out[i] = normed
        return {"input_values": values_out, "attention_mask": mask}


PREPS = {"tokenizer": TextPrep, "image": ImagePrep, "spectrogram": SpectrogramPrep, "wav2vec2": Wav2Vec2Prep}


def build_prep(spec: dict[str, Any], folder: Path) -> Any:
    """The preprocessing object a ``bundle.json`` section describes."""
    if spec["kind"] not in PREPS:
        raise ValueError(f"unknown preprocessing kind {spec['kind']!r}; valid: {sorted(PREPS)}")
    return PREPS[spec["kind"]](spec, folder)
