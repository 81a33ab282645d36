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

from mm.fewshot import (
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
from mm.shallow import Features

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
