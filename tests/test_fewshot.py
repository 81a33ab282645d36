"""Few-shot: nested seeded episodes, the prototype and logistic classifiers on frozen features, episode
folders, the shots table, and the shots curve on a tiny synthetic setting."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mm.lowdata.fewshot import (
    Prototypes,
    episode,
    episode_folder,
    fit_episode,
    head_metrics,
    shots_markdown,
    summarize,
    unit_blocks,
    write_episode,
)
from mm.lowdata.shallow import Features

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0])  # class 0: 5 examples, class 1: 4, class 2: 3


def test_episodes_are_seeded_nested_and_balanced():
    # numpy's default_rng(seed) permutes each class's indices in class order; k-shot = the first k of each.
    assert [episode(LABELS, k, 0).tolist() for k in (1, 2, 3)] == [
        [1, 5, 6], [1, 5, 6, 8, 10, 11], [1, 2, 5, 6, 7, 8, 9, 10, 11]]
    assert [episode(LABELS, k, 1).tolist() for k in (1, 2, 3)] == [
        [1, 5, 11], [0, 1, 4, 5, 8, 11], [0, 1, 2, 3, 4, 5, 8, 10, 11]]
    for seed in range(5):
        sets = [set(episode(LABELS, k, seed).tolist()) for k in (1, 2, 3)]
        assert sets[0] < sets[1] < sets[2]  # nested
        for k, chosen in zip((1, 2, 3), sets, strict=True):
            assert np.bincount(LABELS[sorted(chosen)]).tolist() == [k, k, k]  # k of every class
        assert episode(LABELS, 3, seed).tolist() == episode(LABELS, 3, seed).tolist()  # seeded
    with pytest.raises(ValueError, match="class 2 has 3 training examples, fewer than k=4"):
        episode(LABELS, 4, 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        episode(LABELS, 0, 0)


def test_unit_blocks_scale_each_modality_and_keep_absent_ones_zero():
    x = np.array([[3.0, 4.0, -2.0], [0.0, 0.0, 5.0]])
    assert unit_blocks(x, {"audio": 2, "image": 1}).tolist() == [[0.6, 0.8, -1.0], [0.0, 0.0, 1.0]]


def separable() -> dict[str, Features]:
    """Two classes on the unit circle: class 0 near (1, 0), class 1 near (0, 1)."""
    dims = {"image": 2}
    train = Features(np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]]), np.array([0, 0, 1, 1]), dims)
    val = Features(np.array([[2.0, 0.0], [0.0, 3.0]]), np.array([0, 1]), dims)  # scaled to unit length first
    test = Features(np.array([[0.8, 0.6], [-0.8, 0.6], [0.0, -1.0]]), np.array([0, 1, 0]), dims)
    return {"train": train, "val": val, "test": test}


def test_prototypes_on_separable_features_are_exact():
    f = separable()
    model = Prototypes.fit(f["train"].x, f["train"].y, 2, f["train"].dims)
    assert np.allclose(model.means, [[0.8, 0.4], [-0.3, 0.9]])
    # minus squared distances: (1, 0) is 0.2 from mean 0 and 1.3^2 + 0.9^2 = 2.5 from mean 1
    assert np.allclose(model.scores(np.array([[1.0, 0.0]])), [[-0.2, -2.5]])
    assert model.params == 4
    out = fit_episode("prototype", f, np.array([0, 2]), 2, top_k=())  # one shot each: (1, 0) and (0, 1)
    assert out["val"] == {"accuracy": 1.0, "macro_f1": 1.0}
    # test: (0.8, 0.6) -> class 0; (-0.8, 0.6) -> 1; (0, -1) is 1.0^2 + 1 = 2 from (1, 0) and 4 from (0, 1) -> 0
    assert out["test"] == {"accuracy": 1.0, "macro_f1": 1.0} and out["train"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"no support example for classes \[1\]"):
        Prototypes.fit(f["train"].x[:2], f["train"].y[:2], 2, f["train"].dims)


def test_logistic_on_separable_features_and_head_metrics():
    out = fit_episode("logistic", separable(), np.arange(4), 2, top_k=())
    assert out["val"]["accuracy"] == 1.0 and out["test"]["accuracy"] == 1.0
    assert out["params"] == 2 + 1  # binary: one weight row and one intercept
    with pytest.raises(ValueError, match="valid: \\['logistic', 'prototype'\\]"):
        fit_episode("knn", separable(), np.arange(4), 2)
    # The head's own metrics: 3 of 4 right (macro-F1: class 0 P=1 R=1/2 -> 2/3, class 1 P=2/3 R=1 -> 4/5).
    scores = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 0.5], [0.0, 2.0, 1.0], [0.0, 3.0, 2.5]])
    m = head_metrics(scores, np.array([0, 1, 1, 0]), 3, top_k=(2,))
    assert m["accuracy"] == 0.75 and m["top2_accuracy"] == 0.75
    assert math.isclose(m["macro_f1"], (2 / 3 + 4 / 5 + 0) / 3)


def test_episode_folder_holds_the_episode_rows_with_absolute_media(tmp_path):
    from mm.config import DataConfig

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    rows = {s: [{"text": f"{s} {i}", "image": f"images/{s}{i}.png", "label": str(i % 2), "_where": f"x:{i}"}
                for i in range(4)] for s in ("train", "val", "test")}
    folder = episode_folder(tmp_path / "out", DataConfig(dataset=str(root)), 1, 0)
    assert folder.parts[-2:] == ("k=1", "episode=0") and folder.is_absolute()
    assert episode_folder(tmp_path / "out", DataConfig(dataset="elsewhere"), 1, 0) != folder
    write_episode(folder, root, rows, np.array([1, 2]))
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert train == [{"text": "train 1", "image": str((root / "images/train1.png").resolve()), "label": "1"},
                     {"text": "train 2", "image": str((root / "images/train2.png").resolve()), "label": "0"}]
    assert len((folder / "test.jsonl").read_text().splitlines()) == 4
    stamp = (folder / "train.jsonl").stat().st_mtime_ns
    write_episode(folder, root, rows, np.array([1, 2]))  # the same content: left as it is
    assert (folder / "train.jsonl").stat().st_mtime_ns == stamp


def test_summary_and_markdown_of_rows():
    def row(method, kind, k, seed, acc, n_train):
        return {"method": method, "kind": kind, "k": k, "seed": seed, "n_train": n_train, "params_trainable": 10,
                "train_error": 0.0, "val_error": 1 - acc, "test_error": 1 - acc, "wall_time_s": 1.0}

    rows = [row("zero_shot", "zero-shot", 0, None, 0.5, 0), row("prototype", "frozen", 1, 0, 0.6, 3),
            row("prototype", "frozen", 1, 1, 0.8, 3), row("prototype", "frozen", 5, 0, 0.9, 15),
            row("prototype", "frozen", 5, 1, 0.9, 15)]
    table = summarize(rows, "accuracy")
    assert [(g["method"], g["k"], g["n"]) for g in table] == [("zero_shot", 0, 1), ("prototype", 1, 2), ("prototype", 5, 2)]
    one = table[1]
    assert math.isclose(one["test_accuracy"], 0.7) and math.isclose(one["test_error_std"], math.sqrt(0.02))
    half = 12.706204736174698 * math.sqrt(0.02) / math.sqrt(2)  # t(0.975, 1 dof) x std / sqrt(n)
    assert math.isclose(one["test_accuracy_high"] - one["test_accuracy"], half, rel_tol=1e-9)
    assert math.isnan(table[0]["test_accuracy_low"])  # one value: no interval
    md = shots_markdown("tiny", table, "accuracy", [0, 1])
    lines = md.splitlines()
    assert lines[2] == "| method | kind | k=0 | k=1 | k=5 | trainable params | wall s |"
    assert lines[4] == "| zero_shot | zero-shot | 0.500 |  |  | 10 | 1.0 |"
    assert lines[5].startswith("| prototype | frozen |  | 0.700 [") and "| 0.900 [0.900, 0.900] |" in lines[5]
    assert "0 at k=0, 3 at k=1, 15 at k=5" in md


# ---- The shots curve on a tiny synthetic setting ----

TINY = ["data.task=shape", "data.modalities=[text]", "encoders.text.source=tiny-bert", "data.synthetic.n_train=30",
        "data.synthetic.n_val=12", "data.synthetic.n_test=12", "train.batch_size=4", "train.max_steps=2",
        "train.eval_every=2", "wandb.mode=disabled"]
SHOTS = {"kind": "shots", "overrides": TINY, "shots": [1, 2], "seeds": [0, 1], "zero_shot": True, "methods": [
    {"name": "linear_probe", "overrides": ["encoders.text.trainable=linear_probe"]},
    {"name": "prompt", "overrides": ["encoders.text.trainable=prompt", "encoders.text.prompt_tokens=2",
                                     "fusion.num_layers=0", "optim.backbone_lr=0.1"]},
]}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    from mm.experiments import curves

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("shots")
    path = root / "shots.yaml"
    path.write_text("# python scripts/learning_curve.py shots.yaml\n" + yaml.safe_dump(SHOTS, sort_keys=False))
    curve, lines = curves.load_curve(path), []
    result = curves.run_curve(curve, curves.expand(curve, root / "out"), root / "out", log=lines.append)
    return curve, root / "out", result


def test_shots_curve_writes_its_rows_table_and_plot(shots):
    curve, out, result = shots
    assert not result["failed"] and len(result["trained"]) == len(result["rows"]) == 2 * 2 * 2  # methods x k x episodes
    assert len(result["frozen_rows"]) == 1 + 2 * 2 * 2  # zero-shot; prototype and logistic x k x episodes
    rows = read_csv(out / "results.csv")
    assert [(r["method"], r["kind"]) for r in rows[:2]] == [("zero_shot", "zero-shot"), ("prototype", "frozen")]
    assert len(rows) == 1 + 2 * 2 * 2 + 2 * 2 * 2  # zero-shot, 2 frozen and 2 trained methods x 2 k x 2 episodes
    for r in rows[1:]:
        assert int(r["n_train"]) == 3 * int(r["k"])  # three shapes, k of each
    prompt = [r for r in rows if r["method"] == "prompt"]
    # prompt 2 x 32 + the fusion's layer norm 2 x 32 + head 32 x 3 + 3 + the missing-text embedding 32
    assert {int(r["params_trainable"]) for r in prompt} == {64 + 64 + 99 + 32}
    md = (out / "summary.md").read_text().splitlines()
    assert md[2] == "| method | kind | k=0 | k=1 | k=2 | trainable params | wall s |"
    assert [line.split(" | ")[0] for line in md[4:9]] == ["| zero_shot", "| prototype", "| logistic",
                                                          "| linear_probe", "| prompt"]
    assert (out / "curve.png").is_file() and (out / "runs" / "zero_shot" / "report" / "test_report.json").is_file()
    summary = read_csv(out / "summary.csv")
    assert {(s["method"], s["k"], s["n"]) for s in summary if s["method"] == "logistic"} == {
        ("logistic", "1", "2"), ("logistic", "2", "2")}


def test_shots_episodes_are_nested_folders_the_trained_runs_read(shots):
    from mm.analysis.evaluation import load_run

    curve, out, _ = shots
    for seed in (0, 1):
        one, two = (set((f / "train.jsonl").read_text().splitlines())
                    for f in sorted(out.glob(f"episodes/*/k=*/episode={seed}")))
        assert len(one) == 3 and len(two) == 6 and one < two
    run = out / "runs" / "method=prompt__k=2__seed=1"
    assert json.loads((run / "train_eval.json").read_text())["n"] == 6
    cfg, model, _ = load_run(run)
    assert cfg.data.dataset.endswith("k=2/episode=1") and cfg.data.allow_outside_paths
    # Only the prompt (and the head) trained: the backbone is the source's, bit for bit.
    from mm.encoders import build_encoder

    source = build_encoder("text", source="tiny-bert").backbone.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in model.encoders["text"].backbone.state_dict().items())
    assert model.encoders["text"].prompt.vectors.shape == (2, 32)


def test_shots_curve_file_errors(tmp_path):
    from mm.config import ConfigError
    from mm.experiments import curves

    def load(spec):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(spec))
        return curves.load_curve(path)

    with pytest.raises(ConfigError, match="unknown few-shot classifier 'knn'"):
        load({**SHOTS, "frozen": ["knn"]})
    with pytest.raises(ConfigError, match="'shots' must be a non-empty list of integers >= 1"):
        load({**SHOTS, "shots": [0, 1]})
    with pytest.raises(ConfigError, match="'data.train_fraction' is set by the curve runner"):
        load({**SHOTS, "overrides": [*TINY, "data.train_fraction=0.5"]})
    with pytest.raises(ConfigError, match="names of methods, frozen classifiers and zero_shot repeat"):
        load({**SHOTS, "frozen": [{"name": "prompt", "classifier": "prototype"}]})
    with pytest.raises(ConfigError, match="exactly one"):
        load({**SHOTS, "zero_shot": {"templates": ["no slot"]}})
    with pytest.raises(ConfigError, match="'methods' must be a list of at least 1"):
        load({**SHOTS, "methods": []})
    with pytest.raises(ConfigError, match="a shots curve has no 'fractions'"):
        load({**SHOTS, "fractions": [1.0]})


def test_plot_shots_draws_panels_with_an_overlay(shots, tmp_path):
    _, out, _ = shots
    import plot_shots as script
    table = script.read_summary(out)
    assert [(g["method"], g["k"]) for g in table][:3] == [("zero_shot", 0), ("prototype", 1), ("prototype", 2)]
    assert isinstance(table[1]["test_accuracy"], float) and math.isnan(table[0]["test_accuracy_low"])
    png = tmp_path / "shots.png"
    assert script.main(["--panel", "tiny", str(out), f"{out}: (again)", "--panel", "b", str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000
