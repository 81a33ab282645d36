"""The encoder data contract: a new modality is one encoder (with its settings) registered from a file
of its own, with no change to config, model, data, cache, few-shot or evaluation code; whole batches
without a modality; the spectrogram audio encoder; seeded augmentation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from mm.analysis.evaluation import robustness
from mm.config import ConfigError, check_range, load_config, to_dict
from mm.data import build_splits
from mm.data.collate import Collator
from mm.data.errors import MediaError
from mm.data.manifest import ManifestDataset
from mm.data.media import media_path
from mm.data.validate import check_dataset, validate_dir
from mm.encoders import build_encoder
from mm.encoders.base import Encoder, EncoderOutput
from mm.encoders.policies import PolicySettings
from mm.features import use_feature_cache
from mm.lowdata.fewshot import episode_overrides, write_episodes
from mm.model import build_model
from mm.registry import ENCODERS, register_encoder
from mm.run.runtime import seeded

# ---- A toy fourth modality, defined here alone: the library is not edited to add it ----


@dataclass
class VectorSettings(PolicySettings):
    """``encoders.vector``: the toy encoder's settings, assembled into the config from the registry."""

    name: str = "linear"
    source: str = "toy-vector"
    scale: float = 1.0  # the values are multiplied by this when loaded

    @staticmethod
    def check(s, key, encoder):
        PolicySettings.check(s, key, encoder)
        check_range(f"{key}.scale", s.scale, 0, open_low=True)


class VectorEncoder(Encoder):
    """A toy fourth modality: a row names a .npy file of 4 numbers; a linear 'backbone' embeds it."""

    modality = "vector"
    settings = VectorSettings
    media = True  # values are files relative to the dataset folder

    def __init__(self, source: str = "toy-vector", trainable: str = "frozen", scale: float = 1.0):
        super().__init__()
        self.source, self.scale = source, scale
        self.backbone = nn.Linear(4, 8)
        with torch.no_grad():  # fixed weights: the feature cache keys on them
            self.backbone.weight.copy_(torch.arange(32.0).reshape(8, 4) / 32)
            self.backbone.bias.zero_()
        self.out_dim = 8
        self.set_trainable(trainable)

    @classmethod
    def decode_file(cls, path):
        try:
            value = np.load(path)
        except (OSError, ValueError) as err:
            raise MediaError(f"not a .npy file: {err}") from None
        if value.shape != (4,):
            raise MediaError(f"expected 4 numbers, got shape {value.shape}")
        return []

    def load(self, value, root, train=False):
        return torch.tensor(np.load(media_path(value, root)), dtype=torch.float32) * self.scale

    def collate(self, values):
        return {"x": torch.stack([torch.zeros(4) if v is None else v for v in values])}

    def fingerprint(self):
        return {"kind": "vector-v1", "scale": self.scale}

    def corrupt(self, inputs, strength, generator):
        return {"x": inputs["x"] + strength * torch.randn(inputs["x"].shape, generator=generator)}

    def encode(self, inputs):
        tokens = self.backbone(inputs["x"])[:, None]  # [B, 1, 8]
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
        return EncoderOutput(tokens, mask, tokens[:, 0])


@pytest.fixture
def vector_modality():
    """The toy modality registered (one line, as a library encoder file does), and removed after."""
    register_encoder("linear")(VectorEncoder)
    yield VectorEncoder
    ENCODERS.unregister("vector")


def write_split(root: Path, split: str, rows: list[dict]) -> None:
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def vector_dataset(root: Path, n: int = 16) -> Path:
    """Two classes of 4-number files (the second class shifted by +6), 16 rows a split."""
    rng = np.random.default_rng(0)
    (root / "v").mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = []
        for i in range(n):
            np.save(root / "v" / f"{split}{i}.npy", rng.normal(size=4) + (3 if i % 2 else -3))
            rows.append({"vector": f"v/{split}{i}.npy", "text": "a caption", "label": "ab"[i % 2]})
        write_split(root, split, rows)
    return root


