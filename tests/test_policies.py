"""Trainability policies and layer grouping on the three tiny backbones: exact parameter sets."""

import pytest
import torch

from mm.encoders import build_encoder
from mm.encoders.layers import layer_groups
from mm.encoders.policies import POLICIES, apply_policy, gradual_blocks, thaw

BERT_BLOCK = [
    "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
    "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias", "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias", "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias",
]
VIT_BLOCK = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
W2V_BLOCK = [
    "attention.k_proj.weight", "attention.k_proj.bias", "attention.v_proj.weight", "attention.v_proj.bias",
    "attention.q_proj.weight", "attention.q_proj.bias", "attention.out_proj.weight", "attention.out_proj.bias",
    "layer_norm.weight", "layer_norm.bias", "feed_forward.intermediate_dense.weight",
    "feed_forward.intermediate_dense.bias", "feed_forward.output_dense.weight", "feed_forward.output_dense.bias",
    "final_layer_norm.weight", "final_layer_norm.bias",
]
BERT_EMB = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
VIT_EMB = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]

FAMILIES = {  # modality, source, block prefix, block names, final norm, LoRA targets (with in/out sizes)
    "bert": ("text", "tiny-bert", "encoder.layer", BERT_BLOCK, [],
             {"attention.self.query": (32, 32), "attention.self.value": (32, 32)}),
    "vit": ("image", "tiny-vit", "blocks", VIT_BLOCK, ["norm.weight", "norm.bias"], {"attn.qkv": (64, 192)}),
    "wav2vec2": ("audio", "tiny-wav2vec2", "encoder.layers", W2V_BLOCK,
                 ["encoder.layer_norm.weight", "encoder.layer_norm.bias"],
                 {"attention.q_proj": (32, 32), "attention.v_proj": (32, 32)}),
}


def block(prefix, i, names):
    return {f"{prefix}.{i}.{n}" for n in names}


def trainable(encoder):
    return {n for n, p in encoder.backbone.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param, FAMILIES[request.param]


def make(spec, policy, **kw):
    modality, source = spec[0], spec[1]
    enc = build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=source)
    apply_policy(enc, policy, **kw)
    return enc


def test_layer_groups(family):
    name, (modality, source, prefix, names, final, _) = family
    groups = layer_groups(build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=source).backbone)
    assert [set(b) for b in groups.blocks] == [block(prefix, 0, names), block(prefix, 1, names)]
    assert groups.final == final
    if name == "bert":
        assert groups.embeddings == BERT_EMB
    if name == "vit":
        assert groups.embeddings == VIT_EMB
    if name == "wav2vec2":
        assert groups.embeddings[0] == "feature_extractor.conv_layers.0.conv.weight"
        assert "encoder.pos_conv_embed.conv.bias" in groups.embeddings
    depth = groups.depth_from_top()
    assert depth[f"{prefix}.1.{names[0]}"] == 1 and depth[f"{prefix}.0.{names[0]}"] == 2
    assert all(depth[e] == 3 for e in groups.embeddings)


@pytest.mark.parametrize("policy", ["frozen", "linear_probe"])
def test_frozen_policies(family, policy):
    enc = make(family[1], policy)
    assert trainable(enc) == set() and enc.frozen
    enc.train()
    assert not enc.backbone.training


def test_last_n(family):
    _, (modality, source, prefix, names, final, _) = family
    spec = family[1]
    assert trainable(make(spec, "last_n", last_n=1)) == block(prefix, 1, names) | set(final)
    both = block(prefix, 0, names) | block(prefix, 1, names) | set(final)
    assert trainable(make(spec, "last_n", last_n=2)) == both
    enc = make(spec, "last_n", last_n=1)
    enc.train()
    assert enc.backbone.training and not enc.frozen


def test_gradual_thaws_from_the_top_on_schedule(family):
    _, (modality, source, prefix, names, final, _) = family
    enc = make(family[1], "gradual")
    assert trainable(enc) == set()
    assert [gradual_blocks(t, 2) for t in range(7)] == [0, 0, 1, 1, 2, 2, 3]
    assert set(thaw(enc, 1)) == block(prefix, 1, names) | set(final)
    assert set(thaw(enc, 2)) == block(prefix, 0, names)
    opened = set(thaw(enc, 3))
    all_names = {n for n, _ in enc.backbone.named_parameters()}
    if modality == "audio":  # the conv feature encoder stays frozen (freeze_feature_encoder=True)
        assert not any(n.startswith("feature_extractor.") for n in opened)
        assert trainable(enc) == {n for n in all_names if not n.startswith("feature_extractor.")}
    else:
        assert trainable(enc) == all_names


def test_lora_adds_exactly_the_adapters_and_keeps_base_weights(family):
    _, (modality, source, prefix, _, _, targets) = family
    base = {k: v.clone() for k, v in build_encoder(modality, "wav2vec2" if modality == "audio" else None, source=source).backbone.state_dict().items()}
    enc = make(family[1], "lora", lora_r=4, lora_alpha=8)
    expected = set()
    for i in (0, 1):
        for t in targets:
            expected |= {f"{prefix}.{i}.{t}.lora_A.default.weight", f"{prefix}.{i}.{t}.lora_B.default.weight"}
    assert trainable(enc) == expected
    params = dict(enc.backbone.named_parameters())
    for t, (fan_in, fan_out) in targets.items():
        assert params[f"{prefix}.0.{t}.lora_A.default.weight"].shape == (4, fan_in)
        assert params[f"{prefix}.0.{t}.lora_B.default.weight"].shape == (fan_out, 4)
    # Train the adapters for a few steps: base weights must not move, outputs must.
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.5)
    inputs = _inputs(enc, modality)
    before = enc(inputs).pooled.detach()
    for _ in range(3):
        enc(inputs).pooled.pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    state = enc.backbone.state_dict()
    for k, v in base.items():
        key = k if k in state else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(state[key], v), k
    assert not torch.allclose(enc(inputs).pooled, before)


