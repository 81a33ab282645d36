import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mm.data.collate import Collator
from mm.data.manifest import ManifestDataset, ManifestError, read_manifest
from mm.labels import LabelError, label_vocabulary


class FakeText:
    """The text side of the encoder data contract, without a tokenizer: one id per word."""

    media, augment = False, False

    def load(self, value, root, train=False):
        return str(value)

    def collate(self, texts):
        texts = ["" if t is None else t for t in texts]
        lens = [len(t.split()) for t in texts]
        T = max(max(lens), 1)
        ids = torch.zeros(len(texts), T, dtype=torch.long)
        for i, n in enumerate(lens):
            ids[i, :n] = 1
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


class FakeImage:
    media, augment = True, False

    def load(self, value, root, train=False):
        with Image.open(root / value) as img:
            return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255

    def collate(self, pictures):
        zeros = torch.zeros(3, 8, 8)
        return {"pixel_values": torch.stack([zeros if p is None else p for p in pictures])}


class FakeAudio:
    media, augment = True, False

    def load(self, value, root, train=False):
        return torch.from_numpy(sf.read(str(root / value), dtype="float32")[0])

    def collate(self, waves):
        waves = [torch.zeros(400) if w is None else w for w in waves]
        S = max(len(w) for w in waves)
        x = torch.zeros(len(waves), S)
        m = torch.zeros(len(waves), S, dtype=torch.long)
        for i, w in enumerate(waves):
            x[i, : len(w)] = torch.as_tensor(w)
            m[i, : len(w)] = 1
        return {"input_values": x, "attention_mask": m}


def write_manifest(root, rows, split="train"):
    (root / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_bad_json_names_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "ok", "label": 1}\n{"text": broken}\n')
    with pytest.raises(ManifestError, match=r"train\.jsonl:2: invalid JSON"):
        read_manifest(tmp_path / "train.jsonl")


def test_missing_label_and_unknown_label_name_the_line(tmp_path):
    write_manifest(tmp_path, [{"text": "a", "label": "x"}, {"text": "b"}])
    with pytest.raises(LabelError, match=r"train\.jsonl:2: no label at key 'label'"):
        label_vocabulary("classification", read_manifest(tmp_path / "train.jsonl"), "label")
    write_manifest(tmp_path, [{"text": "a", "label": "x"}, {"text": "b", "label": "z"}], "val")
    with pytest.raises(ManifestError, match=r"val\.jsonl:2: label 'z'"):
        ManifestDataset(tmp_path, "val", {"text": FakeText()}, "label", ["x", "y"])


def test_missing_media_file_names_row_and_path(tmp_path):
    write_manifest(tmp_path, [{"image": "img/nope.png", "label": 0}])
    with pytest.raises(ManifestError, match=r"train\.jsonl:1: image file not found: .*nope\.png"):
        ManifestDataset(tmp_path, "train", {"image": FakeImage()}, "label", [0])


def test_dotted_label_key_and_sorted_vocabulary(tmp_path):
    write_manifest(tmp_path, [{"labels": {"t": "b"}}, {"labels": {"t": "a"}}, {"labels": {"t": "b"}}])
    rows = read_manifest(tmp_path / "train.jsonl")
    assert label_vocabulary("classification", rows, "labels.t") == ["a", "b"]
    ds = ManifestDataset(tmp_path, "train", {"text": FakeText()}, "labels.t", ["a", "b"])
    assert ds.labels == [1, 0, 1]


def test_dataset_and_collate_with_a_missing_modality(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    sf.write(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    write_manifest(tmp_path, [
        {"text": "one two three", "image": "a.png", "audio": "a.wav", "label": "x"},
        {"text": "one", "audio": "a.wav", "label": "y"},
    ])
    encoders = {"text": FakeText(), "image": FakeImage(), "audio": FakeAudio()}
    ds = ManifestDataset(tmp_path, "train", encoders, "label", ["x", "y"])
    collate = Collator(["text", "image", "audio"], encoders)
    batch = collate([ds[0], ds[1]])
    assert batch["label"].tolist() == [0, 1]
    assert batch["present"]["image"].tolist() == [True, False]
    assert batch["present"]["text"].tolist() == [True, True]
    assert batch["image"]["pixel_values"].shape == (2, 3, 8, 8)
    assert batch["image"]["pixel_values"][0, 0].eq(1).all() and batch["image"]["pixel_values"][1].eq(0).all()
    assert batch["text"]["attention_mask"].sum(1).tolist() == [3, 1]
    assert batch["audio"]["input_values"].shape == (2, 1600)
