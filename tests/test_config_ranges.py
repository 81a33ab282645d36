"""Ranges, combinations and encoder sources: checked by ``load_config`` before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mm.config import ConfigError, load_config
from mm.encoders.sources import ALIASES, SourceError, check_source, resolve_source
from mm.experiments import curves, grids

ROOT = Path(__file__).resolve().parents[1]
ALIAS_LIST = ", ".join(ALIASES)

# (overrides, the key the error names, the rest of the message after "invalid value for '<key>': ").
BAD = [
    (["seed=-1"], "seed", "-1; allowed: >= 0"),
    (["data.synthetic.seed=-1"], "data.synthetic.seed", "-1; allowed: >= 0"),
    (["data.synthetic.n_train=0"], "data.synthetic.n_train", "0; allowed: >= 1"),
    (["data.synthetic.n_val=0"], "data.synthetic.n_val", "0; allowed: >= 1"),
    (["data.synthetic.n_test=0"], "data.synthetic.n_test", "0; allowed: >= 1"),
    (["data.synthetic.image_size=14"], "data.synthetic.image_size", "14; allowed: >= 15"),
    (["data.synthetic.image_noise=-0.1"], "data.synthetic.image_noise", "-0.1; allowed: >= 0"),
    (["data.synthetic.text_noise=1.5"], "data.synthetic.text_noise", "1.5; allowed: [0, 1]"),
    (["data.synthetic.audio_snr_db=.inf"], "data.synthetic.audio_snr_db", "inf; allowed: a finite number"),
    (["data.synthetic.audio_seconds=0.01"], "data.synthetic.audio_seconds", "0.01; allowed: >= 0.05"),
    (["data.synthetic.sample_rate=3200"], "data.synthetic.sample_rate", "3200; allowed: > 3200"),
    (["data.num_workers=-1"], "data.num_workers", "-1; allowed: >= 0"),
    (["fusion.modality_dropout=1.5"], "fusion.modality_dropout", "1.5; allowed: [0, 1)"),
    (["fusion.modality_dropout=1"], "fusion.modality_dropout", "1.0; allowed: [0, 1)"),
    (["fusion.modality_dropout=-0.1"], "fusion.modality_dropout", "-0.1; allowed: [0, 1)"),
    (["data.train_fraction=0"], "data.train_fraction", "0.0; allowed: (0, 1]"),
    (["data.max_bad_fraction=1"], "data.max_bad_fraction", "1.0; allowed: [0, 1)"),
    (["encoders.text.last_n=0"], "encoders.text.last_n", "0; allowed: >= 1"),
    (["encoders.image.gradual_every=0"], "encoders.image.gradual_every", "0; allowed: >= 1"),
    (["encoders.image.lora_r=0"], "encoders.image.lora_r", "0; allowed: >= 1"),
    (["encoders.audio.lora_alpha=0"], "encoders.audio.lora_alpha", "0; allowed: > 0"),
    (["encoders.text.lora_dropout=1"], "encoders.text.lora_dropout", "1.0; allowed: [0, 1)"),
    (["encoders.text.max_length=1"], "encoders.text.max_length", "1; allowed: >= 2"),
    (["encoders.text.stride=64"], "encoders.text.stride", "64; allowed: [0, 64)"),
    (["encoders.text.stride=-1"], "encoders.text.stride", "-1; allowed: [0, 64)"),
    (["encoders.image.input_size=-1"], "encoders.image.input_size", "-1; allowed: >= 0"),
    (["encoders.image.hflip=2"], "encoders.image.hflip", "2.0; allowed: [0, 1]"),
    (["encoders.audio.max_s=0"], "encoders.audio.max_s", "0.0; allowed: > 0"),
    (["encoders.audio.n_mels=0"], "encoders.audio.n_mels", "0; allowed: >= 1"),
    (["encoders.audio.gain_db=-1"], "encoders.audio.gain_db", "-1.0; allowed: >= 0"),
    (["encoders.audio.shift_s=-0.1"], "encoders.audio.shift_s", "-0.1; allowed: >= 0"),
    (["encoders.audio.snr_db=[20,10]"], "encoders.audio.snr_db[1]", "10.0; allowed: >= 20"),
    (["encoders.audio.snr_db=[1,2,3]"], "encoders.audio.snr_db", "[1.0, 2.0, 3.0]; allowed: [] or [low, high]"),
    (["fusion.hidden_dim=0"], "fusion.hidden_dim", "0; allowed: >= 1"),
    (["fusion.num_layers=-1"], "fusion.num_layers", "-1; allowed: >= 0"),
    (["fusion.name=attention", "fusion.num_layers=0"], "fusion.num_layers", "0; allowed: >= 1"),
    (["fusion.dropout=1"], "fusion.dropout", "1.0; allowed: [0, 1)"),
    (["fusion.num_heads=0"], "fusion.num_heads", "0; allowed: >= 1"),
    (["fusion.rank=0"], "fusion.rank", "0; allowed: >= 1"),
    (["fusion.tensor_dim=0"], "fusion.tensor_dim", "0; allowed: >= 1"),
    (["fusion.name=attention", "fusion.hidden_dim=250"], "fusion.hidden_dim",
     "250; fusion.name=attention needs a multiple of 'fusion.num_heads' (4)"),
    (["fusion.name=text_tokens", "head.name=token", "fusion.hidden_dim=30"], "fusion.hidden_dim",
     "30; fusion.name=text_tokens needs a multiple of 'fusion.num_heads' (4)"),
    (["fusion.name=text_tokens", "data.modalities=[image]"], "fusion.name",
     "'text_tokens'; needs the text modality, not only ['image']"),
    (["encoders.text.trainable=linear_probe", "fusion.name=gated"], "encoders.text.trainable",
     "'linear_probe'; needs fusion.name=concat, not 'gated'"),
    (["head.top_k=[0]"], "head.top_k", "0; allowed: >= 1"),
    (["head.top_k=[5,-1]"], "head.top_k", "-1; allowed: >= 1"),
    (["optim.lr=-1"], "optim.lr", "-1.0; allowed: > 0"),
    (["optim.lr=0"], "optim.lr", "0.0; allowed: > 0"),
    (["optim.lr=.nan"], "optim.lr", "nan; allowed: > 0"),
    (["optim.lr=.inf"], "optim.lr", "inf; allowed: > 0"),
    (["optim.backbone_lr=-1e-4"], "optim.backbone_lr", "-0.0001; allowed: >= 0"),
    (["optim.weight_decay=-0.01"], "optim.weight_decay", "-0.01; allowed: >= 0"),
    (["optim.momentum=1"], "optim.momentum", "1.0; allowed: [0, 1)"),
    (["optim.name=sgd", "optim.nesterov=true", "optim.momentum=0"], "optim.nesterov",
     "True; needs 'optim.momentum' > 0 (torch's SGD has no Nesterov without momentum)"),
    (["optim.layer_decay=0"], "optim.layer_decay", "0.0; allowed: (0, 1]"),
    (["optim.layer_decay=1.5"], "optim.layer_decay", "1.5; allowed: (0, 1]"),
    (["optim.betas=[0.9]"], "optim.betas", "[0.9]; allowed: [beta1, beta2]"),
    (["optim.betas=[0.9,1.0]"], "optim.betas[1]", "1.0; allowed: [0, 1)"),
    (["optim.warmup_ratio=2"], "optim.warmup_ratio", "2.0; allowed: [0, 1]"),
    (["optim.warmup_ratio=-0.1"], "optim.warmup_ratio", "-0.1; allowed: [0, 1]"),
    (["optim.max_grad_norm=-1"], "optim.max_grad_norm", "-1.0; allowed: >= 0"),
    (["optim.grad_accum_steps=0"], "optim.grad_accum_steps", "0; allowed: >= 1"),
    (["train.epochs=0"], "train.epochs", "0; allowed: >= 1"),
    (["train.max_steps=-5"], "train.max_steps", "-5; allowed: >= 0"),
    (["train.batch_size=0"], "train.batch_size", "0; allowed: >= 1"),
    (["train.eval_batch_size=0"], "train.eval_batch_size", "0; allowed: >= 1"),
    (["train.eval_every=-1"], "train.eval_every", "-1; allowed: >= 0"),
    (["train.patience=-1"], "train.patience", "-1; allowed: >= 0"),
    (["train.min_delta=-0.1"], "train.min_delta", "-0.1; allowed: >= 0"),
    (["head.label_smoothing=1"], "head.label_smoothing", "1.0; allowed: [0, 1)"),
    (["train.mixup=-1"], "train.mixup", "-1.0; allowed: >= 0"),
    (["train.cutmix=-1"], "train.cutmix", "-1.0; allowed: >= 0"),
    (["train.mix_prob=1.5"], "train.mix_prob", "1.5; allowed: [0, 1]"),
    (["train.max_nonfinite=0"], "train.max_nonfinite", "0; allowed: >= 1"),
    (["encoders.text.source=minlm"], "encoders.text.source",
     f"'minlm' is not an alias ({ALIAS_LIST}) nor a local folder; did you mean 'minilm'?"),
    (["encoders.text.source=./no/such/folder"], "encoders.text.source", "'./no/such/folder': no such file or folder"),
    (["encoders.image.source=tiny_vit"], "encoders.image.source",
     f"'tiny_vit' is not an alias ({ALIAS_LIST}), a local folder, a timm model name or a hub id 'org/name'; "
     "did you mean 'tiny-vit'?"),
    (["encoders.image.source=vit_bse_patch16_224"], "encoders.image.source",
     f"'vit_bse_patch16_224' is not an alias ({ALIAS_LIST}), a local folder, a timm model name or a hub id "
     "'org/name'; did you mean 'vit_base_patch16_224'?"),
    (["encoders.image.source=vit_small_patch16_224@/no/such.safetensors"], "encoders.image.source",
     "'vit_small_patch16_224@/no/such.safetensors': weights file not found: /no/such.safetensors"),
    (["data.modalities=[audio]", "encoders.audio.name=wav2vec2", "encoders.audio.source=tiny-wav2vec"],
     "encoders.audio.source",
     f"'tiny-wav2vec' is not an alias ({ALIAS_LIST}) nor a local folder; did you mean 'tiny-wav2vec2'?"),
]


@pytest.mark.parametrize(("overrides", "key", "rest"), BAD, ids=[" ".join(o) for o, _, _ in BAD])
def test_bad_value_is_refused_naming_the_key_and_what_is_allowed(overrides, key, rest):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value) == f"invalid value for '{key}': {rest}"


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.epochs=0", "train.max_steps=10"],  # max_steps > 0 replaces epochs
        ["fusion.modality_dropout=0.99", "optim.warmup_ratio=1", "optim.backbone_lr=0", "train.eval_every=0"],
        ["fusion.num_layers=0"],  # concat: the concatenation as it is
        ["fusion.name=attention", "fusion.hidden_dim=12", "fusion.num_heads=3"],
        ["fusion.name=text_tokens", "head.name=token", "data.modalities=[text]", "fusion.hidden_dim=30"],  # no attention
        ["head.top_k=[1,1000]"],  # k >= the class count is left out by the head, not an error
        ["encoders.text.source=bert-base-uncased", "encoders.image.source=vit_base_patch16_224.augreg2_in21k_ft_in1k"],
        ["encoders.image.source=timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", "encoders.text.source=google/bert"],
        ["encoders.image.source=hf-hub:timm/resnet18.a1_in1k"],
    ],
)
def test_edge_values_and_hub_names_are_accepted(overrides):
    load_config(None, overrides)


CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
GRIDS = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))
CURVES = sorted((ROOT / "configs" / "curves").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    load_config(path)


@pytest.mark.parametrize("path", GRIDS + CURVES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_cell_of_every_shipped_grid_and_curve_validates(path, tmp_path):
    # expand() loads and validates each cell's config (base file, overrides, the cell's values).
    if path.parent.name == "ablations":
        cells = grids.expand(grids.load_grid(path), tmp_path)
    else:
        cells = curves.expand(curves.load_curve(path), tmp_path)
    assert cells


def test_mistyped_alias_fails_at_once_without_the_hub(tmp_path):
    load_config(None)  # imports torch, transformers and timm once
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="did you mean 'minilm'"):
        load_config(None, ["encoders.text.source=minlm"])
    assert time.perf_counter() - start < 1.0
    # An encoder built without load_config refuses it too, before any hub lookup: in a fresh process
    # that may reach the network (no HF_HUB_OFFLINE), an audit hook records and stops every name
    # lookup and every connection.
    code = f"""
