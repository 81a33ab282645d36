"""mm.explain: exact modality Shapley values, Captum attributions, the shallow side, and the checks
that explanations are true (known answers on trained tiny models are ``slow``)."""

from __future__ import annotations

import itertools
import json
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


def test_split_contributions_table_and_plot(tiny, tmp_path):
    from mm.explain.contributions import split_shapley, write_contributions

    model, batch = tiny
    result = split_shapley(model, [batch, batch])
    assert result["forward_rows"] == 2 * 4 * 8 and result["labels"].tolist() == [0, 1, 2, 0] * 2
    paths = write_contributions(result, ["a", "b", "c"], tmp_path)
    rows = json.loads(paths["json"].read_text())
    assert rows["exact"] is True and rows["coalitions"] == 8
    every, a = rows["rows"][0], rows["rows"][1]
    assert (every["group"], every["n"], a["group"], a["n"]) == ("all", 8, "a", 4)
    assert sum(every[f"share/{m}"] for m in ("audio", "image", "text")) == pytest.approx(1.0, abs=1e-9)
    gain = every["logodds/output"] - every["logodds/baseline"]
    assert every["share/image:text"] == pytest.approx(every["logodds/image:text"] / gain)
    phi = result["logodds"]["shapley"][result["labels"] == 0, 1].mean()
    assert a["logodds/image"] == pytest.approx(float(phi))
    assert "not sampled" in paths["md"].read_text() and paths["png"].stat().st_size > 0
    assert len(paths["samples"].read_text().splitlines()) == 1 + 8


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


# ---------------------------------------------------------------- known answers on trained tiny models
# Frozen encoders (MiniLM text, random tiny CNNs for pictures and spectrograms) with their features
# cached, so only the fusion and head train; modality dropout teaches the missing embeddings.
KNOWN = ["data.modalities=[text,image,audio]", "encoders.text.source=minilm", "encoders.image.source=tiny-cnn",
         "encoders.image.trainable=frozen", "encoders.audio.source=tiny-cnn", "encoders.audio.trainable=frozen",
         "fusion.modality_dropout=0.3", "train.epochs=15", "optim.lr=3e-3", "data.synthetic.n_train=640",
         "data.synthetic.n_val=160", "data.synthetic.n_test=160", "train.batch_size=32", "train.progress=false",
         "wandb.mode=disabled"]
SYNTHETIC_TASKS = ("color", "count", "color_animal", "match")


