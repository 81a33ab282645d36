"""Reloading runs and the robustness matrix."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mm.train as mm_train
from mm.analysis.evaluation import load_run, remove_modalities
from mm.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [
        "data.synthetic.n_train=192", "data.synthetic.n_val=64", "data.synthetic.n_test=64",
        "encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit", "train.max_steps=6",
        "wandb.mode=offline",
    ])
    return mm_train.train(cfg, mm_train.RunOptions(out_dir=str(out), progress=False))


def test_load_run_reproduces_the_test_metrics(run):
    cfg, model, classes = load_run(run["run_dir"])
    assert len(classes) == run["classes"] and not model.training
    with pytest.raises(FileNotFoundError, match="not a finished mm run"):
        load_run(Path(run["run_dir"]) / "nope")


def test_remove_and_noise_transforms(run):
    _, model, _ = load_run(run["run_dir"])
    image, text = model.encoders["image"], model.encoders["text"]
    batch = {"label": torch.zeros(2), "present": {"image": torch.tensor([True, True]), "text": torch.tensor([True, False])},
             "image": {"pixel_values": torch.zeros(2, 3, 4, 4)},
             "text": {"input_ids": torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]]),
                      "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}}
    out = remove_modalities(batch, ("image",))
    assert out["present"]["image"].tolist() == [False, False] and batch["present"]["image"].tolist() == [True, True]
    g = torch.Generator().manual_seed(0)
    assert text.corrupt(batch["text"], 0.0, g) is batch["text"]
    noisy = image.corrupt(batch["image"], 0.5, g)["pixel_values"]
    assert noisy.std().item() == pytest.approx(1.0, rel=0.3)  # std = 2 * strength
    assert batch["image"]["pixel_values"].eq(0).all()  # a copy: the batch is untouched
    assert set(text.tokenizer.all_special_ids) >= {0, 101, 102}  # [PAD], [CLS], [SEP] are never replaced
    ids = text.corrupt(batch["text"], 1.0, g)["input_ids"]
    assert ids[:, 0].tolist() == [101, 101] and ids[0, 3] == 102 and ids[1, 2] == 102 and ids[1, 3] == 0
    assert (ids[0, 1:3] != batch["text"]["input_ids"][0, 1:3]).any()


def test_evaluate_script_writes_matrix(run):
    run_dir = Path(run["run_dir"])
    proc = subprocess.run([sys.executable, "scripts/evaluate.py", str(run_dir), "--levels", "0", "0.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader((run_dir / "eval-test/robustness.csv").open()))
    kinds = [(r["kind"], r["modality"], r["level"]) for r in rows]
    assert kinds == [("removed", "none", ""), ("removed", "image", ""), ("removed", "text", ""),
                     ("noise", "image", "0.0"), ("noise", "image", "0.5"), ("noise", "text", "0.0"), ("noise", "text", "0.5")]
    # The clean condition is the run's own test result; zero noise equals clean.
    assert summary["metrics"]["accuracy"] == pytest.approx(run["test"]["accuracy"])
    assert summary["metrics"]["loss"] == pytest.approx(run["test"]["loss"], rel=1e-5)  # the loop's own loss
    assert float(rows[3]["accuracy"]) == float(rows[0]["accuracy"]) == float(rows[5]["accuracy"])
    assert (run_dir / "eval-test/robustness.png").stat().st_size > 0
    assert "| s=0 | s=0.5 |" in (run_dir / "eval-test/robustness.md").read_text()

    args = [sys.executable, "scripts/evaluate.py", str(run_dir), "--levels", "0", "--no-wandb", "--metric"]
    proc = subprocess.run([*args, "loss"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "### loss with modalities removed" in proc.stdout, proc.stderr[-2000:]
    proc = subprocess.run([*args, "acc"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "metric 'acc' is not in the robustness rows" in proc.stderr
    assert "'accuracy'" in proc.stderr


def test_predict_batch_matches_the_test_split_and_needs_no_labels(run, tmp_path):
    from mm.data import resolve_dataset
    from mm.data.manifest import read_manifest
    from mm.predict import predict_rows

    cfg, model, classes = load_run(run["run_dir"])
    root, label_key = resolve_dataset(cfg.data)
    rows = read_manifest(root / "test.jsonl")
    unlabeled = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
    preds = list(predict_rows(run["run_dir"], unlabeled, root, batch_size=16))
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    for p in preds:
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert p["prediction"] == max(p["probabilities"], key=p["probabilities"].get)
    accuracy = sum(p["prediction"] == r["labels"][cfg.data.task] for p, r in zip(preds, rows, strict=True)) / len(rows)
    assert accuracy == pytest.approx(run["test"]["accuracy"])


def test_predict_cli_single_example_and_file(run, tmp_path):
    from mm.data import resolve_dataset

    cfg, _, _ = load_run(run["run_dir"])
    root, _ = resolve_dataset(cfg.data)
    row = json.loads((root / "test.jsonl").read_text().splitlines()[0])
    single = subprocess.run([sys.executable, "scripts/predict.py", run["run_dir"], "--text", row["text"],
                             "--image", str(root / row["image"])], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    pred = json.loads(single.stdout.strip().splitlines()[-1])
    assert pred["prediction"] in pred["probabilities"]
    usage = subprocess.run([sys.executable, "scripts/predict.py", run["run_dir"]], cwd=ROOT, capture_output=True, text=True)
    assert usage.returncode == 2 and "either --input" in usage.stderr
