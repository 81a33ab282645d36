"""Every fusion in ``FUSIONS``: shapes, gradients, order invariance, absent modalities, masks, capacity."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mm.config import fusion_section
from mm.encoders.base import EncoderOutput, masked_mean
from mm.fusion import FUSIONS, KNOWN_ARGUMENTS, ConcatFusion, build_fusion, declared_arguments

B = 5
LENGTHS = {"audio": 7, "image": 5, "text": 3}  # token counts differ per modality
DIMS = [{"text": 8}, {"image": 6, "text": 8}, {"audio": 4, "image": 6, "text": 8}]
KWARGS = {"hidden_dim": 16, "num_layers": 1, "dropout": 0.0, "num_heads": 2, "rank": 3, "tensor_dim": 3,
          "late_weights": "mean"}
CASES = [("concat", {}), ("late", {}), ("late", {"late_weights": "learned"}), ("gated", {}), ("attention", {}),
         ("tensor", {}), ("lowrank", {})]
CASE_IDS = ["concat", "late", "late-learned", "gated", "attention", "tensor", "lowrank"]
TOKEN_FUSIONS = {"text_tokens"}  # [B, T_text, D] for the token head, tested with that head
# Fusions whose output must ignore an absent modality (the others see its missing embedding).
SKIP_ABSENT = {"late", "gated"}


def build(name: str, dims: dict[str, int], **overrides) -> torch.nn.Module:
    return build_fusion(name, dims, **{**KWARGS, **overrides})


def make_outputs(dims: dict[str, int], lengths: dict[str, int] = LENGTHS, seed: int = 0,
                 ragged: bool = True) -> dict[str, EncoderOutput]:
    """Random encoder outputs; with ``ragged`` every sample has its own number of real tokens (>= 1)."""
    g = torch.Generator().manual_seed(seed)
    outs = {}
    for m, d in dims.items():
        T = lengths[m]
        tokens = torch.randn(B, T, d, generator=g)
        real = torch.randint(1, T + 1, (B,), generator=g) if ragged else torch.full((B,), T)
        mask = torch.arange(T) < real[:, None]  # [B, T]
        outs[m] = EncoderOutput(tokens, mask, masked_mean(tokens, mask))
    return outs


def all_present(dims: dict[str, int]) -> dict[str, torch.Tensor]:
    return {m: torch.ones(B, dtype=torch.bool) for m in dims}


def some_absent(dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """Sample 0 has everything, 1 lacks the first modality, 2 the last, 3 has only the first, 4 nothing."""
    names = sorted(dims)
    present = {}
    for i, m in enumerate(names):
        first, last = i == 0, i == len(names) - 1
        present[m] = torch.tensor([True, not first, not last, first, False])
    return present


def fill_missing(outs: dict[str, EncoderOutput], present: dict[str, torch.Tensor],
                 seed: int = 1) -> dict[str, EncoderOutput]:
    """What ``MultimodalModel.fill_missing`` does, with a random "learned" missing embedding."""
    g = torch.Generator().manual_seed(seed)
    filled = {}
    for m, out in outs.items():
        p = present[m]
        emb = torch.randn(out.pooled.shape[-1], generator=g)
        first = torch.zeros_like(out.mask)
        first[:, 0] = True
        filled[m] = EncoderOutput(torch.where(p[:, None, None], out.tokens, emb.expand_as(out.tokens)),
                                  torch.where(p[:, None], out.mask, first),
                                  torch.where(p[:, None], out.pooled, emb))
    return filled


def test_cases_cover_the_pooled_fusions_of_the_registry():
    assert {name for name, _ in CASES} == set(FUSIONS) - TOKEN_FUSIONS


@pytest.mark.parametrize("dims", DIMS, ids=["1mod", "2mod", "3mod"])
@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_shape_and_every_parameter_gets_gradient(name, extra, dims):
    torch.manual_seed(0)
    fusion = build(name, dims, **extra)
    fused = fusion(make_outputs(dims), all_present(dims))
    assert fusion.out_dim == 16
    assert fused.shape == (B, 16)
    (fused * torch.randn(fused.shape)).sum().backward()
    names = [n for n, _ in fusion.named_parameters()]
    assert names
    for n, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    # Weights over modalities exist (and so were just checked) whenever there is more than one modality.
    if name == "late" and extra:
        assert ("weight_logits" in names) == (len(dims) > 1)
    if name == "gated":
        assert any(n.startswith("gates.") for n in names) == (len(dims) > 1)


@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_dict_order_does_not_matter(name, extra):
    dims = {"audio": 4, "image": 6, "text": 8}
    reversed_dims = dict(reversed(dims.items()))
    torch.manual_seed(0)
    fusion = build(name, dims, **extra).eval()
    torch.manual_seed(0)
    fusion_rev = build(name, reversed_dims, **extra).eval()
    for (k, a), (k_rev, b) in zip(fusion.state_dict().items(), fusion_rev.state_dict().items(), strict=True):
        assert k == k_rev and torch.equal(a, b), k

    present = some_absent(dims)
    outs = fill_missing(make_outputs(dims), present)
    order = ("text", "audio", "image")
    reordered, present_reordered = {m: outs[m] for m in order}, {m: present[m] for m in order}
    with torch.no_grad():
        expected = fusion(outs, present)
        assert torch.equal(fusion(reordered, present_reordered), expected)
        assert torch.equal(fusion_rev(reordered, present_reordered), expected)


@pytest.mark.parametrize("dims", DIMS[1:], ids=["2mod", "3mod"])
@pytest.mark.parametrize(("name", "extra"), CASES, ids=CASE_IDS)
def test_absent_modalities(name, extra, dims):
    torch.manual_seed(0)
    fusion = build(name, dims, **extra).eval()
    present = some_absent(dims)
    outs = fill_missing(make_outputs(dims), present)
    # Replace every feature of each absent modality, except for sample 4, which has none present.
    g = torch.Generator().manual_seed(2)
    changed = {}
    for m, out in outs.items():
        absent = ~present[m]
        absent[4] = False
        changed[m] = EncoderOutput(torch.where(absent[:, None, None], torch.randn(out.tokens.shape, generator=g),
                                               out.tokens),
                                   out.mask,
                                   torch.where(absent[:, None], torch.randn(out.pooled.shape, generator=g),
                                               out.pooled))
    with torch.no_grad():
        fused, fused_changed = fusion(outs, present), fusion(changed, present)
    assert fused.shape == (B, fusion.out_dim) and torch.isfinite(fused).all()
    if name in SKIP_ABSENT:
        assert torch.equal(fused_changed, fused)
    else:  # these fuse the missing embedding: samples 1-3 change, 0 and 4 (nothing changed) do not
        assert torch.equal(fused_changed[[0, 4]], fused[[0, 4]])
        for i in (1, 2, 3):
            assert not torch.equal(fused_changed[i], fused[i]), i


@pytest.mark.parametrize("learned", [False, True])
def test_late_weights_are_renormalised_over_present_modalities(learned):
    dims = {"image": 6, "text": 8}
    torch.manual_seed(0)
    fusion = build("late", dims, late_weights="learned" if learned else "mean").eval()
    if learned:
        with torch.no_grad():
            fusion.weight_logits.copy_(torch.tensor([0.0, math.log(3.0)]))  # softmax: [1/4, 3/4]
    present = {"image": torch.tensor([True, True, False, True, False]),
               "text": torch.tensor([True, False, True, True, False])}
    outs = make_outputs(dims)
    both = [0.25, 0.75] if learned else [0.5, 0.5]
    expected = torch.tensor([both, [1.0, 0.0], [0.0, 1.0], both, both])  # sample 4 has none: all count
    weights = fusion.modality_weights(outs, present)
    torch.testing.assert_close(weights, expected)
    assert torch.equal(weights == 0, expected == 0)
    with torch.no_grad():
        branches = {m: fusion.branches[m](outs[m].pooled) for m in ("image", "text")}
        manual = expected[:, :1] * branches["image"] + expected[:, 1:] * branches["text"]
        torch.testing.assert_close(fusion(outs, present), manual)


def test_gated_weights_are_a_softmax_over_present_modalities():
    dims = {"audio": 4, "image": 6, "text": 8}
    torch.manual_seed(0)
    fusion = build("gated", dims).eval()
    present = some_absent(dims)
    with torch.no_grad():
        weights = fusion.gate_weights(make_outputs(dims), present)
    mask = torch.stack([present[m] for m in ("audio", "image", "text")], 1)
    mask[4] = True  # no modality present: all count
    assert weights.shape == (B, 3, 16)  # one weight per modality and feature
    assert torch.equal(weights > 0, mask[:, :, None].expand_as(weights))
    torch.testing.assert_close(weights.sum(1), torch.ones(B, 16))
    # Sample 3 has only audio: all its weight is there, for every feature.
    assert torch.equal(weights[3], torch.tensor([1.0, 0.0, 0.0])[:, None].expand(3, 16))
    # The gates are per feature: features of one sample weight the modalities differently.
    assert (weights[0, 0] - weights[0, 0, 0]).abs().max() > 0


@pytest.mark.parametrize("training", [False, True])
def test_attention_ignores_padded_tokens(training):
    dims = {"audio": 4, "image": 6, "text": 8}
    torch.manual_seed(0)
    fusion = build("attention", dims).train(training)
    outs = make_outputs(dims, ragged=True)
    assert not all(bool(o.mask.all()) for o in outs.values())  # there is padding to test
    g = torch.Generator().manual_seed(3)
    noisy = {m: EncoderOutput(torch.where(o.mask[..., None], o.tokens, 100 * torch.randn(o.tokens.shape, generator=g)),
                              o.mask, o.pooled) for m, o in outs.items()}
    # Changing one real token (sample 0's first text token) must show, or the check above proves nothing.
    real = dict(outs)
    tokens = outs["text"].tokens.clone()
    tokens[0, 0] += 1.0
    real["text"] = EncoderOutput(tokens, outs["text"].mask, outs["text"].pooled)
    with torch.no_grad():
        fused = fusion(outs)
        assert torch.equal(fusion(noisy), fused)
        moved = fusion(real)
    assert not torch.equal(moved[0], fused[0])
    assert torch.equal(moved[1:], fused[1:])


def test_attention_handles_token_counts_that_change_per_batch():
    dims = {"audio": 4, "image": 6, "text": 8}
    torch.manual_seed(0)
    fusion = build("attention", dims).eval()
    outs = make_outputs(dims, lengths={"audio": 7, "image": 5, "text": 3})
    with torch.no_grad():
        fused = fusion(outs)
        other = fusion(make_outputs(dims, lengths={"audio": 2, "image": 9, "text": 4}, seed=1))
        # The same batch with 4 more padded positions per modality gives the same output.
        padded = {m: EncoderOutput(torch.cat([o.tokens, torch.randn(B, 4, o.tokens.shape[-1])], 1),
                                   torch.cat([o.mask, torch.zeros(B, 4, dtype=torch.bool)], 1), o.pooled)
                  for m, o in outs.items()}
        fused_padded = fusion(padded)
    assert fused.shape == other.shape == (B, 16)
    torch.testing.assert_close(fused_padded, fused)


def test_tensor_fusion_size_and_entries():
    dims = {"audio": 4, "image": 6, "text": 8}
    torch.manual_seed(0)
    fusion = build("tensor", dims, tensor_dim=2)
    assert fusion.flat_dim == (2 + 1) ** 3 == 27
    assert fusion.mlp[0].in_features == 27 and fusion.out_dim == 16
    outs = make_outputs(dims)
    with torch.no_grad():
        prod = fusion.product(outs).view(B, 3, 3, 3)  # [B, audio, image, text]
        h = {m: fusion.proj[m](outs[m].pooled) for m in dims}
    assert torch.equal(prod[:, 2, 2, 2], torch.ones(B))
    assert torch.equal(prod[:, :2, 2, 2], h["audio"])
    assert torch.equal(prod[:, 2, :2, 2], h["image"])
    assert torch.equal(prod[:, 2, 2, :2], h["text"])
    assert torch.equal(prod[:, 0, 1, 2], h["audio"][:, 0] * h["image"][:, 1])
    assert torch.equal(prod[:, 1, 0, 1], h["audio"][:, 1] * h["image"][:, 0] * h["text"][:, 1])
    raw = build("tensor", dims, tensor_dim=2, num_layers=0)
    assert raw.out_dim == 27 and raw(outs).shape == (B, 27)


@pytest.mark.parametrize(("rank", "expected"), [(1, 43), (2, 72), (5, 159)])
def test_lowrank_parameter_count(rank, expected):
    # hidden 4, image D=3, text D=2: layer norms 2*3 + 2*2 = 10, factors rank*(3+1)*4 + rank*(2+1)*4 = 28 rank,
    # rank weights rank, bias 4: 14 + 29 rank.
    fusion = build("lowrank", {"image": 3, "text": 2}, hidden_dim=4, num_layers=0, rank=rank)
    assert sum(p.numel() for p in fusion.parameters()) == expected
    assert fusion.factors["image"].shape == (rank, 4, 4) and fusion.factors["text"].shape == (rank, 3, 4)


def test_lowrank_is_the_sum_of_rank_one_products():
    dims = {"audio": 4, "image": 6, "text": 8}
    torch.manual_seed(0)
    fusion = build("lowrank", dims, rank=3, num_layers=0).eval()
    with torch.no_grad():
        fusion.bias.normal_()
        fusion.rank_weights.normal_()
        outs = make_outputs(dims)
        manual = fusion.bias.expand(B, -1).clone()
        for r in range(3):
            term = fusion.rank_weights[r] * torch.ones(B, 16)
            for m in dims:
                z = torch.cat([fusion.norms[m](outs[m].pooled), torch.ones(B, 1)], 1)
                term = term * (z @ fusion.factors[m][r])
            manual += term
        torch.testing.assert_close(fusion(outs), manual)


@pytest.mark.parametrize(("name", "expected"),
                         [("concat", 4 + 6 + 8), ("late", 16), ("gated", 16), ("tensor", 4 ** 3), ("lowrank", 16)])
def test_out_dim_without_hidden_layers(name, expected):
    dims = {"audio": 4, "image": 6, "text": 8}
    fusion = build(name, dims, num_layers=0)
    assert fusion.out_dim == expected
    assert fusion(make_outputs(dims)).shape == (B, expected)


def test_registry_and_arguments():
    with pytest.raises(ValueError) as err:
        build_fusion("nope", {"text": 4})
    assert str(err.value) == f"unknown fusion 'nope'; valid: {sorted(FUSIONS)}"
    # build_model passes every fusion section field but the name (and the model's modality_dropout);
    # each fusion gets the ones it declares.
    fields = {k: v for k, v in vars(fusion_section()).items() if k not in ("name", "modality_dropout")}
    for name in FUSIONS:
        assert build_fusion(name, {"image": 6, "text": 8}, **fields).out_dim == 256, name
        with pytest.raises(TypeError):
            build_fusion(name, {"text": 8}, hidden_dimm=16)
    with pytest.raises(ValueError, match="learned"):
        build_fusion("late", {"text": 8}, late_weights="max")
    with pytest.raises(ValueError, match="divisible"):
        build_fusion("attention", {"text": 8}, hidden_dim=10, num_heads=4)


def test_each_fusion_declares_only_the_config_fields_it_uses():
    shared = ["hidden_dim", "num_layers", "dropout"]
    assert {name: declared_arguments(cls) for name, cls in FUSIONS.items()} == {
        "concat": shared,
        "late": [*shared, "late_weights"],
        "gated": shared,
        "attention": [*shared, "num_heads"],
        "tensor": [*shared, "tensor_dim"],
        "lowrank": [*shared, "rank"],
        "text_tokens": [*shared, "num_heads"],
    }
    # Every argument a fusion declares is a FusionConfig field, so a config can set it.
    assert all(set(declared_arguments(cls)) <= KNOWN_ARGUMENTS for cls in FUSIONS.values())
    assert KNOWN_ARGUMENTS == set(vars(fusion_section())) - {"name", "modality_dropout"}  # every config field is some fusion's
    with pytest.raises(TypeError):  # the constructors themselves no longer swallow other fusions' arguments
        ConcatFusion({"text": 8}, rank=3)


def test_build_fusion_passes_only_declared_arguments(monkeypatch):
    received = {}

    class Recorder(ConcatFusion):
        """Concat fusion that records the arguments it was built with."""

        def __init__(self, in_dims: dict[str, int], hidden_dim: int = 256, num_layers: int = 1,
                     dropout: float = 0.1):
            received.update(in_dims=in_dims, hidden_dim=hidden_dim, num_layers=num_layers, dropout=dropout)
            super().__init__(in_dims, hidden_dim, num_layers, dropout)

    monkeypatch.setitem(FUSIONS, "concat", Recorder)
    config = replace(fusion_section(), name="concat", hidden_dim=12, num_layers=2, dropout=0.25, rank=7, tensor_dim=5)
    fields = {k: v for k, v in vars(config).items() if k not in ("name", "modality_dropout")}
    fusion = build_fusion("concat", {"text": 8}, **fields)
    assert isinstance(fusion, Recorder) and fusion.out_dim == 12
    assert received == {"in_dims": {"text": 8}, "hidden_dim": 12, "num_layers": 2, "dropout": 0.25}


def test_a_new_fusion_gets_exactly_its_declared_arguments(monkeypatch):
    """A toy fusion with a hyper-parameter of its own: one registry entry and its constructor."""
    calls = []

    class Toy(torch.nn.Module):
        def __init__(self, in_dims: dict[str, int], *, scale: float = 1.0, rank: int = 1):
            super().__init__()
            calls.append({"in_dims": in_dims, "scale": scale, "rank": rank})
            self.modalities, self.scale, self.out_dim = sorted(in_dims), scale * rank, sum(in_dims.values())

        def forward(self, outputs, present=None):
            return self.scale * torch.cat([outputs[m].pooled for m in self.modalities], -1)

    fields = {k: v for k, v in vars(replace(fusion_section(), rank=3)).items() if k not in ("name", "modality_dropout")}
    monkeypatch.setitem(FUSIONS, "toy", Toy)
    fusion = build_fusion("toy", {"image": 6, "text": 8}, **fields, scale=0.5)
    assert calls == [{"in_dims": {"image": 6, "text": 8}, "scale": 0.5, "rank": 3}]
    outs = make_outputs({"image": 6, "text": 8})
    assert torch.equal(fusion(outs), 1.5 * torch.cat([outs["image"].pooled, outs["text"].pooled], -1))
    build_fusion("toy", {"text": 8})  # defaults where nothing is given
    assert calls[-1] == {"in_dims": {"text": 8}, "scale": 1.0, "rank": 1}
    with pytest.raises(TypeError, match=r"\['scal'\].*'toy'"):  # neither declared nor a config field
        build_fusion("toy", {"text": 8}, scal=0.5)
    with pytest.raises(ValueError, match=r"valid: \[.*'toy'"):
        build_fusion("nope", {"text": 8})


def xor_train_accuracy(name: str, steps: int = 100) -> float:
    """Train a fusion + linear head on XOR of two bits, one per modality; return train accuracy."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    bits = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]).repeat_interleave(128, 0)  # [512, 2], balanced
    labels = bits[:, 0] ^ bits[:, 1]
    direction = torch.tensor([1.0, -1.0, 1.0, -1.0])  # zero mean, so layer norm keeps the sign
    outs = {}
    for i, m in enumerate(("image", "text")):
        pooled = (2.0 * bits[:, i : i + 1] - 1) * direction + 0.1 * torch.randn(len(bits), 4, generator=g)  # [N, 4]
        outs[m] = EncoderOutput(pooled[:, None], torch.ones(len(bits), 1, dtype=torch.bool), pooled)
    fusion = build(name, {"image": 4, "text": 4})
    head = torch.nn.Linear(fusion.out_dim, 2)
    opt = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(fusion(outs)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (head(fusion(outs)).argmax(1) == labels).float().mean().item()


def test_interactions_xor_needs_more_than_late_fusion():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead (and stall on a busy machine)
    try:
        assert xor_train_accuracy("concat") > 0.95
        assert xor_train_accuracy("attention") > 0.95
        # A sum of per-modality logits cannot represent XOR: at best it fits the noise a little.
        assert xor_train_accuracy("late") <= 0.60
    finally:
        torch.set_num_threads(threads)
