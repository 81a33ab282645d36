"""mm.explain: exact modality Shapley values, Captum attributions, the shallow side, and the checks
that explanations are true (known answers on trained tiny models are ``slow``)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mm.config import load_config
from mm.explain import modality_shapley, shapley_weights
from mm.explain.attributions import attribute
from mm.explain.checks import deletion_curve, mass_inside, pointing_game, randomized_model
from mm.explain.shallow import ShallowModel
from mm.model import build_model

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.modalities=[text,image,audio]", "encoders.text.source=tiny-bert", "encoders.image.source=tiny-cnn",
        "encoders.image.input_size=32", "encoders.audio.source=tiny-cnn", "wandb.mode=disabled"]
TEXTS = ["a red cat sits here", "two three-sided things", None, "dogs"]


@pytest.fixture(scope="module")
def tiny():
    """An untrained text+image+audio model (random fusion and head, non-zero missing embeddings)
    and a 4-sample batch: sample 2 has no text, sample 3 no audio."""
    torch.manual_seed(0)
    model = build_model(load_config(None, TINY), num_classes=3).eval()
    with torch.no_grad():
        for p in model.missing.values():
            p.normal_()
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, 32, 32, generator=g) for _ in range(4)]
    specs = [torch.randn(64, 40, generator=g) for _ in range(3)] + [None]
    batch = {"label": torch.tensor([0, 1, 2, 0]), "index": torch.arange(4),
             "text": model.encoders["text"].collate(TEXTS), "image": model.encoders["image"].collate(images),
             "audio": model.encoders["audio"].collate(specs),
             "present": {"text": torch.tensor([True, True, False, True]), "image": torch.ones(4, dtype=torch.bool),
                         "audio": torch.tensor([True, True, True, False])}}
    return model, batch


def brute_force(v: dict[frozenset, float], n: int) -> tuple[list[float], dict[tuple[int, int], float]]:
    """Shapley values as the mean marginal contribution over all n! orders, and the interaction
    index from its definition."""
    phi = [0.0] * n
    for order in itertools.permutations(range(n)):
        seen: frozenset = frozenset()
        for i in order:
            phi[i] += (v[seen | {i}] - v[seen]) / math.factorial(n)
            seen = seen | {i}
    inter = {}
    for i, j in itertools.combinations(range(n), 2):
        rest = [k for k in range(n) if k not in (i, j)]
        total = 0.0
        for r in range(len(rest) + 1):
            for S in itertools.combinations(rest, r):
                S = frozenset(S)
                w = math.factorial(len(S)) * math.factorial(n - len(S) - 2) / math.factorial(n - 1)
                total += w * (v[S | {i, j}] - v[S | {i}] - v[S | {j}] + v[S])
        inter[(i, j)] = total
    return phi, inter


@pytest.mark.parametrize("n", [1, 2, 3])
def test_shapley_weights_equal_the_permutation_definition(n):
    w_phi, w_int, pairs = shapley_weights(n)
    values = torch.tensor(np.random.default_rng(n).normal(size=2 ** n))
    members = [frozenset(i for i in range(n) if k >> i & 1) for k in range(2 ** n)]
    phi, inter = brute_force(dict(zip(members, values.tolist(), strict=True)), n)
    assert torch.allclose(values @ w_phi, torch.tensor(phi, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(values @ w_int, torch.tensor([inter[p] for p in pairs], dtype=torch.float64), atol=1e-12)


def test_known_games():
    # "Only together" (the match task): v = 1 for both players, else 0.
    w_phi, w_int, _ = shapley_weights(2)
    both = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert (both @ w_phi).tolist() == [0.5, 0.5] and (both @ w_int).tolist() == [1.0]
    # Redundant (the count task): either player alone gives 1.
    either = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert (either @ w_phi).tolist() == [0.5, 0.5] and (either @ w_int).tolist() == [-1.0]
    # Additive: no interaction; each player gets its own gain. Players 0, 1, 2 add 1, 2, 4.
    w_phi, w_int, _ = shapley_weights(3)
    additive = torch.tensor([float(k & 1) + 2 * (k >> 1 & 1) + 4 * (k >> 2 & 1) for k in range(8)], dtype=torch.float64)
    assert torch.allclose(additive @ w_phi, torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    assert torch.allclose(additive @ w_int, torch.zeros(3, dtype=torch.float64))


def test_modality_shapley_is_exact_efficient_and_one_batched_pass(tiny):
    model, batch = tiny
    r = modality_shapley(model, batch)
    mods = r["modalities"]
    assert mods == ["audio", "image", "text"] and r["forward_rows"] == 4 * 8
    assert r["pairs"] == [("audio", "image"), ("audio", "text"), ("image", "text")]
    # Each coalition's value equals a separate ordinary forward pass with those modalities present.
    with torch.no_grad():
        for k in range(8):
            present = {m: batch["present"][m] & bool(k >> i & 1) for i, m in enumerate(mods)}
            probs = model({**batch, "present": present}).double().softmax(-1)
            expected = probs.gather(1, r["target"][:, None])[:, 0]
            assert torch.allclose(r["prob"]["coalitions"][:, k], expected, atol=1e-6), k
        assert torch.equal(r["predicted"], model(batch).argmax(-1))
    for measure in ("prob", "logodds"):
        m = r[measure]
        # Efficiency: contributions sum to the output minus the all-missing baseline, every sample.
        assert (m["shapley"].sum(1) - (m["output"] - m["baseline"])).abs().max() < 1e-12
        assert m["output"].shape == (4,) and m["interaction"].shape == (4, 3)
    logodds = r["prob"]["output"].log() - (1 - r["prob"]["output"]).log()
    assert torch.allclose(r["logodds"]["output"], logodds, atol=1e-9)
    # A modality the sample lacks is a null player: value 0, no interaction.
    phi, inter = r["logodds"]["shapley"], r["logodds"]["interaction"]
    assert phi[2, mods.index("text")].abs() < 1e-6 and inter[2, 1:].abs().max() < 1e-6  # text pairs
    assert phi[3, mods.index("audio")].abs() < 1e-6 and inter[3, :2].abs().max() < 1e-6  # audio pairs
    assert r["present"][2].tolist() == [True, True, False]
    # An explicit target is explained instead of the prediction.
    other = (r["target"] + 1) % 3
    assert torch.equal(modality_shapley(model, batch, target=other)["target"], other)


def test_integrated_gradients_are_complete_and_words_are_whole(tiny):
    model, batch = tiny
    for modality in ("image", "audio", "text"):
        att = attribute(model, batch, modality, "ig", n_steps=64)
        assert att.delta.abs().max() < 5e-3, (modality, att.delta)  # sum of attributions = f(x) - f(baseline)
    # Text: the path in one batch, input and baseline for the delta, and once more each to read the layer.
    assert att.forward_rows == 4 * (64 + 2 + 2)
    assert [w for w, _ in att.words[1]] == ["two", "three", "-", "sided", "things"]
    assert [w for w, _ in att.words[0]] == ["a", "red", "cat", "sits", "here"]
    image = attribute(model, batch, "image", "ig", n_steps=8)
    assert image.maps.shape == (4, 32, 32) and image.raw.shape == (4, 3, 32, 32)
    assert image.forward_rows == 4 * (8 + 2)


def test_occlusion_of_a_word_is_the_probability_it_removes(tiny):
    model, batch = tiny
    att = attribute(model, batch, "text", "occlusion", texts=TEXTS)
    ids = batch["text"]["input_ids"].clone()
    cat = att.groups[0] == 2  # "cat"
    ids[0, cat] = model.encoders["text"].tokenizer.pad_token_id
    with torch.no_grad():
        p = model(batch).softmax(-1)[0, att.target[0]]
        q = model({**batch, "text": {**batch["text"], "input_ids": ids}}).softmax(-1)[0, att.target[0]]
    assert att.words[0][2][0] == "cat"
    assert att.words[0][2][1] == pytest.approx(float(p - q), abs=1e-6)
    image = attribute(model, batch, "image", "occlusion")  # 8-px patches, stride 4: 7 x 7 placements
    assert image.maps.shape == (4, 32, 32) and image.forward_rows == 4 * (1 + 49)


def test_deletion_curve_endpoints_and_randomised_model(tiny):
    model, batch = tiny
    att = attribute(model, batch, "image", "ig", n_steps=8)
    curve = deletion_curve(model, batch, att, steps=4, random_orders=2)
    with torch.no_grad():
        p = model(batch).double().softmax(-1).gather(1, att.target[:, None])[:, 0]
        blank = {**batch, "image": {"pixel_values": torch.zeros_like(batch["image"]["pixel_values"])}}
        q = model(blank).double().softmax(-1).gather(1, att.target[:, None])[:, 0]
    # Nothing deleted and everything deleted are the same inputs in both orders.
    assert curve["attributed"][0] == pytest.approx(float(p.mean()), abs=1e-6) == curve["random"][0]
    assert curve["attributed"][-1] == pytest.approx(float(q.mean()), abs=1e-6)
    assert curve["random"][-1] == pytest.approx(float(q.mean()), abs=1e-6)
    assert curve["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    rand = randomized_model(model)
    # Every weight matrix of the fusion and head is drawn anew.
    for part in ("fusion", "head"):
        new, old = getattr(rand, part).state_dict(), getattr(model, part).state_dict()
        matrices = [k for k, v in old.items() if v.dim() == 2]
        assert matrices and all(not torch.equal(new[k], old[k]) for k in matrices), part
    # A frozen encoder (text here) holds no trained layer: left as it is; fine-tuned ones (image and
    # audio, trainable=full) are re-initialised.
    for m in model.modalities:
        old, new = model.encoders[m].state_dict(), rand.encoders[m].state_dict()
        same = [torch.equal(old[k], new[k]) for k in old if old[k].dim() == 4 or old[k].dim() == 2]
        assert all(same) if m == "text" else not any(same), m


def test_mask_scores():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1], maps[0, 3, 3] = 3.0, -1.0
    maps[1, 0, 0] = 1.0
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 1:3, 1:3] = True
    assert mass_inside(maps, mask).tolist() == [0.75, 0.0]
    assert pointing_game(maps, mask).tolist() == [True, False]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_shallow_model_is_the_fitted_pipeline_and_its_shapley_values_are_its_blocks(tiny, n_classes):
    model, batch = tiny
    encoders = dict(model.encoders)
    with torch.no_grad():
        pooled = {m: encoders[m](batch[m]).pooled for m in sorted(encoders)}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, sum(p.shape[1] for p in pooled.values())))
    y = rng.integers(0, n_classes, 60)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=500)).fit(x, y)
    shallow = ShallowModel(encoders, pipeline).eval()
    full = {**batch, "present": {m: torch.ones(4, dtype=torch.bool) for m in encoders}}
    feats = torch.cat([pooled[m] for m in sorted(encoders)], 1).double().numpy()
    with torch.no_grad():
        probs = shallow(full).double().softmax(-1).numpy()
    assert np.allclose(probs, pipeline.predict_proba(feats), atol=1e-5)
    lin = shallow.contributions(full)
    assert torch.allclose(lin["score"], lin["intercept"] + sum(lin["blocks"].values()), atol=1e-9)
    assert torch.allclose(lin["score"].float(), shallow(full).gather(1, lin["target"][:, None])[:, 0], atol=1e-4)
    if n_classes == 2:
        # Binary logistic regression is linear in log-odds: a block's exact Shapley value is its
        # coefficients times its features measured from the all-missing (all-zero) features.
        r = modality_shapley(shallow, full, target=torch.ones(4, dtype=torch.long))
        w, scale = shallow.linear.weight[1].double(), shallow.scale.double()
        for i, (m, (a, z)) in enumerate(lin["columns"].items()):
            expected = (pooled[m].double() / scale[a:z] * w[a:z]).sum(1)
            assert torch.allclose(r["logodds"]["shapley"][:, i], expected, atol=1e-3)
        assert r["logodds"]["interaction"].abs().max() < 1e-3
    norms = shallow.coefficient_norms()
    assert sorted(norms) == ["audio", "image", "text"] and all(v > 0 for v in norms.values())


def test_explain_script_refuses_bad_arguments_before_loading(tmp_path):
    cases = [(["--index", "0", "--text", "hi"], "not both"), (["--image", str(tmp_path / "nope.png")], "no such file"),
             (["--steps", "0", "--text", "hi"], "--steps")]
    for extra, message in cases:
        proc = subprocess.run([sys.executable, "scripts/explain.py", str(tmp_path), *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