def test_a_fourth_modality_flows_through_config_model_data_cache_fewshot_and_evaluation(
        tmp_path, mm_cache, vector_modality):
    root = vector_dataset(tmp_path / "data")
    # The config: an encoders.vector section assembled from the registry, overridable and checked.
    overrides = [f"data.dataset={root}", "data.modalities=[vector]", "encoders.vector.scale=0.5",
                 "fusion.hidden_dim=16", "head.top_k=[]", "train.precision=fp32", "train.eval_batch_size=8",
                 "wandb.mode=disabled"]
    cfg = load_config(None, overrides)
    assert vars(cfg.encoders.vector)["name"] == "linear" and cfg.encoders.vector.scale == 0.5
    assert to_dict(cfg)["encoders"]["vector"]["trainable"] == "frozen"
    with pytest.raises(ConfigError, match=r"invalid value for 'encoders\.vector\.scale': 0\.0; allowed: > 0"):
        load_config(None, [*overrides, "encoders.vector.scale=0"])
    with pytest.raises(ConfigError, match=r"'encoders\.vector\.name': 'mlp'; valid: \['linear'\]"):
        load_config(None, [*overrides, "encoders.vector.name=mlp"])
    with pytest.raises(ConfigError, match=r"'encoders\.vector\.encoder' was renamed to 'encoders\.vector\.name'"):
        load_config(None, [*overrides, "encoders.vector.encoder=linear"])

    # The dataset checks ask the encoder: its values are files (media), decoded by decode_file.
    report = check_dataset(cfg.data, deep=True)
    assert report.ok and report.modalities == ["vector"] and report.rows == {"train": 16, "val": 16, "test": 16}
    np.save(root / "v" / "test5.npy", np.zeros(3))
    (root / "v" / "val7.npy").unlink()
    problems = [str(p) for p in check_dataset(cfg.data, deep=True, strict=False).problems]
    assert problems == [f"{root / 'val.jsonl'}:8: vector file not found: {root / 'v' / 'val7.npy'}",
                        f"{root / 'test.jsonl'}:6: vector expected 4 numbers, got shape (3,)"]
    assert validate_dir(root, deep=False).modalities == ["text", "vector"]  # every registered modality a row has
    np.save(root / "v" / "test5.npy", np.ones(4))
    np.save(root / "v" / "val7.npy", np.ones(4))

    # The model: build_model builds the encoder from its section (scale passed, policy applied).
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=2).eval()
    enc = model.encoders["vector"]
    assert isinstance(enc, VectorEncoder) and enc.scale == 0.5 and enc.policy == "frozen" and enc.frozen_for_run
    splits, classes = build_splits(cfg.data, model.encoders)
    assert classes == ["a", "b"]
    collate = Collator(["vector"], model.encoders)
    without = {k: v for k, v in splits["train"][3].items() if k != "vector"}  # a sample without the modality
    batch = collate([splits["train"][i] for i in range(3)] + [without])
    assert batch["present"]["vector"].tolist() == [True, True, True, False]
    assert batch["vector"]["x"].shape == (4, 4) and batch["vector"]["x"][3].eq(0).all()
    first = np.load(root / "v" / "train0.npy")
    assert torch.allclose(batch["vector"]["x"][0], torch.tensor(first, dtype=torch.float32) * 0.5)

    # The feature cache: built on the first run, hit on the second, serving what the encoder computes.
    cached, cached_collate, report = use_feature_cache(cfg, model, splits, collate, torch.device("cpu"))
    assert [e["status"] for e in report["vector"]["splits"].values()] == ["built"] * 3
    again = use_feature_cache(cfg, model, splits, collate, torch.device("cpu"))[2]
    assert [e["status"] for e in again["vector"]["splits"].values()] == ["hit"] * 3
    served = cached_collate([cached["test"][i] for i in range(8)])
    live = enc(collate([splits["test"][i] for i in range(8)])["vector"])
    assert torch.equal(served["cached"]["vector"]["pooled"], live.pooled)

    # The robustness matrix: the modality removed and noised through its own corrupt().
    rows = robustness(model, DataLoader(splits["test"], batch_size=8, collate_fn=collate), levels=(0.0, 1.0))
    assert [(r["kind"], r["modality"], r["level"]) for r in rows] == [
        ("removed", "none", None), ("noise", "vector", 0.0), ("noise", "vector", 1.0)]

    # Few-shot episodes: the media paths become absolute (asked of the encoder: media), so a run
    # on an episode folder reads the same files; the episode passes the same checks.
    out = tmp_path / "curve"
    write_episodes(out, cfg.data, ks=[2], seeds=[0])
    episode_cfg = load_config(None, [*overrides, *episode_overrides(out, cfg.data, 2, 0)])
    train_rows = [json.loads(line) for line in (Path(episode_cfg.data.dataset) / "train.jsonl").read_text().splitlines()]
    assert len(train_rows) == 4 and sorted(r["label"] for r in train_rows) == ["a", "a", "b", "b"]
    assert all(Path(r["vector"]).is_absolute() and Path(r["vector"]).is_file() for r in train_rows)
    assert check_dataset(episode_cfg.data, deep=True).ok
    episode_splits, _ = build_splits(episode_cfg.data, model.encoders)
    assert len(episode_splits["train"]) == 4
    assert torch.equal(episode_splits["test"][0]["vector"], splits["test"][0]["vector"])


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
    enc = build_encoder("audio", "spectrogram", source="tiny-cnn", max_s=0.8)
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


def test_text_has_pretrained_like_image_and_audio(mm_cache):
    # encoders.text.pretrained=false: the source's architecture from random weights, its tokenizer kept.
    cfg = load_config(None, ["data.modalities=[text]", "encoders.text.source=tiny-bert", "encoders.text.pretrained=false"])
    assert cfg.encoders.text.pretrained is False
    torch.manual_seed(0)
    scratch = build_encoder("text", source="tiny-bert", pretrained=False)
    loaded = build_encoder("text", source="tiny-bert")
    a, b = scratch.backbone.state_dict(), loaded.backbone.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert not torch.equal(a["embeddings.word_embeddings.weight"], b["embeddings.word_embeddings.weight"])
    assert scratch.tokenizer("a b")["input_ids"] == loaded.tokenizer("a b")["input_ids"]
