"""One manifest value, read safely: where its file is, and how it is decoded.

Every encoder that reads files goes through here (``media_path``, ``read_image``, ``read_audio``,
``text_value``), and so do the dataset's checks and ``scripts/validate_data.py``; every failure is
a ``MediaError`` whose message names the path and the reason, which the dataset prefixes with
the manifest's ``file:line``.

Paths: a media value is a path relative to the dataset folder. ``media_path`` resolves it fully
(``..`` and every symbolic link, ``Path.resolve``); ``inside_path`` then requires the result to lie
in the fully resolved dataset folder. So the folder may itself be a link (``data/digits_speech``),
links inside it that point inside it are followed, and an absolute path, a ``..`` that climbs
out, or a link that points out of the folder all count as outside: refused unless
``data.allow_outside_paths`` is true (a dataset whose files are links into a shared store needs it).

Images are decoded to 8-bit RGB without clipping: 16-bit (``I;16``) and 32-bit integer (``I``)
grey levels are scaled by 1/257, and transparency (palette images with a transparent index,
``RGBA``, ``LA``) is composited onto black, the colour ``convert("RGB")`` gives a fully
transparent pixel that is stored as zeros. Audio is read with soundfile, averaged to mono and
resampled (``mm.data.audio_io.load_audio``); NaN or infinite samples are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from PIL import Image

from mm.data.audio_io import load_audio
from mm.data.errors import MediaError

HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # integer grey levels up to 65535
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
COMMON_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000)  # Hz


def media_path(value: Any, root: str | Path) -> Path:
    """The file a manifest media value names: ``root / value`` with ``..`` and links resolved.

    Raises:
        MediaError: the value is not a non-empty string, or cannot be a path (a NUL byte, a loop
            of links).
    """
    if not isinstance(value, str) or not value.strip():
        raise MediaError(f"value {value!r} is not a file path (a non-empty string) but {type(value).__name__}")
    try:
        return (Path(root) / value).resolve()
    except (OSError, RuntimeError, ValueError) as err:
        raise MediaError(f"path {value!r} cannot be resolved: {err}") from None


def inside_path(value: Any, root: str | Path, allow_outside: bool = False) -> Path:
    """``media_path``, refused when it leaves the dataset folder ``root`` or names no file.

    Args:
        value: the manifest value.
        root: the dataset folder.
        allow_outside: accept a file outside ``root`` (``data.allow_outside_paths``).

    Raises:
        MediaError: a bad value, a path outside ``root`` (unless allowed), or no such file.
    """
    path = media_path(value, root)
    folder = Path(root).resolve()
    if not allow_outside and not path.is_relative_to(folder):
        raise MediaError(f"path {value!r} leaves the dataset folder {folder} (it resolves to {path}); "
                         "data.allow_outside_paths=true allows it")
    if not path.is_file():
        raise MediaError(f"file not found: {path}")
    return path


def text_value(value: Any) -> str:
    """A manifest text value, which must be a string."""
    if not isinstance(value, str):
        raise MediaError(f"value {value!r} is not a text (a string) but {type(value).__name__}")
    return value


def _to_rgb(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """``img`` as 8-bit RGB, and notes on what the conversion did (for the validator)."""
    if img.mode in HIGH_DEPTH_MODES:
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257  # 65535 -> 255
        picture = Image.fromarray(np.round(grey).astype(np.uint8)).convert("RGB")
        return picture, [f"{img.mode} image: grey levels scaled from 16 to 8 bits"]
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        note = "palette image with transparency" if img.mode == "P" else f"{img.mode} image with transparency"
        return Image.alpha_composite(black, rgba).convert("RGB"), [f"{note}: composited onto black"]
    notes = ["palette image: converted to RGB"] if img.mode == "P" else []
    if img.mode == "F":
        notes.append("32-bit float image: values clipped to 0..255")
    return img.convert("RGB"), notes


def decode_image(path: Path) -> tuple[Image.Image, list[str]]:
    """The picture at ``path`` fully decoded as 8-bit RGB, and notes on its conversion.

    Raises:
        MediaError: the file is not an image PIL can decode (truncated, another format, too big).
    """
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise MediaError(f"file {path} cannot be decoded as an image: {err}") from err


def read_image(path: Path) -> Image.Image:
    """The picture at ``path`` as 8-bit RGB (see the module docstring); errors are ``MediaError``."""
    return decode_image(path)[0]


def _audio_reason(err: Exception) -> str:
    """libsndfile's own words for a failure, without the path it repeats (``load_audio`` chains it)."""
    cause = err.__cause__ or err
    return getattr(cause, "error_string", None) or str(err)


def read_audio(path: Path, sample_rate: int, max_samples: int | None = None) -> torch.Tensor:
    """The recording at ``path`` as a mono ``Float32[S]`` wave at ``sample_rate`` (``load_audio``),
    its first ``max_samples`` only when given (only their frames are read).

    Raises:
        MediaError: the file cannot be read, holds no samples, or holds NaN or infinite ones.
    """
    try:
        wave = load_audio(path, sample_rate, max_samples)
    except Exception as err:  # soundfile's errors, no samples, a failed resampling
        raise MediaError(f"file {path} cannot be decoded as audio: {_audio_reason(err)}") from err
    if not torch.isfinite(wave).all():
        raise MediaError(f"file {path} holds NaN or infinite samples")
    return wave


TRUNCATED = "truncated file"  # the start of a note on a file that holds less than its header declares
_BLOCK_FRAMES = 1 << 20  # decode_audio reads this many frames at a time: memory stays flat for long files
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what a streaming writer puts in a WAV header when it does not know the length


def wav_data_bytes(path: Path) -> tuple[int, int] | None:
    """``(declared, held)``: the bytes of audio data a RIFF/WAVE header declares for its ``data``
    chunk and the bytes the file holds after it; None for another format, no ``data`` chunk or a
    streamed length (0 or 0xFFFFFFFF). Reads the chunk headers only."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk = f.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                return None if declared in _UNKNOWN_SIZES else (declared, size - offset - 8)
            offset += 8 + declared + (declared & 1)  # chunks are padded to an even size
    return None


def decode_audio(path: Path) -> list[str]:
    """Decode the recording at ``path`` fully at its own rate, block by block (a 10-hour file needs no
    more memory than a short one); notes on an unusual rate or channels, and on a WAV file that
    holds less audio than its header declares (a truncated download: soundfile reads what there is,
    so without this note it would train as a clip a fraction of its length)."""
    try:
        info = soundfile.info(str(path))
        frames = 0
        for block in soundfile.blocks(str(path), blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                raise MediaError(f"file {path} holds NaN or infinite samples")
            frames += len(block)
    except MediaError:
        raise
    except Exception as err:
        raise MediaError(f"file {path} cannot be decoded as audio: {_audio_reason(err)}") from err
    if frames == 0:
        raise MediaError(f"file {path} cannot be decoded as audio: it has no samples")
    notes = []
    lengths = wav_data_bytes(path)
    if lengths is not None and lengths[0] > lengths[1]:
        declared, held = lengths
        notes.append(f"{TRUNCATED}: {path.name}'s header declares {declared} bytes of audio data, the file holds "
                     f"{held} ({frames / info.samplerate:.3f} s of audio read)")
    if info.samplerate not in COMMON_RATES:
        notes.append(f"unusual sample rate {info.samplerate} Hz: resampled to the encoder's rate")
    if info.channels != 1:
        notes.append(f"{info.channels} channels: averaged to mono")
    return notes
