"""Audio as a picture: log-mel spectrograms fed to any timm backbone (the AST / PANNs recipe).

A log-mel spectrogram is a one-channel picture (mel bins x time frames); timm adapts a pretrained
stem to one input channel (``in_chans=1`` sums the RGB filters), so ImageNet weights such as
EfficientNet-Lite0's transfer to sound with no audio pretraining at all, and a small CNN from
scratch (``tiny-cnn``) is the alternative. Tokens are time frames (the backbone's feature map
averaged over frequency) with masks at that resolution, like the wav2vec2 encoder's.

Front end (``load``, per sample, on the data side): wave at ``sample_rate`` -> (training only:
gain, shift, noise) -> ``torchaudio.transforms.MelSpectrogram`` (25 ms windows, 10 ms hop) ->
``log(mel + 1e-6)`` -> standardised over the clip (zero mean, unit variance, so the loudness of a
recording does not matter) -> (training only: SpecAugment frequency and time masks, at the mean).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import timm.models
import torch
import torchaudio
from einops import reduce
from torch import nn

from mm.config import check_range
from mm.data.media import media_path, read_audio
from mm.encoders.audio import clip_samples
from mm.encoders.base import Encoder, EncoderOutput, add_gaussian, masked_mean
from mm.encoders.image import create_backbone
from mm.encoders.wave import WaveAugment, WaveSettings, decode_wave_file
from mm.registry import register_encoder

MIN_FRAMES = 32  # shorter clips are padded: a CNN's stride-32 stack needs that much time


@functools.lru_cache(maxsize=8)
def _mel(sample_rate: int, n_mels: int, win: int, hop: int) -> torchaudio.transforms.MelSpectrogram:
    # Kept off the encoder's module tree: the front end is not a weight, and runs on the data side.
    return torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=win, win_length=win, hop_length=hop,
                                                n_mels=n_mels, f_min=20.0, power=2.0)


@dataclass
class SpectrogramSettings(WaveSettings):
    """``encoders.audio`` with ``name: spectrogram`` (the default audio encoder)."""

    name: str = "spectrogram"  # spectrogram (log-mel into a timm CNN) | wav2vec2
    source: str = "effnet-lite0"  # any image source (effnet-lite0, tiny-cnn); wav2vec2: a HF source
    n_mels: int = 64  # mel bins
    spec_augment: bool = False  # training: SpecAugment frequency and time masks
    pretrained: bool = True  # false: the source's architecture from random weights

    @staticmethod
    def check(s: SpectrogramSettings, key: str, encoder: type[Encoder]) -> None:
        WaveSettings.check(s, key, encoder)
        check_range(f"{key}.n_mels", s.n_mels, 1)


@register_encoder("spectrogram", default=True)
class SpectrogramEncoder(Encoder):
    """A timm backbone over standardised log-mel spectrograms.

    Args:
        source: any image source (``effnet-lite0``, ``tiny-cnn``, timm name, folder, ``arch@file``).
        trainable: ``frozen`` or ``full``.
        model_args: extra ``timm.create_model`` arguments (``in_chans`` is always 1).
        sample_rate: waves are resampled to this rate (Hz).
        n_mels: mel bins (the picture's height).
        max_s: clips are cropped to this duration, in seconds.
        spec_augment: training-time SpecAugment: two frequency masks of up to ``n_mels // 8`` bins
            and two time masks of up to 10 % of the frames.
        gain_db, shift_s, snr_db: training-time wave augmentation (``mm.encoders.wave.WaveAugment``).
        pretrained: False: the source's architecture with random weights (training from scratch).
    """

    modality = "audio"
    settings = SpectrogramSettings
    media = True
    source_library = "timm"
    decode_file = staticmethod(decode_wave_file)

    def __init__(self, source: str, trainable: str = "frozen", model_args: dict[str, Any] | None = None,
                 sample_rate: int = 16000, n_mels: int = 64, max_s: float = 10.0,
                 spec_augment: bool = False, gain_db: float = 0.0, shift_s: float = 0.0,
                 snr_db: tuple[float, ...] = (), pretrained: bool = True):
        super().__init__()
        self.source = source
        self.backbone = create_backbone(source, {**(model_args or {}), "in_chans": 1}, pretrained)
        self.sample_rate, self.n_mels = sample_rate, n_mels
        self.win, self.hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
        self.max_samples = int(max_s * sample_rate)
        self.spec_augment = spec_augment
        self.wave_augment = WaveAugment(gain_db, shift_s, tuple(snr_db))
        self.augment = spec_augment or self.wave_augment.active
        self.out_dim = self.backbone.num_features
        self.set_trainable(trainable)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """A mono wave at ``sample_rate`` -> standardised log-mel ``[n_mels, frames]``."""
        mel = _mel(self.sample_rate, self.n_mels, self.win, self.hop)(wave[: self.max_samples].float())
        logmel = torch.log(mel + 1e-6)
        return (logmel - logmel.mean()) / logmel.std().clamp_min(1e-5)

    def load(self, value: Any, root: Path, train: bool = False) -> torch.Tensor:
        wave = read_audio(media_path(value, root), self.sample_rate, self.max_samples)  # only the frames kept
        augment = train and self.augment
        if augment:
            wave = self.wave_augment(wave, self.sample_rate)
        spec = self.spectrogram(wave)
        if augment and self.spec_augment:
            freq = torchaudio.transforms.FrequencyMasking(max(1, self.n_mels // 8))
            time = torchaudio.transforms.TimeMasking(max(1, spec.shape[1] // 10))
            spec = time(time(freq(freq(spec[None]))))[0]  # masked at 0, the clip's mean
        return spec

    def length(self, value: Any, root: Path) -> int:
        """Samples of the recording at ``sample_rate``, cropped as ``spectrogram`` crops (frames follow them)."""
        return clip_samples(value, root, self.sample_rate, self.max_samples)

    def collate(self, values: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """``spectrogram [B, 1, n_mels, T]`` zero-padded to the longest clip, and ``frames [B]``
        (real frames per clip); a missing recording is one frame of zeros."""
        specs = [torch.zeros(self.n_mels, 1) if v is None else v for v in values]
        frames = torch.tensor([s.shape[1] for s in specs])
        T = max(MIN_FRAMES, int(frames.max()))
        batch = torch.zeros(len(specs), 1, self.n_mels, T)
        for i, s in enumerate(specs):
            batch[i, 0, :, : s.shape[1]] = s
        return {"spectrogram": batch, "frames": frames}

    def fingerprint(self) -> dict[str, Any]:
        return {"sample_rate": self.sample_rate, "n_mels": self.n_mels, "win": self.win, "hop": self.hop,
                "max_samples": self.max_samples, "front_end": "mel-log-standardised-v1",
                "torchaudio": torchaudio.__version__, "timm": timm.__version__}

    def corrupt(self, inputs: dict[str, torch.Tensor], strength: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Gaussian noise of standard deviation ``2 * strength`` on the standardised spectrogram."""
        return add_gaussian(inputs, "spectrogram", strength, generator)

    def export(self, out_dir: Path, backbone: nn.Module) -> None:
        """timm's hub layout; load it back with the same front-end settings (``n_mels``, ...)."""
        timm.models.save_for_hf(backbone, str(out_dir), safe_serialization=True)

    def encode(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        x = inputs["spectrogram"]
        features = self.backbone.forward_features(x)  # [B, C, F', T']
        tokens = reduce(features, "b c f t -> b t c", "mean")  # time frames, frequency averaged
        # A frame is real when its share of the padded time axis starts inside the clip.
        scale = tokens.shape[1] / x.shape[-1]
        real = torch.ceil(inputs["frames"].to(tokens.device) * scale).clamp_min(1)  # [B]
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < real[:, None]
        return EncoderOutput(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))


