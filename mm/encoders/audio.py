"""Audio encoder: a wav2vec2-style model and the feature extractor of the same checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from mm.data.media import media_path, read_audio
from mm.encoders.base import Encoder, EncoderOutput, add_gaussian, masked_mean
from mm.encoders.sources import resolve_source
from mm.encoders.text import fast_attention
from mm.encoders.wave import WaveAugment, WaveSettings, decode_wave_file
from mm.registry import register_encoder


@dataclass
class Wav2Vec2Settings(WaveSettings):
    """``encoders.audio`` with ``name: wav2vec2``."""

    name: str = "wav2vec2"
    source: str = "tiny-wav2vec2"  # alias, hub id or local folder (a HF source)
    freeze_feature_encoder: bool = True  # full: the conv feature encoder stays frozen


def clip_samples(value: Any, root: Path, sample_rate: int, max_samples: int) -> int:
    """How many samples a recording has at ``sample_rate``, at most ``max_samples``, from its file header
    alone (``soundfile.info``: nothing decoded), for length-grouped batches."""
    info = soundfile.info(str(media_path(value, root)))
    return min(max_samples, math.ceil(info.frames * sample_rate / info.samplerate))


@register_encoder("wav2vec2")
class AudioEncoder(Encoder):
    """A pretrained speech transformer over ~20 ms feature frames, mean-pooled over real frames.

    Args:
        source: alias (``tiny-wav2vec2``), hub id (``facebook/wav2vec2-base``) or a local folder
            holding a ``save_pretrained`` checkpoint with its ``preprocessor_config.json``.
        trainable: ``frozen`` or ``full``.
        freeze_feature_encoder: with ``full``, keep the convolutional feature encoder
            (``backbone.feature_extractor``) frozen, as wav2vec2 fine-tuning recipes do.
        max_s: waves are cropped to this duration, in seconds, by ``featurize``.
        gain_db, shift_s, snr_db: training-time wave augmentation (``mm.encoders.wave.WaveAugment``).

    Attributes:
        extractor: the checkpoint's feature extractor (normalisation, padding).
        sample_rate: the rate, in Hz, the checkpoint expects its waves at.
    """

    modality = "audio"
    settings = Wav2Vec2Settings
    media = True
    source_library = "hf"
    decode_file = staticmethod(decode_wave_file)

    def __init__(
        self,
        source: str,
        trainable: str = "frozen",
        freeze_feature_encoder: bool = True,
        max_s: float = 10.0,
        gain_db: float = 0.0,
        shift_s: float = 0.0,
        snr_db: tuple[float, ...] = (),
    ):
        super().__init__()
        path = resolve_source(source)
        self.source = source
        self.freeze_feature_encoder = freeze_feature_encoder
        self.extractor = AutoFeatureExtractor.from_pretrained(path)
        self.backbone = AutoModel.from_pretrained(path, **fast_attention(AutoConfig.from_pretrained(path)))
        self.sample_rate = int(self.extractor.sampling_rate)
        self.max_samples = int(max_s * self.sample_rate)
        self.out_dim = self.backbone.config.hidden_size
        self.wave_augment = WaveAugment(gain_db, shift_s, tuple(snr_db))
        self.augment = self.wave_augment.active
        self.set_trainable(trainable)

    def load(self, value: Any, root: Path, train: bool = False) -> torch.Tensor:
        wave = read_audio(media_path(value, root), self.sample_rate, self.max_samples)  # only the frames kept
        return self.wave_augment(wave, self.sample_rate) if train and self.augment else wave

    def length(self, value: Any, root: Path) -> int:
        """Samples of the recording at ``sample_rate``, cropped as ``featurize`` crops (``clip_samples``)."""
        return clip_samples(value, root, self.sample_rate, self.max_samples)

    def collate(self, values: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """``featurize``; a missing recording is 25 ms of silence."""
        silence = torch.zeros(400)
        return self.featurize([silence if v is None else v for v in values])

    def fingerprint(self) -> dict[str, Any]:
        return {"extractor": self.extractor.to_dict(), "sample_rate": self.sample_rate,
                "max_samples": self.max_samples, "library": transformers.__version__}

    def corrupt(self, inputs: dict[str, torch.Tensor], strength: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Gaussian noise of standard deviation ``2 * strength`` on the normalised wave (0.5: 0 dB SNR)."""
        return add_gaussian(inputs, "input_values", strength, generator)

    def export(self, out_dir: Path, backbone: nn.Module) -> None:
        backbone.save_pretrained(out_dir, safe_serialization=True)
        self.extractor.save_pretrained(out_dir)

    def set_trainable(self, policy: str) -> None:
        """Apply ``frozen`` / ``full``; ``full`` spares the conv feature encoder if asked to."""
        super().set_trainable(policy)
        if policy == "full" and self.freeze_feature_encoder:
            self.backbone.freeze_feature_encoder()

    def featurize(self, waves: list[np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Crop, normalise and pad a batch of mono waves at ``sample_rate``.

        Each wave is normalised to zero mean and unit variance over its own samples (never its
        padding), so a wave's features do not depend on what it is batched with.

        Returns:
            ``input_values`` ``Float[B, S]`` and ``attention_mask`` ``Long[B, S]`` (1 on real
            samples), with ``S`` the longest cropped wave.
        """
        arrays = []
        for i, wave in enumerate(waves):
            if isinstance(wave, torch.Tensor):
                wave = wave.detach().cpu().numpy()
            wave = np.asarray(wave, dtype=np.float32)
            if wave.ndim != 1 or wave.size == 0:
                raise ValueError(f"wave {i} must be mono and non-empty, got shape {wave.shape}")
            arrays.append(wave[: self.max_samples])
        batch = self.extractor(
            arrays,
            sampling_rate=self.sample_rate,
            padding="longest",
            return_attention_mask=True,  # needed for per-wave normalisation and frame masks
            return_tensors="pt",
        )
        return {
            "input_values": batch["input_values"].float(),
            "attention_mask": batch["attention_mask"].long(),
        }

    def encode(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        values, sample_mask = inputs["input_values"], inputs["attention_mask"]
        # Checkpoints trained without attention masks (wav2vec2-base) expect zero padding only.
        kwargs = {"attention_mask": sample_mask} if self.extractor.return_attention_mask else {}
        tokens = self.backbone(values, **kwargs).last_hidden_state  # [B, T, D]
        # Frames whose receptive field lies within the real samples.
        frame_lengths = self.backbone._get_feat_extract_output_lengths(sample_mask.sum(-1))
        frames = torch.arange(tokens.shape[1], device=tokens.device)
        mask = frames[None, :] < frame_lengths[:, None]  # [B, T]
        return EncoderOutput(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))