import sys
def no_network(event, args):
    if event in ("socket.getaddrinfo", "socket.connect"):
        with open({str(tmp_path / "network.txt")!r}, "a") as f:
            print(event, args, file=f)
        raise OSError("no network in this test")
sys.addaudithook(no_network)
from mm.encoders import build_encoder
from mm.encoders.sources import SourceError
try:
    build_encoder("text", source="minlm")
except SourceError as err:
    print(err)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert done.stdout.strip() == f"'minlm' is not an alias ({ALIAS_LIST}) nor a local folder; did you mean 'minilm'?"
    assert not (tmp_path / "network.txt").exists()


def test_sources_that_exist_locally_are_accepted(tmp_path):
    folder, weights = tmp_path / "minlm", tmp_path / "w.safetensors"
    folder.mkdir()
    weights.write_bytes(b"")
    check_source(str(folder), "hf")  # a folder wins over the look of its name
    check_source(f"tiny_vit_5m_224@{weights}", "timm")
    check_source(f"local-dir:{folder}", "timm")
    assert resolve_source(str(folder)) == str(folder)
    with pytest.raises(SourceError, match="no such folder"):
        check_source(f"local-dir:{tmp_path / 'missing'}", "timm")
    with pytest.raises(SourceError, match="the source is empty"):
        check_source(" ", "hf")


def test_a_name_near_an_alias_is_accepted_when_the_hf_cache_holds_it(tmp_path, monkeypatch):
    # The hub cache layout: models--<name>/snapshots/<commit>/config.json and refs/main naming it.
    repo = tmp_path / "hub" / "models--minlm"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    with pytest.raises(SourceError):
        check_source("minlm", "hf")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    check_source("minlm", "hf")


def test_head_refuses_a_top_k_below_one_and_leaves_out_those_past_the_classes():
    from mm.heads import ClassificationHead

    with pytest.raises(ValueError, match=r"top_k must hold k >= 1, got \[3, 0\]"):
        ClassificationHead(8, 4, top_k=(3, 0))
    assert ClassificationHead(8, 4, top_k=(1, 3, 4, 1000)).top_k == [1, 3]
