"""Shallow baseline: frozen features, logistic regression chosen on val, and the comparison script."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mm.config import load_config
from mm.data import build_splits
from mm.data.collate import Collator
from mm.encoders import build_encoder
from mm.lowdata.shallow import C_GRID, build_frozen_model, extract_splits, fit_logistic

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["data.synthetic.n_train=120", "data.synthetic.n_val=40", "data.synthetic.n_test=40"]


def direct_sklearn(features, C: float) -> dict[str, np.ndarray]:
    """Predictions of scikit-learn used by hand on the same arrays."""
    scaler = StandardScaler().fit(features["train"].x)
    lr = LogisticRegression(C=C, max_iter=1000).fit(scaler.transform(features["train"].x), features["train"].y)
    return {s: lr.predict(scaler.transform(f.x)) for s, f in features.items()}


@pytest.fixture(scope="module")
def shape_features():
    """MiniLM text + tiny ViT image features on ``shape`` (the caption names the shape: ceiling 1.0)."""
    cfg = load_config(None, ["data.task=shape", "data.modalities=[text,image]", "encoders.image.source=tiny-vit", *SIZES])
    return cfg, *extract_splits(cfg)


@pytest.fixture(scope="module")
def count_features():
    """MiniLM text features on ``count``, where the regularisation strength matters."""
    cfg = load_config(None, ["data.task=count", "data.modalities=[text]", *SIZES])
    return extract_splits(cfg)


def test_features_are_the_pooled_vectors_side_by_side(shape_features) -> None:
    cfg, features, classes = shape_features
    assert classes == ["circle", "square", "triangle"]
    assert {s: f.x.shape for s, f in features.items()} == {"train": (120, 448), "val": (40, 448), "test": (40, 448)}
    assert features["train"].dims == {"image": 64, "text": 384}  # sorted modalities: image columns first
    assert features["test"].x.dtype == np.float32 and features["test"].y.dtype == np.int64
    # The first test sample's columns are its image encoder's, then its text encoder's pooled vector.
    encoders = {m: build_encoder(m, source=getattr(cfg.encoders, m).source).eval() for m in ("image", "text")}
    splits, _ = build_splits(cfg.data, encoders, classes)
    batch = Collator(cfg.data.modalities, encoders)([splits["test"][0]])
    with torch.no_grad():
        want = torch.cat([encoders[m](batch[m]).pooled[0] for m in ("image", "text")]).numpy()
    np.testing.assert_allclose(features["test"].x[0], want, atol=1e-5)
    assert features["test"].y[0] == batch["label"][0]


def test_logistic_regression_reaches_the_ceiling_and_equals_sklearn(shape_features) -> None:
    _, features, classes = shape_features
    result = fit_logistic(features, len(classes))
    assert result.test == {"accuracy": 1.0, "macro_f1": 1.0}
    assert result.val == {"accuracy": 1.0, "macro_f1": 1.0}
    assert result.C == 0.01  # every C is perfect on val: the strongest regularisation wins the tie
    direct = direct_sklearn(features, result.C)
    for s in ("train", "val", "test"):
        assert np.array_equal(result.predictions[s], direct[s]), s
    assert result.trainable_params == 3 * 448 + 3


def test_C_is_chosen_on_validation_accuracy(count_features) -> None:
    features, classes = count_features
    result = fit_logistic(features, len(classes))
    val_acc = {C: float(np.mean(direct_sklearn(features, C)["val"] == features["val"].y)) for C in C_GRID}
    assert result.val_accuracy_by_C == val_acc
    assert len(set(val_acc.values())) > 1  # the grid matters on this task
    assert result.C == min(C for C in C_GRID if val_acc[C] == max(val_acc.values()))
    direct = direct_sklearn(features, result.C)
    assert np.array_equal(result.predictions["test"], direct["test"])
    assert result.test["accuracy"] == float(np.mean(direct["test"] == features["test"].y))


def test_every_encoder_is_forced_frozen() -> None:
    cfg = load_config(None, ["encoders.text.source=tiny-bert", "encoders.text.trainable=lora",
                             "encoders.image.trainable=full", *SIZES])
    model, classes = build_frozen_model(cfg)
    assert len(classes) == 16
    assert {m: e.policy for m, e in model.encoders.items()} == {"image": "frozen", "text": "frozen"}
    assert [n for n, p in model.encoders.named_parameters() if p.requires_grad] == []
    with pytest.raises(ValueError, match="head.name='regression'"):
        build_frozen_model(load_config(None, ["data.task=regression", "head.name=regression", "train.metric=mae"]))


def test_script_prints_one_comparison_table(tmp_path: Path, capsys) -> None:
    import shallow_baseline as script
    args = ["data.task=shape", "encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit", *SIZES, "train.max_steps=2",
            "wandb.mode=disabled", "--modalities", "text,image", "--C", "0.1", "1", "--neural", "--out", str(tmp_path)]
    assert script.main(args) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    methods = [r["method"] for r in summary["rows"]]
    assert methods == [f"logistic regression (C={summary['C']:g})", "neural linear probe",
                       "MLP head, 1 hidden layer", "MLP head, 2 hidden layers"]
    assert summary["C"] in (0.1, 1.0)
    assert summary["rows"][0]["trainable params"] == 3 * (32 + 64) + 3
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["linear_probe", "mlp1", "mlp2"]
    for row, name in zip(summary["rows"][1:], ["linear_probe", "mlp1", "mlp2"], strict=True):
        results = json.loads((tmp_path / "runs" / name / "results.json").read_text())
        assert (row["test acc"], row["trainable params"]) == (results["test"]["accuracy"], results["params"]["params/trainable"])
    table = (tmp_path / "shallow_baseline.md").read_text().splitlines()
    assert table[0] == "| method | trainable params | val acc | test acc | val macro-F1 | test macro-F1 | wall time (s) |"
    assert len(table) == 8 and table[-1].startswith("logistic regression wall time: feature extraction ")
