"""What every audio encoder shares: its settings (the ``encoders.audio`` fields both kinds read),
checking a manifest's audio file, and augmenting a wave.

Augmentation draws from torch's global RNG; the dataset seeds it per sample and epoch
(``mm.run.runtime.seeded``), so an augmented epoch is the same on every run and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mm.config import ConfigError, check_range
from mm.data.media import decode_audio
from mm.encoders.policies import PolicySettings


@dataclass
class WaveSettings(PolicySettings):
    """The ``encoders.audio`` settings every audio encoder reads (each kind's settings extend it)."""

    trainable: str = "full"
    max_s: float = 10.0  # clips are cropped to this many seconds
    gain_db: float = 0.0  # training: random gain within +-gain_db
    shift_s: float = 0.0  # training: random circular time shift within +-shift_s seconds
    snr_db: list[float] = field(default_factory=list)  # training: [low, high] SNR of added white noise

    @staticmethod
    def check(s: Any, key: str, encoder: type) -> None:
        PolicySettings.check(s, key, encoder)
        check_range(f"{key}.max_s", s.max_s, 0, open_low=True)
        check_range(f"{key}.gain_db", s.gain_db, 0)
        check_range(f"{key}.shift_s", s.shift_s, 0)
        if len(s.snr_db) not in (0, 2):
            raise ConfigError(f"invalid value for '{key}.snr_db': {s.snr_db}; allowed: [] or [low, high]")
        if s.snr_db:
            low, high = s.snr_db
            check_range(f"{key}.snr_db[0]", low)
            check_range(f"{key}.snr_db[1]", high, low)  # [low, high]: high >= low


def decode_wave_file(path: Path) -> list[str]:
    """An audio encoder's ``decode_file``: the recording decoded fully at its own rate."""
    return decode_audio(path)


@dataclass
class WaveAugment:
    """Random training-time changes to a wave, each off at 0.

    Attributes:
        gain_db: a gain drawn uniformly from ``[-gain_db, gain_db]`` dB.
        shift_s: a circular time shift drawn uniformly from ``[-shift_s, shift_s]`` seconds.
        snr_db: ``[low, high]``: white noise added at an SNR drawn uniformly in that range
            (empty: no noise).
        p_noise: probability of adding noise to a sample.
    """

    gain_db: float = 0.0
    shift_s: float = 0.0
    snr_db: tuple[float, ...] = ()
    p_noise: float = 0.5

    @property
    def active(self) -> bool:
        return self.gain_db > 0 or self.shift_s > 0 or len(self.snr_db) == 2

    def __call__(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if self.shift_s > 0:
            limit = int(self.shift_s * sample_rate)
            wave = torch.roll(wave, int(torch.randint(-limit, limit + 1, ())))
        if self.gain_db > 0:
            wave = wave * 10 ** (float(torch.empty(()).uniform_(-self.gain_db, self.gain_db)) / 20)
        if len(self.snr_db) == 2 and float(torch.rand(())) < self.p_noise:
            snr = float(torch.empty(()).uniform_(*self.snr_db))
            power = wave.pow(2).mean().clamp_min(1e-10)
            wave = wave + torch.randn_like(wave) * (power / 10 ** (snr / 10)).sqrt()
        return wave
