"""The encoder data contract: a new modality needs no change in data, cache or evaluation code;
whole batches without a modality; the spectrogram audio encoder; seeded augmentation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from mm.analysis.evaluation import robustness
from mm.data.collate import Collator
from mm.data.manifest import ManifestDataset
from mm.encoders import build_encoder
from mm.encoders.base import Encoder, EncoderOutput
from mm.features import use_feature_cache
from mm.fusion import build_fusion
from mm.heads import build_head
from mm.model import MultimodalModel
from mm.run.runtime import seeded


class VectorEncoder(Encoder):
    """A toy fourth modality: a row holds a list of 4 numbers; a linear 'backbone' embeds it."""

    modality = "vector"

    def __init__(self):
        super().__init__()
        self.source = "toy-vector"
        self.backbone = nn.Linear(4, 8)
        self.out_dim = 8
        self.set_trainable("frozen")
        self.policy = "frozen"

    def load(self, value, root, train=False):
        return torch.tensor(value, dtype=torch.float32)

    def collate(self, values):
        return {"x": torch.stack([torch.zeros(4) if v is None else v for v in values])}

    def fingerprint(self):
        return {"kind": "vector-v1"}

    def corrupt(self, inputs, strength, generator):
        return {"x": inputs["x"] + strength * torch.randn(inputs["x"].shape, generator=generator)}

    def encode(self, inputs):
        tokens = self.backbone(inputs["x"])[:, None]  # [B, 1, 8]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
        return EncoderOutput(tokens, mask, tokens[:, 0])


def write_split(root: Path, split: str, rows: list[dict]) -> None:
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_fourth_modality_flows_through_data_cache_and_evaluation(tmp_path, mm_cache):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        rows = [{"vector": (rng.normal(size=4) + (3 if i % 2 else -3)).tolist(), "label": "ab"[i % 2]}
                for i in range(16)]
        rows[3].pop("vector")  # a sample without the modality
        write_split(tmp_path, split, rows)
    enc = VectorEncoder()
    splits = {s: ManifestDataset(tmp_path, s, {"vector": enc}, "label", ["a", "b"]) for s in ("train", "val", "test")}
    collate = Collator(["vector"], {"vector": enc})
    batch = collate([splits["train"][i] for i in range(4)])
    assert batch["present"]["vector"].tolist() == [True, True, True, False]
    assert batch["vector"]["x"].shape == (4, 4) and batch["vector"]["x"][3].eq(0).all()

    fusion = build_fusion("concat", {"vector": 8}, hidden_dim=16)
    model = MultimodalModel({"vector": enc}, fusion, build_head("classification", fusion.out_dim, 2)).eval()
    cfg = SimpleNamespace(data=SimpleNamespace(cache_features="auto", num_workers=0),
                          head=SimpleNamespace(name="classification"),
                          train=SimpleNamespace(precision="fp32", eval_batch_size=8, mixup=0.0, cutmix=0.0))
    cached, cached_collate, report = use_feature_cache(cfg, model, splits, collate, torch.device("cpu"))
    assert [e["status"] for e in report["vector"]["splits"].values()] == ["built"] * 3
    again = use_feature_cache(cfg, model, splits, collate, torch.device("cpu"))[2]
    assert [e["status"] for e in again["vector"]["splits"].values()] == ["hit"] * 3
    served = cached_collate([cached["test"][i] for i in range(8)])
    live = enc(collate([splits["test"][i] for i in range(8)])["vector"])
    assert torch.equal(served["cached"]["vector"]["pooled"], live.pooled)

    rows = robustness(model, DataLoader(splits["test"], batch_size=8, collate_fn=collate), levels=(0.0, 1.0))
    assert [(r["kind"], r["modality"], r["level"]) for r in rows] == [
        ("removed", "none", None), ("noise", "vector", 0.0), ("noise", "vector", 1.0)]


def test_a_batch_without_any_image_or_audio_collates_to_placeholders(mm_cache):
    image = build_encoder("image", source="tiny-cnn")
    audio = build_encoder("audio", "spectrogram", source="tiny-cnn")
    pictures = image.collate([None, None])
    assert pictures["pixel_values"].shape == (2, 3, 32, 32) and pictures["pixel_values"].eq(0).all()
    clips = audio.collate([None])
    assert clips["frames"].tolist() == [1] and clips["spectrogram"].shape == (1, 1, 64, 32)
    out = audio(clips)
    assert out.mask.tolist() == [[True]] and out.pooled.shape == (1, audio.out_dim)


def wav(path: Path, seconds: float, freq: float = 440.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def test_spectrogram_encoder_frames_masks_and_standardisation(tmp_path, mm_cache):
    wav(tmp_path / "long.wav", 1.0)
    wav(tmp_path / "short.wav", 0.5)
    sf.write(tmp_path / "stereo8k.wav", np.zeros((4000, 2), dtype=np.float32) + 0.1, 8000)
    enc = build_encoder("audio", "spectrogram", source="tiny-cnn", max_seconds=0.8)
    long, short = enc.load("long.wav", tmp_path), enc.load("short.wav", tmp_path)
    assert long.shape == (64, 81) and short.shape == (64, 51)  # 10 ms hop, cropped at 0.8 s
    assert long.mean().abs() < 1e-4 and (long.std() - 1).abs() < 1e-3  # standardised per clip
    assert enc.load("stereo8k.wav", tmp_path).shape == (64, 51)  # downmixed, resampled to 16 kHz
    batch = enc.collate([long, short])
    assert batch["frames"].tolist() == [81, 51] and batch["spectrogram"].shape == (2, 1, 64, 81)
    assert batch["spectrogram"][1, 0, :, 51:].eq(0).all()
    out = enc(batch)
    T = out.tokens.shape[1]
    assert out.mask[0].all() and out.mask[1].sum() == int(np.ceil(51 * T / 81)) < T
    g = torch.Generator().manual_seed(0)
    noisy = enc.corrupt(batch, 0.5, g)["spectrogram"]
    assert (noisy - batch["spectrogram"]).std().item() == pytest.approx(1.0, rel=0.1)
    assert set(enc.fingerprint()) >= {"sample_rate", "n_mels", "hop", "win", "max_samples"}


def test_augmentation_is_random_but_seeded(tmp_path, mm_cache):
    wav(tmp_path / "a.wav", 1.0)
    audio = build_encoder("audio", "spectrogram", source="tiny-cnn", spec_augment=True, snr_db=[0, 10],
                          gain_db=6, shift_s=0.1)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    image = build_encoder("image", source="tiny-cnn", augment="rand", hflip=0.0)
    plain = build_encoder("image", source="tiny-cnn")
    assert audio.augment and image.augment and not plain.augment
    for enc, value in ((audio, "a.wav"), (image, "a.png")):
        with seeded(1):
            a = enc.load(value, tmp_path, train=True)
        with seeded(1):
            b = enc.load(value, tmp_path, train=True)
        with seeded(2):
            c = enc.load(value, tmp_path, train=True)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert torch.equal(enc.load(value, tmp_path), enc.load(value, tmp_path))  # evaluation: no augmentation
    rows = [{"image": "a.png", "label": "x"}] * 2
    write_split(tmp_path, "train", rows)
    ds = ManifestDataset(tmp_path, "train", {"image": image}, "label", ["x"], augment=True, seed=0)
    first = ds[0]["image"]
    assert not torch.equal(first, ds[1]["image"])  # two samples, two draws
    assert torch.equal(first, ds[0]["image"])  # the same sample and epoch: the same draw
    ds.set_epoch(1)
    assert not torch.equal(first, ds[0]["image"])  # a new epoch: a new draw
