"""Mixup and CutMix: what is blended, the exact kept area, the two-label loss, seeded draws."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mm.config import ConfigError, load_config
from mm.heads import ClassificationHead
from mm.mixing import Mixing


def batch(B: int = 4) -> dict:
    return {
        "label": torch.arange(B), "index": torch.arange(B),
        "present": {"image": torch.tensor([True, True, False, True]), "audio": torch.ones(B, dtype=torch.bool)},
        "image": {"pixel_values": torch.arange(B, dtype=torch.float)[:, None, None, None].expand(B, 3, 8, 8).clone()},
        "audio": {"spectrogram": torch.randn(B, 1, 4, 10), "frames": torch.tensor([10, 3, 7, 5])},
    }


def test_mixup_blends_every_float_input_with_the_reversed_batch():
    torch.manual_seed(0)
    b = batch()
    out = Mixing(mixup=0.4)(b)
    lam, perm = out["mix"]["lam"], out["mix"]["perm"]
    assert perm.tolist() == [3, 2, 1, 0] and 0 < lam < 1
    expected = lam * b["image"]["pixel_values"] + (1 - lam) * b["image"]["pixel_values"].flip(0)
    assert torch.allclose(out["image"]["pixel_values"], expected)
    assert torch.allclose(out["audio"]["spectrogram"], lam * b["audio"]["spectrogram"] + (1 - lam) * b["audio"]["spectrogram"].flip(0))
    assert out["audio"]["frames"].tolist() == [10, 7, 7, 10]  # the longer of the pair
    assert out["present"]["image"].tolist() == [True, True, True, True]  # 2 is paired with 1
    assert torch.equal(out["label"], b["label"])
    torch.manual_seed(0)
    again = Mixing(mixup=0.4)(batch())
    assert again["mix"]["lam"] == lam  # drawn from torch's RNG, which checkpoints save


def test_cutmix_pastes_a_box_and_lam_is_the_exact_kept_area():
    torch.manual_seed(3)
    b = batch()
    out = Mixing(cutmix=1.0)(b)
    lam = out["mix"]["lam"]
    x = out["image"]["pixel_values"]
    pasted = (x[0, 0] == 3.0)  # sample 0 (all zeros) takes sample 3's pixels inside the box
    assert pasted.any() and (x[0, 0][~pasted] == 0).all()
    assert 1 - pasted.float().mean().item() == pytest.approx(lam)


def test_the_loss_of_a_mixed_batch_weights_both_labels():
    head = ClassificationHead(8, 4, top_k=(), label_smoothing=0.1)
    logits = torch.randn(4, 4)
    y = torch.tensor([0, 1, 2, 3])
    perm = torch.tensor([3, 2, 1, 0])
    loss = head.loss(logits, {"label": y, "mix": {"lam": 0.3, "perm": perm}})
    ref = 0.3 * F.cross_entropy(logits, y, label_smoothing=0.1) + 0.7 * F.cross_entropy(logits, y[perm], label_smoothing=0.1)
    assert loss.item() == pytest.approx(ref.item())
    assert Mixing().active is False and Mixing(mixup=0.2).active


def test_mixing_needs_a_classifier_without_text():
    load_config(None, ["train.mixup=0.2", "data.modalities=[image]"])
    with pytest.raises(ConfigError, match="train.mixup"):
        load_config(None, ["train.mixup=0.2", "data.modalities=[text,image]"])
    with pytest.raises(ConfigError, match="train.mixup"):
        load_config(None, ["train.cutmix=1.0", "data.modalities=[image]", "head.name=regression", "data.task=regression"])


def test_a_mixed_training_run(tmp_path):
    from mm.train import RunOptions, train

    cfg = load_config(None, [
        "data.modalities=[image]", "data.task=color", "encoders.image.source=tiny-cnn", "encoders.image.trainable=frozen",
        "data.synthetic.n_train=64", "data.synthetic.n_val=16", "data.synthetic.n_test=16", "train.max_steps=3",
        "train.batch_size=16", "train.mixup=0.2", "train.cutmix=1.0", "wandb.mode=disabled",
    ])
    results = train(cfg, RunOptions(out_dir=str(tmp_path), progress=False))
    assert results["feature_cache"]["image"] == {"used": False, "reason": "mixup/cutmix blend the inputs"}
    assert results["steps"] == 3
