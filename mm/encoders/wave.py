"""What every audio encoder shares: reading a manifest's audio file and augmenting a wave.

Augmentation draws from torch's global RNG; the dataset seeds it per sample and epoch
(``mm.run.runtime.seeded``), so an augmented epoch is the same on every run and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
