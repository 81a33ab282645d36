"""The frozen-feature cache: keys, entries, which encoders it serves, and training on it."""

import json
import os
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import mm.features as features
import mm.train as mm_train
from mm.config import ConfigError, load_config
from mm.data.cached import MARKER, FeatureTable, compute_table, load_or_build
from mm.data.collate import Collator
from mm.data.manifest import ManifestDataset
from mm.encoders.image import ImageEncoder
from mm.encoders.policies import apply_policy
from mm.encoders.text import TextEncoder

CPU = torch.device("cpu")
FP32 = "cpu/torch.float32"
ROWS = [  # row 1 has no image, row 2 no text
    {"text": "a red square and a cat", "image": "img/0.png", "label": "a"},
    {"text": "two blue circles", "label": "b"},
    {"image": "img/2.png", "label": "a"},
    {"text": "a green triangle next to a very small dog", "image": "img/3.png", "label": "b"},
]


def write_manifest(root: Path, rows: list[dict]) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        if "image" in row and not (root / row["image"]).exists():
            pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / row["image"])
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def split(root: Path, image: ImageEncoder) -> ManifestDataset:
    return ManifestDataset(root, "train", {"image": image, "text": TextEncoder("tiny-bert")}, "label", ["a", "b"])


@pytest.fixture(scope="module")
def text_enc(tiny_bert) -> TextEncoder:
    return TextEncoder("tiny-bert")


@pytest.fixture(scope="module")
def image_enc(tiny_vit) -> ImageEncoder:
    return ImageEncoder("tiny-vit")


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_manifest(tmp_path / "data", ROWS)


def key(encoder, modality: str, dataset: ManifestDataset, split: str, dtype: str) -> str:
    return features.feature_key(features.encoder_fields(encoder), modality, dataset, split, dtype)[0]


def test_key_changes_with_weights_max_length_manifest_and_dtype(text_enc, image_enc, manifest):
    ds = split(manifest, image_enc)
    base = key(text_enc, "text", ds, "train", FP32)
    text_enc.tokenize(["padding and truncation state must not leak into the key"] * 2)
    assert key(text_enc, "text", ds, "train", FP32) == base

    weight = next(text_enc.backbone.parameters())
    with torch.no_grad():
        weight[0, 0] += 1e-3
    perturbed = key(text_enc, "text", ds, "train", FP32)
    with torch.no_grad():
        weight[0, 0] -= 1e-3
    text_enc.max_length = 32
    shorter = key(text_enc, "text", ds, "train", FP32)
    text_enc.max_length = 64
    bf16 = key(text_enc, "text", ds, "train", "cpu/torch.bfloat16")
    val = key(text_enc, "text", ds, "val", FP32)
    write_manifest(manifest, [{**ROWS[0], "text": "a red square and a dog"}, *ROWS[1:]])
    edited = key(text_enc, "text", split(manifest, image_enc), "train", FP32)
    assert len({base, perturbed, shorter, bf16, val, edited}) == 6
    assert key(text_enc, "text", ds, "train", FP32) == base  # weights and max_length restored: the same key

    image_key = key(image_enc, "image", ds, "train", FP32)
    os.utime(manifest / "img/3.png", ns=(1, 1))  # a media file changed, not the manifest
    assert key(image_enc, "image", ds, "train", FP32) != image_key


def test_table_gathers_what_the_encoder_computes_on_the_batch(text_enc, image_enc, manifest):
    ds = split(manifest, image_enc)
    batch = Collator(["image", "text"], {"text": text_enc, "image": image_enc})([ds[i] for i in range(4)])
    tables = {}
    for m, enc in (("text", text_enc), ("image", image_enc)):
        with torch.no_grad():
            direct = enc(batch[m])
        tables[m] = compute_table(enc, m, ds, batch_size=4, device=CPU, autocast=nullcontext)
        got = tables[m].gather(torch.arange(4))
        assert torch.equal(got["mask"], direct.mask)
        assert torch.equal(got["pooled"], direct.pooled)
        assert torch.equal(got["tokens"][direct.mask], direct.tokens[direct.mask])
        assert torch.equal(tables[m].present, batch["present"][m])
    assert tables["text"].offsets.tolist() == [0, 8, 13, 15, 26]  # words + [CLS] [SEP]; row 2's placeholder ""
    assert tables["image"].offsets.tolist() == [0, 17, 34, 51, 68]  # 4 x 4 patches + [CLS]
    text = compute_table(text_enc, "text", ds, batch_size=3, device=CPU, autocast=nullcontext)
    assert text.offsets.tolist() == [0, 8, 13, 15, 26]
    assert text.tokens.shape == (27, 32) and not text.tokens[26].any() and not text.mask[26]  # the padding row
    pair = text.gather(torch.tensor([2, 1]))
    assert pair["tokens"].shape == (2, 5, 32) and pair["mask"].sum(1).tolist() == [2, 5]
    assert torch.equal(pair["tokens"][0, 2:], torch.zeros(3, 32))  # padding is zeros