def known_answer_checks(run_dirs: dict[str, Path]) -> dict[str, float]:
    """Every known-answer check on the trained runs of ``SYNTHETIC_TASKS``; returns the measured
    numbers (the README quotes them) after asserting them."""
    from mm.analysis.evaluation import load_run
    from mm.data.synthetic_render import ANIMAL_WORDS
    from mm.explain.checks import rank_correlation, shape_mask
    from mm.explain.contributions import split_shapley, summarize
    from mm.prepare import prepare

    measured: dict[str, float] = {}
    jobs = {}
    for task, run_dir in run_dirs.items():
        cfg, model, classes = load_run(run_dir)
        job = prepare(cfg, classes, model, torch.device("cpu"), cache=False, augment=False)
        jobs[task] = (model, job)
        result = split_shapley(model, job.loader("test"))
        r = result["logodds"]
        assert (r["shapley"].sum(1) - (r["output"] - r["baseline"])).abs().max() < 1e-9  # efficiency, every sample
        row = summarize(result, classes)[0]
        measured |= {f"{task}/{k}": v for k, v in row.items() if k.startswith(("share/", "logodds/", "accuracy"))}
    share = {t: {k.split("/", 2)[2]: v for k, v in measured.items() if k.startswith(f"{t}/share/")} for t in SYNTHETIC_TASKS}
    assert share["color"]["image"] > 0.9, share["color"]                       # the picture decides
    assert share["count"]["audio"] + share["count"]["text"] > 0.9, share["count"]
    assert share["count"]["image"] < 0.1, share["count"]                       # the picture shows no count
    assert min(share["color_animal"]["image"], share["color_animal"]["text"]) > 0.25, share["color_animal"]
    assert share["color_animal"]["audio"] < 0.1, share["color_animal"]
    inter, phi = measured["match/logodds/image:text"], (measured["match/logodds/image"], measured["match/logodds/text"])
    assert inter > max(phi) > 0, (inter, phi)                                  # only together

    # Where the object is: the attribution mass of the colour decision falls on the drawn shape.
    model, job = jobs["color"]
    batch = next(iter(job.loader("test")))
    att = attribute(model, batch, "image", "ig", n_steps=32)
    cfg = model.encoders["image"].data_config
    mask = shape_mask(batch["image"]["pixel_values"], cfg["mean"], cfg["std"])
    measured["color/mass_inside"] = float(mass_inside(att.maps, mask).mean())
    measured["color/shape_area"] = float(mask.float().mean())
    measured["color/pointing"] = float(pointing_game(att.maps, mask).float().mean())
    assert measured["color/mass_inside"] > 1.2 * measured["color/shape_area"], measured
    occluded = attribute(model, batch, "image", "occlusion")  # coarser and surer: 8-px patches
    measured["color/occlusion_mass_inside"] = float(mass_inside(occluded.maps, mask).mean())
    measured["color/occlusion_pointing"] = float(pointing_game(occluded.maps, mask).float().mean())
    assert measured["color/occlusion_mass_inside"] > 1.8 * measured["color/shape_area"], measured
    assert measured["color/occlusion_pointing"] > 2 * measured["color/shape_area"], measured
    # Faithfulness: deleting the top-attributed pixels first lowers the probability faster than random.
    curve = deletion_curve(model, batch, att, steps=10, random_orders=3)
    measured["color/deletion_area"] = curve["area_between"]
    assert curve["area_between"] > 0.05, curve
    # Model randomisation: re-initialised fusion and head give unrelated maps.
    rand = attribute(randomized_model(model), batch, "image", "ig", n_steps=32)
    measured["color/randomised_spearman"] = float(np.mean(rank_correlation(att, rand)))
    assert measured["color/randomised_spearman"] < 0.5, measured

    # Which words: on color_animal the animal word scores highest in the caption.
    model, job = jobs["color_animal"]
    batch = next(iter(job.loader("test")))
    texts = [job.splits["test"][int(i)]["text"] for i in batch["index"]]
    att = attribute(model, batch, "text", "ig", n_steps=32, texts=texts)
    animals = {w.lower() for ws in ANIMAL_WORDS.values() for phrase in ws for w in phrase.split()}
    top = [max(ws, key=lambda t: t[1])[0].lower() for ws in att.words]
    top = [w[:-1] if w.endswith("s") and w[:-1] in animals else w for w in top]  # plurals
    measured["color_animal/top_word_is_animal"] = float(np.mean([w in animals for w in top]))
    assert measured["color_animal/top_word_is_animal"] > 0.7, list(zip(texts, top, strict=True))[:5]
    text_curve = deletion_curve(model, batch, att, steps=5, random_orders=3)
    measured["color_animal/text_deletion_area"] = text_curve["area_between"]
    assert text_curve["area_between"] > 0.02, text_curve
    return measured


@pytest.fixture(scope="module")
def known_runs(tmp_path_factory):
    import mm.train as mm_train

    out = tmp_path_factory.mktemp("known")
    return {t: Path(mm_train.train(load_config(None, [*KNOWN, f"data.task={t}", f"name={t}",
                                                     f"train.out_dir={out}"]))["run_dir"]) for t in SYNTHETIC_TASKS}


@pytest.mark.slow
def test_explanations_find_the_known_answers_of_the_synthetic_tasks(known_runs):
    print(json.dumps(known_answer_checks(known_runs)))  # the README's numbers (pytest -s)
