"""Whole-model export (scripts/export_model.py, mm.serve): the exported graph + numpy preprocessing
give the PyTorch model's outputs for every modality subset, every head kind, both audio encoders and
a LoRA-merged encoder; parts that cannot be exported are refused by name."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import export_model  # scripts/export_model.py (tests/conftest.py puts scripts/ on sys.path)
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from torch import nn

from mm.analysis.evaluation import load_run
from mm.config import load_config, to_yaml
from mm.labels import build_codec
from mm.model import MultimodalModel, build_model
from mm.run.checkpoint import save_checkpoint, save_weights
from mm.serve import export as mm_export
from mm.serve.bundle import Bundle
from mm.serve.preprocess import InputError, resample

TOL = mm_export.TOLERANCE  # 1e-4 on the logits
BASE = ["encoders.text.source=tiny-bert", "encoders.text.max_length=24", "encoders.image.source=tiny-cnn",
        "encoders.image.input_size=32", "encoders.audio.source=tiny-cnn", "encoders.audio.n_mels=32",
        "fusion.hidden_dim=16", "fusion.num_heads=2", "fusion.tensor_dim=4", "wandb.mode=disabled"]
# One tiny model per head kind; between them: both audio encoders, several fusions, LoRA.
MODELS = {
    "classification": (["data.modalities=[text,image,audio]", "fusion.name=concat"], ["cat", "dog", "bird"]),
    "multilabel": (["data.modalities=[text,audio]", "encoders.audio.name=wav2vec2",
                    "encoders.audio.source=tiny-wav2vec2", "encoders.text.trainable=lora", "encoders.text.lora_r=2",
                    "fusion.name=gated"], ["red", "round", "loud"]),
    "regression": (["data.modalities=[image,text]", "encoders.image.source=tiny-vit", "fusion.name=attention",
                    "head.name=regression", "train.metric=mae", "train.metric_mode=min"], []),
    "token": (["data.modalities=[text,image]", "fusion.name=text_tokens", "head.name=token"], ["O", "B-RED", "I-RED"]),
}


def make_run(folder: Path, overrides: list[str], classes: list, head: str) -> Path:
    """A run folder as training leaves it (config, classes, a best checkpoint) with random weights:
    the missing embeddings and LoRA's B matrices (zero at init) drawn too, so both matter."""
    cfg = load_config(None, [*BASE, *overrides, f"head.name={head}"])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=build_codec(head, classes).num_outputs, classes=classes)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("missing.") or "lora_B" in name:
                p.normal_(0, 0.5)
    run_dir = folder / f"{head}-run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    (run_dir / "classes.json").write_text(json.dumps(classes))
    save_checkpoint(run_dir / "checkpoints", 1, lambda p: save_weights(model, p), {}, best=True)
    return run_dir


class Exports(dict):
    """head kind -> (run folder, export folder, bundle.json), each tiny model exported on first use."""

    def __init__(self, factory: pytest.TempPathFactory):
        super().__init__()
        self.factory = factory

    def __missing__(self, head: str) -> tuple[Path, Path, dict]:
        overrides, classes = MODELS[head]
        folder = self.factory.mktemp(head)
        run_dir = make_run(folder, overrides, classes, head)
        self[head] = (run_dir, folder / "export", mm_export.export_model(run_dir, folder / "export"))
        return self[head]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    """The four tiny models, each exported once per module (on first use)."""
    return Exports(tmp_path_factory)


def raw_inputs(folder: Path, token: bool) -> list[dict]:
    """Three fresh samples (not the export's own): PNG pictures of odd sizes, 8 kHz and 44.1 kHz WAVs."""
    rng = np.random.default_rng(7)
    texts = ["green wedge", "a loud trio of dogs near a red ring", "box"] if token else \
        ["a green wedge", "", "a loud trio of dogs barking near a bright red ring on a dark background"]
    samples = []
    for i, (size, rate, seconds) in enumerate([((50, 20), 8000, 0.45), ((33, 33), 44100, 0.2), ((20, 64), 16000, 0.7)]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i}.png")
        wave = rng.uniform(-0.5, 0.5, int(rate * seconds)).astype(np.float32)
        soundfile.write(folder / f"a{i}.wav", wave, rate)
        samples.append({"text": texts[i], "image": f"p{i}.png", "audio": f"a{i}.wav"})
    return samples


def torch_logits(model: MultimodalModel, samples: list[dict], root: Path, token: bool) -> torch.Tensor:
    with torch.no_grad():
        return model(mm_export.torch_batch(model, samples, root, token)).float()


