"""Reading audio files as mono float waves at the rate an encoder expects."""

from __future__ import annotations

import math
from pathlib import Path

import soundfile
import torch
import torchaudio.functional

# Extra frames read past what an encoder keeps when the file is resampled, so that the kept samples
# see the same neighbours through the resampling filter (torchaudio's: 6 zero crossings wide).
RESAMPLE_MARGIN_S = 0.01


def load_audio(path: str | Path, sample_rate: int, max_samples: int | None = None) -> torch.Tensor:
    """Read an audio file as a mono wave at ``sample_rate``.

    Reads with soundfile (WAV, FLAC, OGG, ...; ``torchaudio.load`` would need FFmpeg), averages
    the channels and resamples with ``torchaudio.functional.resample`` when the file's rate differs.

    Args:
        path: the audio file.
        sample_rate: the wanted rate in Hz.
        max_samples: keep at most this many samples (at ``sample_rate``): only the frames they come
            from are read (soundfile's frame range), so an hour-long file costs what its first
            ``max_samples`` cost. None reads the whole file.

    Returns:
        ``Float32[S]`` samples in [-1, 1], ``S <= max_samples``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        with soundfile.SoundFile(str(path)) as f:
            file_rate, frames = f.samplerate, -1  # -1: to the end
            if max_samples is not None:
                margin = math.ceil(RESAMPLE_MARGIN_S * file_rate) if file_rate != sample_rate else 0
                frames = math.ceil(max_samples * file_rate / sample_rate) + margin
            data = f.read(frames, dtype="float32", always_2d=True)  # [S, C]
    except (soundfile.SoundFileError, RuntimeError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} has no samples")
    wave = torch.from_numpy(data).mean(dim=1)  # [S, C] -> [S]
    if file_rate != sample_rate:
        wave = torchaudio.functional.resample(wave, orig_freq=file_rate, new_freq=sample_rate)
    if max_samples is not None:
        wave = wave[:max_samples]
    return wave.contiguous()