def test_unknown_policy_lists_valid_ones():
    enc = build_encoder("image", source="tiny-vit")
    with pytest.raises(ValueError, match="linear_probe"):
        apply_policy(enc, "half")
    assert tuple(POLICIES) == ("frozen", "linear_probe", "last_n", "gradual", "lora", "prompt", "full")


def _inputs(enc, modality):
    torch.manual_seed(0)
    if modality == "text":
        return enc.tokenize(["a kitten on a mat", "three wedges"])
    if modality == "image":
        return {"pixel_values": torch.randn(2, 3, 32, 32)}
    return enc.featurize([torch.randn(8000), torch.randn(6000)])


def test_resnet_stages_are_the_blocks_of_tiny_cnn():
    enc = build_encoder("image", source="tiny-cnn")
    groups = layer_groups(enc.backbone)
    names = [n for n, _ in enc.backbone.named_parameters()]
    assert [{n.split(".")[0] for n in b} for b in groups.blocks] == [{"layer1"}, {"layer2"}, {"layer3"}, {"layer4"}]
    assert groups.final == [] and {n.split(".")[0] for n in groups.embeddings} == {"conv1", "bn1"}
    assert sorted(groups.embeddings + [n for b in groups.blocks for n in b]) == sorted(names)  # nothing lost
    apply_policy(enc, "last_n", last_n=1)
    assert trainable(enc) == {n for n in names if n.startswith("layer4.")}
    out = enc({"pixel_values": torch.randn(2, 3, 32, 32)})  # 32x32 in, one 96-d token out (stride 32)
    assert out.tokens.shape == (2, 1, 96) and out.pooled.shape == (2, 96) and enc.out_dim == 96


def test_prompt_trains_exactly_the_soft_prompt_and_keeps_the_backbone():
    torch.manual_seed(0)
    enc = build_encoder("text", source="tiny-bert")
    base = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    apply_policy(enc, "prompt", prompt_tokens=3)
    assert trainable(enc) == set()  # no backbone weight trains...
    assert {n for n, p in enc.named_parameters() if p.requires_grad} == {"prompt.vectors"}  # ...only the prompt
    assert enc.prompt.vectors.shape == (3, 32) and not enc.frozen and enc.policy == "prompt"
    table = enc.backbone.get_input_embeddings().weight
    assert all(bool((table == v).all(1).any()) for v in enc.prompt.vectors)  # initialised as vocabulary rows
    enc.train()
    assert enc.backbone.training  # as under LoRA: the backbone's dropout runs while the prompt trains

    # The forward: the prompt in front, the mask extended over it, only the input positions returned.
    enc.eval()
    inputs = _inputs(enc, "text")
    mask = inputs["attention_mask"]
    embeds = enc.backbone.get_input_embeddings()(inputs["input_ids"])
    prompt = enc.prompt.vectors.detach().expand(2, 3, 32)
    full = enc.backbone(inputs_embeds=torch.cat([prompt, embeds], 1), attention_mask=torch.cat([torch.ones(2, 3, dtype=mask.dtype), mask], 1),
                        token_type_ids=torch.zeros(2, 3 + mask.shape[1], dtype=torch.long)).last_hidden_state
    out = enc(inputs)
    assert out.tokens.shape == (2, mask.shape[1], 32) and torch.equal(out.mask, mask.bool())
    assert torch.allclose(out.tokens, full[:, 3:], atol=1e-6)
    real = mask.bool()[..., None]
    assert torch.allclose(out.pooled, (full[:, 3:] * real).sum(1) / real.sum(1), atol=1e-6)  # the prompt is not pooled

    # A few steps: the prompt and the outputs move, no backbone weight does.
    before, start = out.pooled.detach(), enc.prompt.vectors.detach().clone()
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.5)
    enc.train()
    for _ in range(3):
        enc(inputs).pooled.pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    enc.eval()
    assert all(torch.equal(v, base[k]) for k, v in enc.backbone.state_dict().items())
    assert not torch.equal(enc.prompt.vectors, start)
    assert not torch.allclose(enc(inputs).pooled, before)


def test_prompt_in_a_model_trains_prompt_fusion_norm_and_head_only():
    from mm.config import load_config
    from mm.model import build_model

    cfg = load_config(None, ["encoders.text.source=tiny-bert", "data.modalities=[text]", "encoders.text.trainable=prompt",
                             "encoders.text.prompt_tokens=4", "fusion.num_layers=0"])
    model = build_model(cfg, num_classes=3)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "encoders.text.prompt.vectors", "fusion.norms.text.weight", "fusion.norms.text.bias",
        "head.linear.weight", "head.linear.bias", "missing.text"}
    assert model.encoders["text"].prompt.vectors.shape == (4, 32)
    assert model.encoders["text"].window == 64  # 512 positions hold 4 prompt tokens and 64 pieces


def test_prompt_window_gives_up_the_prompt_positions():
    enc = build_encoder("text", source="tiny-bert", max_length=64)
    apply_policy(enc, "prompt", prompt_tokens=500)  # tiny-bert has 512 positions
    assert enc.window == 12
    long = enc.tokenize(["word " * 40])  # 42 pieces: read in windows of 12 behind the prompt
    assert enc(long).tokens.shape == (1, 42, 32)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_prompt_is_text_only(modality):
    from mm.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=f"encoders.{modality}.trainable.*text encoders only"):
        load_config(None, [f"encoders.{modality}.trainable=prompt"])
    with pytest.raises(ValueError, match="needs a text encoder"):
        apply_policy(build_encoder("image", source="tiny-vit"), "prompt")
