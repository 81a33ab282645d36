import math

import pytest
import torch
from torch import nn

from mm.config import OptimConfig
from mm.run.optim import build_optimizer, build_scheduler, lr_factor, param_groups


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({"text": nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))})
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_split_backbone_new_and_decay():
    model = Toy()
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(lr=1e-3, backbone_lr=1e-5, weight_decay=0.1))}
    names = {id(p): n for n, p in model.named_parameters()}
    got = {k: sorted(names[id(p)] for p in g["params"]) for k, g in groups.items()}
    assert got == {
        "backbone/decay": ["encoders.text.0.weight"],
        "backbone/no_decay": ["encoders.text.0.bias", "encoders.text.1.bias", "encoders.text.1.weight"],
        "new/decay": ["head.weight"],
        "new/no_decay": ["head.bias"],
    }
    assert groups["backbone/decay"]["lr"] == 1e-5 and groups["new/decay"]["lr"] == 1e-3
    assert groups["new/decay"]["weight_decay"] == 0.1 and groups["new/no_decay"]["weight_decay"] == 0.0


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(70, 100, 10, "constant") == 1.0
    with pytest.raises(ValueError, match="cosine"):
        lr_factor(50, 100, 0, "triangle")


def test_scheduler_drives_each_group_from_its_base_lr():
    model = Toy()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, backbone_lr=1e-5, warmup_ratio=0.0, schedule="cosine"))
    sched = build_scheduler(opt, OptimConfig(warmup_ratio=0.0, schedule="cosine"), total_steps=4)
    for _ in range(2):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["new/decay"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs["backbone/decay"] == pytest.approx(1e-5 * 0.5)


def test_sgd_and_no_trainable_params():
    model = Toy()
    assert isinstance(build_optimizer(model, OptimConfig(name="sgd")), torch.optim.SGD)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(model, OptimConfig())


def test_layer_decay_learning_rates_per_block():
    from mm.encoders import build_encoder

    model = nn.Module()
    model.encoders = nn.ModuleDict({"image": build_encoder("image", source="tiny-vit", trainable="full")})
    model.head = nn.Linear(64, 2)
    groups = param_groups(model, OptimConfig(lr=1e-3, backbone_lr=1.0, layer_decay=0.5))
    names = {id(p): n.removeprefix("encoders.image.backbone.") for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert lr_of["norm.weight"] == 1.0  # final norm: depth 0
    assert lr_of["blocks.1.attn.qkv.weight"] == 0.5  # top block
    assert lr_of["blocks.0.mlp.fc1.bias"] == 0.25
    assert lr_of["cls_token"] == lr_of["patch_embed.proj.weight"] == 0.125  # embeddings: depth 3
    assert lr_of["head.weight"] == 1e-3
    assert {g["name"] for g in groups} >= {"backbone/depth3/decay", "backbone/depth0/no_decay", "new/decay"}