@pytest.mark.parametrize("head", list(MODELS))
def test_exported_model_equals_pytorch_for_every_modality_subset(head: str, exported: dict, tmp_path: Path) -> None:
    run_dir, out, info = exported[head]
    _, model, classes = load_run(run_dir)
    bundle = Bundle.open(out)
    token = head == "token"
    samples = raw_inputs(tmp_path, token)
    mods = model.modalities
    for k in range(len(mods) + 1):
        for subset in itertools.combinations(mods, k):
            if token and "text" not in subset:
                continue
            batch = [{m: s[m] for m in subset} for s in samples]
            expected = torch_logits(model, batch, tmp_path, token).numpy()
            got = bundle.logits(batch, root=tmp_path)
            assert got.shape == expected.shape, subset
            assert np.abs(got - expected).max() <= TOL, (subset, np.abs(got - expected).max())
    # what the export measured and recorded
    assert info["check"]["max_abs_diff"] <= TOL and info["check"]["tolerance"] == TOL
    assert info["check"]["preprocessing_max_abs_diff"] < 1e-5
    assert sorted(info["check"]["per_batch"]) == sorted(
        [*("+".join(s) or "none" for k in range(len(mods) + 1) for s in itertools.combinations(mods, k)
           if not token or "text" in s), "mixed", "short"])


def test_bundle_json_describes_the_model(exported: dict) -> None:
    run_dir, out, info = exported["classification"]
    assert json.loads((out / "bundle.json").read_text()) == info
    assert info["head"] == {"kind": "classification", "labels": ["cat", "dog", "bird"]}
    assert info["modalities"] == ["audio", "image", "text"] and info["media"] == ["audio", "image"]
    assert info["model_id"].startswith(f"{run_dir.name}@") and len(info["model_id"].split("@")[1]) == 12
    assert info["graph"]["format"] == "onnx" and info["graph"]["exporter"] in ("dynamo", "torchscript")
    assert [(i["name"], i["dtype"], i["shape"]) for i in info["inputs"]] == [
        ("audio.spectrogram", "float32", ["batch", 1, 32, "audio_frames"]), ("audio.frames", "int64", ["batch"]),
        ("image.pixel_values", "float32", ["batch", 3, 32, 32]),
        ("text.input_ids", "int64", ["batch", "text_len"]), ("text.token_type_ids", "int64", ["batch", "text_len"]),
        ("text.attention_mask", "int64", ["batch", "text_len"]),
        ("present.audio", "bool", ["batch"]), ("present.image", "bool", ["batch"]), ("present.text", "bool", ["batch"])]
    prep = info["preprocessing"]
    assert prep["text"]["kind"] == "tokenizer" and prep["text"]["max_length"] == 24 and prep["text"]["mode"] == "pooled"
    assert prep["image"]["ops"] == [
        {"op": "resize", "size": [32], "interpolation": "bicubic", "max_size": None},
        {"op": "center_crop", "size": [32, 32]}, {"op": "to_float"},
        {"op": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}]
    assert {k: prep["audio"][k] for k in ("kind", "sample_rate", "n_mels", "n_fft", "hop")} == {
        "kind": "spectrogram", "sample_rate": 16000, "n_mels": 32, "n_fft": 400, "hop": 160}
    assert np.load(out / "audio" / "mel_fb.npy").shape == (201, 32)
    assert {"tokenizer.json", "vocab.txt"} <= {p.name for p in (out / "text").iterdir()}
    assert exported["multilabel"][2]["preprocessing"]["audio"]["kind"] == "wav2vec2"


def test_lora_is_merged_into_the_exported_graph(exported: dict) -> None:
    run_dir, _, info = exported["multilabel"]
    assert info["lora_merged"] == ["text"]
    _, model, _ = load_run(run_dir)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.detach().abs().max()) > 0 for p in lora_b)  # the adapters change the outputs


def test_predictions_decode_as_mm_predict_does(exported: dict, tmp_path: Path) -> None:
    from mm.predict import decode

    for head in ("classification", "multilabel", "regression"):
        run_dir, out, _ = exported[head]
        _, model, classes = load_run(run_dir)
        samples = raw_inputs(tmp_path, False)
        samples = [{m: s[m] for m in model.modalities} for s in samples]
        expected = decode(head, torch_logits(model, samples, tmp_path, False), {}, classes)
        got = Bundle.open(out).predict(samples, root=tmp_path)
        for e, g in zip(expected, got, strict=True):
            assert g["prediction"] == e["prediction"] if head != "regression" else abs(g["prediction"] - e["prediction"]) <= TOL
            if "probabilities" in e:
                assert list(g["probabilities"]) == list(e["probabilities"]) or head == "multilabel"
                assert max(abs(g["probabilities"][c] - p) for c, p in e["probabilities"].items()) <= TOL


