"""Encoders: shapes, masks, loading from local hub-layout folders, trainability, audio files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mm.data.audio_io import load_audio
from mm.encoders import ENCODERS, AudioEncoder, ImageEncoder, SpectrogramEncoder, TextEncoder, build_encoder
from mm.encoders.image import channels_last
from mm.encoders.sources import minilm_path, resolve_source

# ---- explicit parameter names of the tiny backbones (as the checkpoints define them) ----

BERT_LAYER = [
    "attention.self.query.weight", "attention.self.query.bias",
    "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias",
    "output.LayerNorm.weight", "output.LayerNorm.bias",
]  # fmt: skip
BERT_PARAMS = {
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
    *(f"encoder.layer.{i}.{n}" for i in range(2) for n in BERT_LAYER),
}  # no pooler: it is dropped at load time
VIT_BLOCK = [
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
]  # fmt: skip
VIT_PARAMS = {
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "norm.weight",
    "norm.bias",
    *(f"blocks.{i}.{n}" for i in range(2) for n in VIT_BLOCK),
}  # no head: num_classes=0
W2V_CONV = {
    *(f"feature_extractor.conv_layers.{i}.conv.weight" for i in range(7)),
    *(f"feature_extractor.conv_layers.{i}.layer_norm.{n}" for i in range(7) for n in ("weight", "bias")),
}
W2V_LAYER = [
    "attention.k_proj.weight", "attention.k_proj.bias", "attention.v_proj.weight", "attention.v_proj.bias",
    "attention.q_proj.weight", "attention.q_proj.bias", "attention.out_proj.weight", "attention.out_proj.bias",
    "layer_norm.weight", "layer_norm.bias", "feed_forward.intermediate_dense.weight",
    "feed_forward.intermediate_dense.bias", "feed_forward.output_dense.weight", "feed_forward.output_dense.bias",
    "final_layer_norm.weight", "final_layer_norm.bias",
]  # fmt: skip
W2V_REST = {
    "feature_projection.layer_norm.weight", "feature_projection.layer_norm.bias",
    "feature_projection.projection.weight", "feature_projection.projection.bias",
    "encoder.pos_conv_embed.conv.bias", "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    "encoder.layer_norm.weight", "encoder.layer_norm.bias",
    *(f"encoder.layers.{i}.{n}" for i in range(2) for n in W2V_LAYER),
}  # fmt: skip


def prefixed(names: set[str]) -> set[str]:
    return {f"backbone.{n}" for n in names}


def trainable_names(enc: torch.nn.Module) -> set[str]:
    return {n for n, p in enc.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def text_enc(tiny_bert: Path) -> TextEncoder:
    return TextEncoder(str(tiny_bert))  # the folder itself: the path a downloaded checkpoint takes


@pytest.fixture(scope="module")
def image_enc(tiny_vit: Path) -> ImageEncoder:
    return ImageEncoder(str(tiny_vit))


@pytest.fixture(scope="module")
def audio_enc(tiny_wav2vec2: Path) -> AudioEncoder:
    return AudioEncoder(str(tiny_wav2vec2))


def build(modality: str, trainable: str, **kwargs) -> torch.nn.Module:
    source = {"text": "tiny-bert", "image": "tiny-vit", "audio": "tiny-wav2vec2"}[modality]
    return build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=source, trainable=trainable, **kwargs)


# ---- sources: aliases, layouts, determinism ----


@pytest.mark.parametrize(
    ("alias", "files"),
    [
        ("tiny-bert", ["config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                       "tokenizer_config.json", "vocab.txt"]),
        ("tiny-vit", ["config.json", "model.safetensors"]),
        ("tiny-cnn", ["config.json", "model.safetensors"]),
        ("tiny-wav2vec2", ["config.json", "model.safetensors", "preprocessor_config.json"]),
    ],
)  # fmt: skip
def test_tiny_backbones_are_hub_layout_folders_in_the_cache(
    alias: str, files: list[str], mm_cache: Path
) -> None:
    path = Path(resolve_source(alias))
    assert path == mm_cache / "backbones" / f"{alias}-v1"
    assert sorted(p.name for p in path.iterdir()) == files
    assert all(p.name.startswith("tiny-") for p in path.parent.iterdir())  # no temp folders left over


def test_tiny_vit_config_is_timm_hub_config(tiny_vit: Path) -> None:
    cfg = json.loads((tiny_vit / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224"
    args = cfg["model_args"]
    assert (args["img_size"], args["patch_size"], args["embed_dim"], args["depth"], args["num_heads"]) == (
        [32, 32], 8, 64, 2, 2,
    )  # fmt: skip
    pcfg = cfg["pretrained_cfg"]
    assert (pcfg["input_size"], pcfg["crop_pct"], pcfg["mean"], pcfg["std"]) == (
        [3, 32, 32],
        1.0,
        [0.5] * 3,
        [0.5] * 3,
    )


@pytest.mark.parametrize("alias", ["tiny-bert", "tiny-vit", "tiny-cnn", "tiny-wav2vec2"])
def test_tiny_backbones_are_deterministic_and_leave_the_rng_alone(
    alias: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_file(Path(resolve_source(alias)) / "model.safetensors")
    monkeypatch.setenv("MM_CACHE", str(tmp_path))
    rng = torch.get_rng_state()
    again = Path(resolve_source(alias))
    assert again.parent.parent == tmp_path
    assert torch.equal(torch.get_rng_state(), rng)
    second = load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_existing_tiny_backbone_is_reused(tiny_vit: Path) -> None:
    stamp = (tiny_vit / "model.safetensors").stat().st_mtime_ns
    assert resolve_source("tiny-vit") == str(tiny_vit)
    assert (tiny_vit / "model.safetensors").stat().st_mtime_ns == stamp


def test_other_sources_pass_through_and_minilm_is_the_package_folder() -> None:
    assert resolve_source("bert-base-uncased") == "bert-base-uncased"
    assert resolve_source("/data/ckpt") == "/data/ckpt"
    assert Path(resolve_source("minilm")) == minilm_path()
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in minilm_path().iterdir()}


def test_tiny_parameter_counts(
    text_enc: TextEncoder, image_enc: ImageEncoder, audio_enc: AudioEncoder
) -> None:
    counts = [sum(p.numel() for p in e.backbone.parameters()) for e in (text_enc, image_enc, audio_enc)]
    assert counts == [1_010_304, 113_600, 43_664]
    assert (text_enc.out_dim, image_enc.out_dim, audio_enc.out_dim) == (32, 64, 32)


@pytest.mark.parametrize(
    ("modality", "alias"), [("text", "tiny-bert"), ("image", "tiny-vit"), ("audio", "tiny-wav2vec2")]
)
def test_folder_weights_are_loaded_exactly(modality: str, alias: str) -> None:
    folder = resolve_source(alias)
    stored = load_file(Path(folder) / "model.safetensors")
    state = build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=folder).backbone.state_dict()
    extra = {
        "text": {"pooler.dense.weight", "pooler.dense.bias"},
        "image": {"head.weight", "head.bias"},
        "audio": set(),
    }
    assert set(stored) - set(state) == extra[modality]  # only the unused pooler / classifier is left out
    assert all(torch.equal(state[k], stored[k]) for k in state)


# ---- text ----


def test_text_tokens_mask_and_padding(text_enc: TextEncoder) -> None:
    batch = text_enc.tokenize(["a cat", "the quick brown fox jumps over the lazy dog"])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert batch["attention_mask"].sum(1).tolist() == [4, 11]  # [CLS] words [SEP]; padded to the longest
    out = text_enc(batch)
    assert out.tokens.shape == (2, 11, 32) and out.pooled.shape == (2, 32)
    assert torch.equal(out.mask, batch["attention_mask"].bool())
    assert torch.allclose(out.pooled[0], out.tokens[0, :4].mean(0), atol=1e-6)
    assert torch.allclose(out.pooled[1], out.tokens[1].mean(0), atol=1e-6)
    alone = text_enc(text_enc.tokenize(["a cat"]))  # padding must not leak into real tokens
    assert alone.tokens.shape == (1, 4, 32)
    assert torch.allclose(alone.tokens[0], out.tokens[0, :4], atol=1e-5)
    assert torch.allclose(alone.pooled[0], out.pooled[0], atol=1e-5)


def test_text_truncation_and_cls_pooling(tiny_bert: Path) -> None:
    enc = TextEncoder(str(tiny_bert), max_length=5, pooling="cls")
    batch = enc.tokenize(["the quick brown fox jumps over the lazy dog"])
    assert batch["input_ids"].shape == (1, 5)
    assert batch["input_ids"][0, -1].item() == enc.tokenizer.sep_token_id
    out = enc(batch)
    assert torch.equal(out.pooled, out.tokens[:, 0])


def test_minilm_gives_the_sentence_transformers_embedding() -> None:
    enc = TextEncoder("minilm")
    out = enc(enc.tokenize(["a kitten", "a cat", "a truck"]))
    assert enc.out_dim == 384 and out.pooled.shape == (3, 384)
    unit = torch.nn.functional.normalize(out.pooled, dim=-1)
    sims = unit @ unit.T
    # Reference: sentence_transformers.SentenceTransformer(minilm_path()).encode(...) (identical output).
    assert sims[0, 1].item() == pytest.approx(0.76628, abs=1e-4)  # kitten ~ cat
    assert sims[0, 2].item() == pytest.approx(0.23102, abs=1e-4)  # kitten ~ truck
    assert sims[1, 2].item() == pytest.approx(0.32291, abs=1e-4)
    assert out.pooled[0, :4].tolist() == pytest.approx([0.016467, 0.105294, -0.132941, 0.206845], abs=1e-5)


# ---- image ----


def test_image_tokens_pooled_and_transform(image_enc: ImageEncoder) -> None:
    picture = Image.new("RGB", (32, 32), (255, 0, 51))
    x = image_enc.transform(picture)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, 5, 7], torch.tensor([1.0, -1.0, -0.6]), atol=1e-6)  # (v/255 - 0.5) / 0.5
    assert image_enc.transform(Image.new("RGB", (64, 48))).shape == (3, 32, 32)
    out = image_enc({"pixel_values": torch.randn(2, 3, 32, 32)})
    assert out.tokens.shape == (2, (32 // 8) ** 2 + 1, 64)  # 16 patches + [CLS]
    assert out.mask.shape == (2, 17) and out.mask.dtype == torch.bool and bool(out.mask.all())
    assert torch.equal(out.pooled, out.tokens[:, 0])  # token pooling: the normed [CLS]


def test_image_local_dir_prefix_loads_the_same_model(tiny_vit: Path, image_enc: ImageEncoder) -> None:
    enc = ImageEncoder(f"local-dir:{tiny_vit}")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(enc({"pixel_values": x}).pooled, image_enc({"pixel_values": x}).pooled)


@pytest.fixture(scope="module")
def cnn_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """A random timm CNN (with its 1000-class head) saved as .safetensors and .pth."""
    torch.manual_seed(1)
    state = timm.create_model("test_efficientnet").state_dict()
    folder = tmp_path_factory.mktemp("cnn")
    save_file(state, folder / "w.safetensors")
    torch.save(state, folder / "w.pth")
    return folder / "w.safetensors", folder / "w.pth", state


@pytest.mark.parametrize("which", [0, 1])
def test_image_weights_file_with_arch_loads_a_cnn(cnn_weights, which: int) -> None:
    enc = ImageEncoder(f"test_efficientnet@{cnn_weights[which]}")
    state = enc.backbone.state_dict()
    assert all(torch.equal(v, cnn_weights[2][k]) for k, v in state.items())
    assert enc.data_config["input_size"] == (3, 160, 160)
    x = torch.randn(1, 3, 160, 160)
    out = enc({"pixel_values": x})
    assert out.tokens.shape == (1, 25, 256) and out.pooled.shape == (1, 256) and out.mask.shape == (1, 25)
    feature_map = enc.backbone.forward_features(channels_last(x))  # [1, 256, 5, 5], as the encoder reads it
    assert torch.equal(out.tokens[0, 7], feature_map[0, :, 1, 2])  # token h * W + w
    assert torch.allclose(out.pooled, out.tokens.mean(1), atol=1e-6)  # average pooling


def test_image_source_errors(cnn_weights, tiny_vit: Path) -> None:
    with pytest.raises(ValueError, match="@"):
        ImageEncoder(str(cnn_weights[0]))  # a bare file: which architecture?
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        ImageEncoder("test_efficientnet@/nowhere.safetensors")
    with pytest.raises(ValueError, match="lacks"):  # ViT weights for a CNN: timm alone would load nothing
        ImageEncoder(f"test_efficientnet@{tiny_vit / 'model.safetensors'}")


# ---- audio ----


def test_audio_featurize_normalises_pads_and_crops(audio_enc: AudioEncoder, tiny_wav2vec2: Path) -> None:
    g = torch.Generator().manual_seed(0)
    waves = [3 + 2 * torch.randn(16000, generator=g), torch.randn(8000, generator=g).numpy()]
    feats = audio_enc.featurize(waves)
    assert audio_enc.sample_rate == 16000
    assert feats["input_values"].shape == (2, 16000) and feats["input_values"].dtype == torch.float32
    assert feats["attention_mask"].sum(1).tolist() == [16000, 8000]
    first, second = feats["input_values"][0], feats["input_values"][1]
    assert first.mean().item() == pytest.approx(0.0, abs=1e-4) and first.std().item() == pytest.approx(
        1.0, abs=1e-3
    )
    assert second[:8000].std().item() == pytest.approx(1.0, abs=1e-3)
    assert torch.equal(second[8000:], torch.zeros(8000))
    short = AudioEncoder(str(tiny_wav2vec2), max_s=0.25).featurize([torch.randn(16000)])
    assert short["input_values"].shape == (1, 4000)
    with pytest.raises(ValueError, match="mono"):
        audio_enc.featurize([torch.randn(2, 100)])


def test_audio_frame_mask_and_padding_invariance(audio_enc: AudioEncoder) -> None:
    g = torch.Generator().manual_seed(1)
    long, short = torch.randn(16000, generator=g), torch.randn(8000, generator=g)
    out = audio_enc(audio_enc.featurize([long, short]))
    assert out.tokens.shape == (2, 49, 32)  # 320x downsampling, 25 ms receptive field
    assert out.mask.sum(1).tolist() == [49, 24]
    lengths = audio_enc.backbone._get_feat_extract_output_lengths(torch.tensor([16000, 8000]))
    assert out.mask.sum(1).tolist() == lengths.tolist()
    assert torch.allclose(out.pooled[1], out.tokens[1, :24].mean(0), atol=1e-6)
    alone = audio_enc(audio_enc.featurize([short]))
    assert alone.tokens.shape == (1, 24, 32)
    assert torch.allclose(alone.pooled[0], out.pooled[1], atol=1e-5)
    assert torch.allclose(alone.tokens[0], out.tokens[1, :24], atol=1e-5)


@pytest.mark.parametrize("uses_mask", [True, False])
def test_audio_attention_mask_follows_the_extractor(
    uses_mask: bool, tiny_wav2vec2: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(tiny_wav2vec2, tmp_path / "w2v")
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg["return_attention_mask"] = uses_mask
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    enc = AudioEncoder(str(folder))
    seen = []
    enc.backbone.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True
    )
    out = enc(enc.featurize([torch.randn(16000), torch.randn(8000)]))
    assert seen == [["attention_mask"] if uses_mask else []]
    assert out.mask.sum(1).tolist() == [49, 24]  # the frame mask does not depend on it


def test_stereo_8k_wav_loads_as_mono_16k(tmp_path: Path) -> None:
    t = np.arange(8000) / 8000
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], 1).astype(np.float32), 8000, subtype="FLOAT")
    native = load_audio(path, 8000)  # no resampling: just the channel mean
    assert native.dtype == torch.float32 and native.shape == (8000,)
    assert torch.allclose(native, torch.from_numpy((left + right) / 2).float(), atol=1e-7)
    wave = load_audio(str(path), 16000)
    assert wave.dtype == torch.float32 and wave.shape == (16000,)
    amplitude = 2 * torch.fft.rfft(wave).abs() / 16000  # 1 Hz bins over one second
    assert amplitude.argmax().item() == 440
    assert amplitude[440].item() == pytest.approx(0.3, abs=0.01)  # mean of 0.6 and 0
    assert amplitude[1000].item() == pytest.approx(0.1, abs=0.01)  # mean of 0 and 0.2


def test_audio_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav", 16000)
    (tmp_path / "garbage.wav").write_text("not audio")
    with pytest.raises(ValueError, match="garbage.wav"):
        load_audio(tmp_path / "garbage.wav", 16000)


# ---- trainability ----

FULL = {
    "text": prefixed(BERT_PARAMS),
    "image": prefixed(VIT_PARAMS),
    "audio": prefixed(W2V_REST),  # freeze_feature_encoder=True by default
}


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_trainable_parameter_names(modality: str) -> None:
    assert trainable_names(build(modality, "frozen")) == set()
    enc = build(modality, "full")
    assert trainable_names(enc) == FULL[modality]
    assert not enc.frozen


def test_audio_full_with_feature_encoder() -> None:
    enc = build("audio", "full", freeze_feature_encoder=False)
    assert trainable_names(enc) == prefixed(W2V_REST | W2V_CONV)
    assert trainable_names(build("audio", "frozen", freeze_feature_encoder=False)) == set()


INPUTS = {
    "text": lambda enc: enc.tokenize(["a cat", "a dog on a mat"]),
    "image": lambda enc: {"pixel_values": torch.randn(2, 3, 32, 32)},
    "audio": lambda enc: enc.featurize([torch.randn(4000), torch.randn(3000)]),
}


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_frozen_stays_in_eval_without_grad(modality: str) -> None:
    enc = build(modality, "frozen")
    enc.train()
    assert enc.training and enc.frozen
    assert not any(m.training for m in enc.backbone.modules())
    out = enc(INPUTS[modality](enc))
    assert not out.tokens.requires_grad and not out.pooled.requires_grad


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_full_trains_and_every_trainable_parameter_gets_a_gradient(modality: str) -> None:
    enc = build(modality, "full")
    enc.train()
    assert enc.backbone.training
    enc(INPUTS[modality](enc)).pooled.square().sum().backward()
    named = dict(enc.named_parameters())
    assert {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0} == FULL[modality]
    enc.eval()
    assert not enc.backbone.training


# ---- registry and argument errors ----


def test_registry_and_errors_name_valid_values(tiny_bert: Path) -> None:
    assert ENCODERS == {"text": {"transformers": TextEncoder}, "image": {"timm": ImageEncoder},
                        "audio": {"spectrogram": SpectrogramEncoder, "wav2vec2": AudioEncoder}}
    with pytest.raises(ValueError, match=r"'video'.*\['audio', 'image', 'text'\]"):
        build_encoder("video", source="x")
    with pytest.raises(ValueError, match=r"unknown audio encoder 'mfcc'; valid: \['spectrogram', 'wav2vec2'\]"):
        build_encoder("audio", "mfcc", source="x")
    for modality, kinds in ENCODERS.items():
        assert all(cls.modality == modality for cls in kinds.values())
    with pytest.raises(ValueError, match=r"'partial'.*\['frozen', 'full'\]"):
        TextEncoder(str(tiny_bert), trainable="partial")
    with pytest.raises(ValueError, match=r"'max'.*\['mean', 'cls'\]"):
        TextEncoder(str(tiny_bert), pooling="max")


def test_cnn_pictures_go_in_channels_last_with_the_same_outputs_and_gradients(image_enc: ImageEncoder) -> None:
    """A CNN reads its pictures in channels-last layout (faster convolutions); the outputs and the
    gradients are those of the usual layout, and a ViT keeps its input as it is."""
    cnn = build_encoder("image", source="tiny-cnn", trainable="full")
    assert cnn.convolutional and not image_enc.convolutional
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    seen = []
    first = next(m for m in cnn.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    out = cnn({"pixel_values": x})
    hook.remove()
    assert seen == [False]  # the backbone got the channels-last copy, not x
    out.pooled.sum().backward()
    grads = {n: p.grad.clone() for n, p in cnn.named_parameters()}
    cnn.zero_grad()
    reference = cnn.backbone.forward_head(cnn.backbone.forward_features(x), pre_logits=True)  # NCHW
    reference.sum().backward()
    torch.testing.assert_close(out.pooled, reference, rtol=1e-4, atol=1e-5)
    # Weight gradients sum over batch and pixels in another order per layout (float32): 1.7e-5 seen.
    for name, p in cnn.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-3, atol=1e-4)
