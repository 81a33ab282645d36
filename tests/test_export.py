"""Exporting a run's encoders: hub-layout folders that reload to the trained (or LoRA-merged) weights."""

from __future__ import annotations

import json
from pathlib import Path

import export_encoders
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from mm.analysis.evaluation import load_run
from mm.backbone_export import merge_lora
from mm.config import load_config
from mm.data import build_splits
from mm.data.collate import Collator
from mm.encoders import build_encoder
from mm.train import RunOptions, train

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = ("audio", "image", "text")
TINY = {"text": "tiny-bert", "image": "tiny-vit", "audio": "tiny-wav2vec2"}
FILES = {  # what each exported folder must hold
    "text": {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
             "special_tokens_map.json"},
    "image": {"config.json", "model.safetensors"},
    "audio": {"config.json", "model.safetensors", "preprocessor_config.json"},
}
SMALL = [
    "data.task=shape", "data.modalities=[text,image,audio]", "data.synthetic.n_train=32",
    "data.synthetic.n_val=16", "data.synthetic.n_test=16", "data.synthetic.audio_seconds=0.5",
    "encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit", "encoders.audio.name=wav2vec2",
    "encoders.audio.source=tiny-wav2vec2", "train.batch_size=16", "train.max_steps=4", "train.eval_every=4",
    "wandb.mode=disabled", "optim.backbone_lr=1e-2", "optim.warmup_ratio=0",
]


def run_and_export(out: Path, policy: str) -> Path:
    """A 4-step run with every encoder under ``policy``, exported to its default folder."""
    policies = [f"encoders.{m}.trainable={policy}" for m in MODALITIES]
    results = train(load_config(None, [*SMALL, *policies]), RunOptions(out_dir=str(out), progress=False))
    run_dir = Path(results["run_dir"])
    assert export_encoders.main([str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_and_export(tmp_path_factory.mktemp("full"), "full")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_and_export(tmp_path_factory.mktemp("lora"), "lora")


def trained_backbone(run_dir: Path, modality: str) -> dict[str, torch.Tensor]:
    weights = load_file(run_dir / "checkpoints" / "best" / "model.safetensors")
    prefix = f"encoders.{modality}.backbone."
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def test_export_writes_hub_layout_folders_and_a_record(full_run: Path) -> None:
    out = full_run / "export"
    assert sorted(p.name for p in out.iterdir()) == ["audio", "export.json", "image", "text"]
    for m in MODALITIES:
        assert FILES[m] <= {p.name for p in (out / m).iterdir()}, m
    config = json.loads((out / "image" / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["num_classes"] == config["pretrained_cfg"]["num_classes"] == 0
    assert config["model_args"] | {"img_size": [32, 32], "patch_size": 8, "embed_dim": 64, "depth": 2} == config["model_args"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    record = json.loads((out / "export.json").read_text())
    assert record["folders"] == {m: str(out / m) for m in MODALITIES}
    assert record["trained_from"] == TINY
    assert record["policies"] == dict.fromkeys(MODALITIES, "full")


@pytest.mark.parametrize("modality", MODALITIES)
def test_exported_folder_reloads_the_trained_backbone_exactly(full_run: Path, modality: str) -> None:
    trained = trained_backbone(full_run, modality)
    initial = build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=TINY[modality]).backbone.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)  # training moved the weights
    fresh = build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=str(full_run / "export" / modality))
    exported = fresh.backbone.state_dict()
    assert sorted(exported) == sorted(trained)
    for k in trained:
        assert torch.equal(exported[k], trained[k]), k
    original = build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=TINY[modality])
    if modality == "text":
        assert fresh.tokenizer("a red cat")["input_ids"] == original.tokenizer("a red cat")["input_ids"]
    elif modality == "audio":
        assert fresh.extractor.to_dict() == original.extractor.to_dict()
    else:
        assert fresh.data_config == original.data_config


def test_script_refuses_to_overwrite_without_the_flag(full_run: Path, tmp_path: Path, capsys) -> None:
    script = export_encoders
    capsys.readouterr()
    assert script.main([str(full_run), "--out", str(tmp_path / "e"), "--checkpoint", "last"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert json.loads(printed[-1]) == {m: str(tmp_path / "e" / m) for m in MODALITIES}
    assert printed[1] == f"image: {tmp_path / 'e' / 'image'}  (use: encoders.image.source={tmp_path / 'e' / 'image'})"
    assert script.main([str(full_run), "--out", str(tmp_path / "e")]) == 2
    assert "already exported" in capsys.readouterr().err
    assert script.main([str(full_run), "--out", str(tmp_path / "e"), "--overwrite"]) == 0


@pytest.mark.parametrize("modality", MODALITIES)
def test_lora_export_is_a_plain_backbone_with_the_adapted_outputs(lora_run: Path, modality: str) -> None:
    cfg, model, classes = load_run(lora_run)
    adapted = model.encoders[modality]
    folder = lora_run / "export" / modality
    assert not [k for k in load_file(folder / "model.safetensors") if "lora" in k]
    assert any("lora_B" in k for k, _ in adapted.backbone.named_parameters())  # merge_lora copied, not mutated

    splits, _ = build_splits(cfg.data, dict(model.encoders), classes)
    batch = next(iter(DataLoader(splits["test"], batch_size=8, collate_fn=Collator(cfg.data.modalities, dict(model.encoders)))))
    fresh = build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=str(folder)).eval()
    base = build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=TINY[modality]).eval()
    with torch.no_grad():
        want, got, unadapted = adapted(batch[modality]), fresh(batch[modality]), base(batch[modality])
    assert torch.allclose(got.tokens, want.tokens, atol=1e-5)
    assert torch.allclose(got.pooled, want.pooled, atol=1e-5)
    assert not torch.allclose(unadapted.pooled, want.pooled, atol=1e-3)  # the adapters did change the outputs


def test_merge_lora_of_a_plain_backbone_is_an_equal_copy() -> None:
    backbone = build_encoder("image", source="tiny-vit").backbone
    merged = merge_lora(backbone)
    assert merged is not backbone
    assert all(torch.equal(merged.state_dict()[k], v) for k, v in backbone.state_dict().items())