def test_partial_entry_is_rebuilt_and_complete_entry_is_read(tmp_path):
    table = FeatureTable(torch.randn(2, 3), torch.randn(6, 3), torch.tensor([True] * 5 + [False]),
                         torch.tensor([0, 2, 5]), torch.tensor([True, False]))
    builds = []

    def build() -> FeatureTable:
        builds.append(1)
        return table

    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "features.safetensors").write_bytes(b"half a file")  # no marker: a crashed build
    got, status = load_or_build(tmp_path, "k", {"split": "train"}, build)
    assert (status, len(builds)) == ("built", 1) and (tmp_path / "k" / MARKER).is_file()
    again, status = load_or_build(tmp_path, "k", {"split": "train"}, build)
    assert (status, len(builds)) == ("hit", 1)
    assert all(torch.equal(getattr(again, f), getattr(table, f)) for f in vars(table))
    assert json.loads((tmp_path / "k" / "meta.json").read_text()) == {"split": "train", "samples": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k.lock", "k"]  # no temporary folder left


def test_concurrent_builders_compute_an_entry_once(tmp_path):
    table = FeatureTable(torch.ones(1, 2), torch.ones(2, 2), torch.tensor([True, False]), torch.tensor([0, 1]),
                         torch.ones(1, dtype=torch.bool))
    builds, statuses = [], []

    def build() -> FeatureTable:
        builds.append(1)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        return table

    def cell() -> None:
        statuses.append(load_or_build(tmp_path, "k", {}, build)[1])

    threads = [threading.Thread(target=cell) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and sorted(statuses) == ["built", "hit"]


@pytest.mark.parametrize(("policy", "reason"), [
    ("frozen", None), ("linear_probe", None), ("full", "trainable=full"), ("last_n", "trainable=last_n"),
    ("lora", "trainable=lora"), ("gradual", "trainable=gradual"),
])
def test_only_encoders_frozen_for_the_whole_run_are_cached(tiny_bert, policy, reason):
    enc = TextEncoder("tiny-bert")
    apply_policy(enc, policy, last_n=1)
    assert features.off_reason(load_config(), "text", enc) == reason


def test_cache_switch_token_head_and_augmentation_turn_caching_off(text_enc, image_enc):
    assert features.off_reason(load_config(None, ["data.cache_features=off"]), "text", text_enc) == "data.cache_features=off"
    token = load_config(None, ["head.name=token", "data.task=tags"])
    assert features.off_reason(token, "text", text_enc) == "the token head aligns its labels with the tokenization"
    assert features.off_reason(token, "image", image_enc) is None
    flipped = ImageEncoder("tiny-vit")
    flipped.transform = transforms.Compose([transforms.RandomHorizontalFlip(), *image_enc.transform.transforms])
    assert features.off_reason(load_config(), "image", flipped) == "random preprocessing (augmentation)"
    text_enc.augment = True
    try:
        assert features.off_reason(load_config(), "text", text_enc) == "random preprocessing (augmentation)"
    finally:
        del text_enc.augment
    with pytest.raises(ConfigError, match="data.cache_features"):
        load_config(None, ["data.cache_features=always"])


TINY = ["data.synthetic.n_train=96", "data.synthetic.n_val=32", "data.synthetic.n_test=32", "train.batch_size=16",
        "train.max_steps=6", "train.eval_every=3", "wandb.mode=disabled",
        "encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit", "encoders.image.trainable=frozen",
        "fusion.modality_dropout=0.3"]


def test_training_on_cached_features_equals_training_without(tmp_path, monkeypatch):
    """Cached vs uncached: the same metrics; another grid cell on the same encoders computes nothing.

    Image features are batch-invariant, so image-only runs agree bitwise. Text losses agree to 1e-6
    only: a text's outputs change in the last bits with the length its batch is padded to (the
    attention sums run over more zeros), and a cached text was padded as in its build batch, not as
    in each training batch. Accuracy and F1 agree exactly either way.
    """
    monkeypatch.setattr(features, "cache_dir", lambda: tmp_path / "cache")
    calls = {"encode": 0, "tokenize": 0, "open": 0}

    def counting(owner, name, key):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counting(TextEncoder, "encode", "encode")
    counting(ImageEncoder, "encode", "encode")
    counting(TextEncoder, "tokenize", "tokenize")
    counting(Image, "open", "open")

    def run(*extra: str) -> dict:
        for k in calls:
            calls[k] = 0
        return mm_train.train(load_config(None, [*TINY, *extra]),
                              mm_train.RunOptions(out_dir=str(tmp_path / "runs"), progress=False))

    def statuses(results: dict) -> dict[str, set[str]]:
        return {m: {e["status"] for e in r["splits"].values()} for m, r in results["feature_cache"].items()}

    both = run("fusion.name=attention")
    assert statuses(both) == {"image": {"built"}, "text": {"built"}}
    assert calls["encode"] == 2 * 3 and calls["open"] == 96 + 32 + 32  # one batch per split and modality
    assert json.loads((Path(both["run_dir"]) / "results.json").read_text())["feature_cache"] == both["feature_cache"]
    both_off = run("fusion.name=attention", "data.cache_features=off")
    assert both_off["feature_cache"] == {m: {"used": False, "reason": "data.cache_features=off"}
                                         for m in ("image", "text")}
    for split in ("val", "test"):
        assert both_off[split].keys() == both[split].keys()
        for name, value in both_off[split].items():
            assert both[split][name] == (pytest.approx(value, abs=1e-6) if name == "loss" else value), (split, name)

    image = run("data.modalities=[image]", "fusion.name=gated", "seed=1")  # another cell, same image encoder
    assert statuses(image) == {"image": {"hit"}}
    assert calls == {"encode": 0, "tokenize": 0, "open": 0}  # no backbone forward, no decoding
    image_off = run("data.modalities=[image]", "fusion.name=gated", "seed=1", "data.cache_features=off")
    assert calls["open"] == 6 * 16 + 3 * 32 + 32  # 6 steps, 3 evaluations of val (best reloaded), 1 of test
    assert (image["val"], image["test"]) == (image_off["val"], image_off["test"])