def test_token_head_tags_each_word_as_the_head_decodes(exported: dict, tmp_path: Path) -> None:
    run_dir, out, info = exported["token"]
    _, model, classes = load_run(run_dir)
    samples = [{"text": "a green wedge near the red ring", "image": "p0.png"}, {"text": "box"}]
    raw_inputs(tmp_path, True)
    batch = mm_export.torch_batch(model, samples, tmp_path, True)
    with torch.no_grad():
        logits = model(batch)
    words = [s["text"].split() for s in samples]
    first = torch.zeros(logits.shape[:2], dtype=torch.bool)
    for i, ids in enumerate(model.encoders["text"].tokenize_words(words)[1]):
        for j, w in enumerate(ids):
            first[i, j] = w is not None and (j == 0 or ids[j - 1] != w)
    expected = (model.head.decode_tags(logits, first) if hasattr(model.head, "decode_tags")
                else [row[f].tolist() for row, f in zip(logits.argmax(-1), first, strict=True)])
    got = Bundle.open(out).predict(samples, root=tmp_path)
    assert [g["tokens"] for g in got] == words
    assert [g["prediction"] for g in got] == [[classes[t] for t in row] for row in expected]
    assert info["preprocessing"]["text"]["mode"] == "words"


def test_loaded_values_and_raw_values_predict_alike(exported: dict, tmp_path: Path) -> None:
    _, out, _ = exported["classification"]
    bundle = Bundle.open(out)
    samples = raw_inputs(tmp_path, False)
    loaded = [{m: bundle.load(m, v, tmp_path) for m, v in s.items()} for s in samples]
    audio = soundfile.read(tmp_path / "a1.wav", dtype="float32")
    pairs = [{**samples[1], "audio": audio, "image": Image.open(tmp_path / "p1.png")}]
    assert bundle.predict(loaded) == bundle.predict(samples, root=tmp_path)
    assert bundle.predict(pairs, root=tmp_path) == bundle.predict(samples[1:2], root=tmp_path)


def test_bad_inputs_are_errors_naming_the_modality(exported: dict, tmp_path: Path) -> None:
    _, out, _ = exported["classification"]
    bundle = Bundle.open(out)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    with pytest.raises(InputError, match="^image: cannot be decoded as an image"):
        bundle.load("image", "broken.png", tmp_path)
    with pytest.raises(InputError, match="^audio: cannot be decoded as audio"):
        bundle.load("audio", b"RIFF....WAVEfmt nonsense")
    with pytest.raises(InputError, match="^text: expected a text"):
        bundle.load("text", 42)
    with pytest.raises(InputError, match="unknown modality 'video'"):
        bundle.load("video", "x")


def test_numpy_resampling_matches_torchaudio() -> None:
    import torchaudio.functional

    wave = np.random.default_rng(0).uniform(-1, 1, 4410).astype(np.float32)
    for orig, new in [(44100, 16000), (8000, 16000), (22050, 16000)]:
        expected = torchaudio.functional.resample(torch.from_numpy(wave), orig, new).numpy()
        got = resample(wave, orig, new)
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5


def test_the_export_is_refused_above_the_tolerance(exported: dict, tmp_path: Path) -> None:
    run_dir, out, info = exported["classification"]
    _, model, _ = load_run(run_dir)
    samples = mm_export.sample_values(model.modalities, False, tmp_path)
    assert info["check"]["max_abs_diff"] > 0  # float32 STFT in numpy vs torch: never bit-identical
    with pytest.raises(mm_export.ExportRefused, match=r"differ from PyTorch's by .* \(tolerance 1e-12\)"):
        mm_export.check(model, out, samples, tmp_path, False, 1e-12)


class BesselFusion(nn.Module):
    """A fusion through an op that neither ONNX exporter can write (torch.special.bessel_j0)."""

    def __init__(self, in_dims: dict[str, int]):
        super().__init__()
        self.out_dim = sum(in_dims.values())

    def forward(self, outputs: dict, present: dict) -> torch.Tensor:
        return torch.special.bessel_j0(torch.cat([outputs[m].pooled for m in sorted(outputs)], -1))


def test_a_fusion_that_cannot_be_exported_is_refused_by_name(exported: dict, tmp_path: Path) -> None:
    run_dir = exported["classification"][0]
    _, model, classes = load_run(run_dir)
    model.encoders = nn.ModuleDict({"image": model.encoders["image"]})  # one modality: a quicker failure
    model.missing = nn.ParameterDict({"image": model.missing["image"]})
    model.fusion = BesselFusion({m: e.out_dim for m, e in model.encoders.items()})
    model.head.linear = nn.Linear(model.fusion.out_dim, 3)
    with pytest.raises(mm_export.ExportRefused, match=r"cannot export the fusion \(BesselFusion\)"):
        mm_export.export_loaded(model, classes, tmp_path / "out", model_id="bessel@0", run_info={})
    assert not (tmp_path / "out").exists()


def test_script_exports_torchscript_and_refuses_bad_input(exported: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    run_dir = exported["regression"][0]
    assert export_model.main([str(run_dir), "--out", str(tmp_path / "ts"), "--format", "torchscript"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["format"] == "torchscript" and summary["exporter"] == "torch.jit.trace"
    assert summary["max_abs_diff"] <= TOL
    assert export_model.main([str(run_dir), "--out", str(tmp_path / "ts")]) == 2  # exists, not empty
    assert "exists and is not empty" in capsys.readouterr().err
    assert export_model.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
