"""Reading audio files as mono float waves at the rate an encoder expects."""

from __future__ import annotations

from pathlib import Path

import soundfile
import torch
import torchaudio.functional


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Read an audio file as a mono wave at ``sample_rate``.

    Reads with soundfile (WAV, FLAC, OGG, ...; ``torchaudio.load`` would need FFmpeg), averages
    the channels and resamples with ``torchaudio.functional.resample`` when the file's rate differs.

    Args:
        path: the audio file.
        sample_rate: the wanted rate in Hz.

    Returns:
        ``Float32[S]`` samples in [-1, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # [S, C]
    except soundfile.SoundFileError as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} has no samples")
    wave = torch.from_numpy(data).mean(dim=1)  # [S, C] -> [S]
    if file_rate != sample_rate:
        wave = torchaudio.functional.resample(wave, orig_freq=file_rate, new_freq=sample_rate)
    return wave.contiguous()
