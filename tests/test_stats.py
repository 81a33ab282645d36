"""mm.analysis.stats: ECE, temperature scaling, bootstrap intervals, paired tests; the end-of-run reports and
scripts/compare.py on real tiny runs; the grid table's significance mark."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from scipy.special import softmax

from mm.analysis import stats
from mm.config import load_config
from mm.experiments import summaries as grid_reports
from mm.experiments.spec import Grid
from mm.heads import ClassificationHead, MultiLabelHead, RegressionHead, TokenHead
from mm.wandb_offline import read_offline_history, read_records

ROOT = Path(__file__).resolve().parents[1]
SMALL = [  # tests/test_train.py's tiny synthetic settings
    "data.synthetic.n_train=640", "data.synthetic.n_val=160", "data.synthetic.n_test=160",
    "train.batch_size=32", "wandb.mode=disabled", "encoders.image.source=tiny-vit",
]


# ---------------------------------------------------------------- calibration


def two_class(confidence: float, predicted: int) -> list[float]:
    return [confidence, 1 - confidence] if predicted == 0 else [1 - confidence, confidence]


def test_ece_of_constructed_predictions():
    # 4 predictions at confidence 0.9 (3 right) and 6 at 0.65 (4 right).
    probs = np.array([two_class(0.9, 0)] * 4 + [two_class(0.65, 1)] * 6)
    labels = np.array([0, 0, 0, 1] + [1, 1, 1, 1, 0, 0])
    diagram = stats.reliability(probs, labels)
    # 15 bins of width 1/15: 0.9 falls in bin 13 = (13/15, 14/15], 0.65 in bin 9 = (9/15, 10/15]
    assert np.flatnonzero(diagram.count).tolist() == [9, 13] and diagram.count[[9, 13]].tolist() == [6, 4]
    assert diagram.accuracy[13] == 0.75 and diagram.accuracy[9] == pytest.approx(4 / 6)
    assert diagram.confidence[13] == pytest.approx(0.9) and math.isnan(diagram.accuracy[0])
    # ECE = 4/10 |0.75 - 0.9| + 6/10 |4/6 - 0.65| = 0.06 + 0.01
    assert stats.ece(probs, labels) == pytest.approx(0.07)
    # one bin: |overall accuracy - mean confidence| = |0.7 - (0.4 * 0.9 + 0.6 * 0.65)| = 0.05
    assert stats.ece(probs, labels, bins=1) == pytest.approx(0.05)
    assert stats.ece(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1])) == 0.0  # sure and right: calibrated


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    calibrated = 2.0 * rng.normal(size=(20_000, 5))  # labels drawn from softmax(calibrated): calibrated by construction
    labels = (rng.random(20_000)[:, None] > np.cumsum(softmax(calibrated, axis=1), axis=1)).sum(1)
    logits = calibrated / 3  # underconfident: T = 1/3 undoes it
    assert stats.fit_temperature(logits, labels) == pytest.approx(1 / 3, rel=0.05)
    before, after = stats.calibration(logits, labels), stats.calibration(logits, labels, 1 / 3)
    assert after["nll"] < before["nll"] and after["ece"] < 0.02 < before["ece"]
    assert after["accuracy"] == before["accuracy"]  # scaling keeps every argmax
    assert stats.nll(np.zeros((2, 4)), np.array([0, 3])) == pytest.approx(math.log(4))


# ---------------------------------------------------------------- intervals and tests


def test_bootstrap_intervals_cover_the_true_value_at_about_the_nominal_rate():
    rng = np.random.default_rng(1)
    covered = [stats.bootstrap_ci(rng.random(200) < 0.7, seed=i) for i in range(200)]
    rate = np.mean([i.low <= 0.7 <= i.high for i in covered])
    assert 0.90 <= rate <= 0.99, rate
    again = stats.bootstrap_ci(np.arange(10.0), seed=3)
    assert again == stats.bootstrap_ci(np.arange(10.0), seed=3) and again.value == 4.5  # seeded
    assert again.low < 4.5 < again.high


def test_seed_interval_is_the_student_t_interval():
    interval = stats.seed_interval([0.8, 0.9])
    half = 12.706204736174698 * 0.0707106781186548 / math.sqrt(2)  # t_{0.975, 1} s / sqrt(n)
    assert interval.value == pytest.approx(0.85) and interval.high - 0.85 == pytest.approx(half)
    assert interval.format() == f"0.8500 [{0.85 - half:.4f}, {0.85 + half:.4f}]"
    one = stats.seed_interval([0.8])
    assert math.isnan(one.low) and one.format() == "0.8000"


def test_mcnemar_on_a_hand_computed_table():
    # 8 examples only A gets right, 2 only B, 5 both, 1 neither: p = 2 P(X <= 2), X ~ Bin(10, 1/2)
    a = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0])
    b = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0])
    test = stats.mcnemar(a, b)
    assert (test.a_only, test.b_only) == (8, 2) and test.p == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert stats.mcnemar(a, a).p == 1.0


def test_p_values_at_the_bootstrap_floor_are_shown_as_bounds():
    assert stats.format_p(1 / 1001) == "<= 0.001" and stats.format_p(0.0123) == "0.012"
    assert stats.format_p(0.0123, relation=True) == "= 0.012" and stats.format_p(1 / 501, 500) == "<= 0.002"


def classification_predictions(seed: int, accuracy: float, n: int = 300) -> stats.Predictions:
    """Logits whose argmax is right on about ``accuracy`` of ``n`` fixed labels."""
    labels = np.random.default_rng(0).integers(0, 4, n)
    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(n) < accuracy, labels, (labels + rng.integers(1, 4, n)) % 4)
    logits = rng.normal(size=(n, 4)).astype(np.float32)
    logits[np.arange(n), pred] += 5
    return stats.Predictions("classification", logits, labels, ["a", "b", "c", "d"])


def test_paired_test_separates_different_sets_and_not_identical_ones():
    good, bad = classification_predictions(1, 0.9), classification_predictions(2, 0.6)
    same = stats.compare([good], [good], "accuracy")
    assert same.paired.p == 1.0 and same.paired.diff.value == 0.0 and same.mcnemar[0].p == 1.0
    apart = stats.compare([good], [bad], "accuracy")
    assert apart.paired.p < 0.01 and apart.mcnemar[0].p < 0.01
    assert apart.paired.diff.low > 0 and apart.paired.a.value == stats.decompose(good, "accuracy").value()
    assert stats.compare([good], [bad], "macro_f1").paired.p < 0.01 and not stats.compare([good], [bad], "macro_f1").mcnemar
    # cells: seeds pair up, each side's value is the mean over its seeds
    cells = stats.compare([good, classification_predictions(3, 0.9)], [bad, classification_predictions(4, 0.6)],
                          "accuracy")
    assert cells.paired.seeds == 2 and len(cells.mcnemar) == 2 and cells.paired.p < 0.01
    fewer = stats.Predictions("classification", good.outputs[:-1], good.labels[:-1], good.classes)
    with pytest.raises(ValueError, match="B run 0 differs from A run 0: 300 vs 299 test examples"):
        stats.compare([good], [fewer], "accuracy")
    relabelled = stats.Predictions("classification", good.outputs, (good.labels + 1) % 4, good.classes)
    with pytest.raises(ValueError, match=r"the same count \(300\) but different labels"):
        stats.compare([good], [relabelled], "accuracy")


def test_per_example_forms_give_the_heads_own_metrics():
    rng = np.random.default_rng(2)
    good = classification_predictions(1, 0.7)
    head = ClassificationHead(4, 4, top_k=(2,))
    expected = head.metrics([torch.from_numpy(good.outputs)], [torch.from_numpy(good.labels)])
    assert {k: stats.decompose(good, k).value() for k in expected if k != "loss"} == pytest.approx(expected)

    logits, labels = rng.normal(size=(200, 5)).astype(np.float32), (rng.random((200, 5)) < 0.4).astype(np.float32)
    labels[:, 4] = 0  # a label nobody has
    expected = MultiLabelHead(4, 5).metrics([torch.from_numpy(logits)], [torch.from_numpy(labels)])
    multi = stats.Predictions("multilabel", logits, labels, list("abcde"))
    assert {k: stats.decompose(multi, k).value() for k in ("accuracy", "micro_f1", "macro_f1")} == pytest.approx(
        {k: expected[k] for k in ("accuracy", "micro_f1", "macro_f1")})
    with pytest.raises(KeyError, match="'map' has no per-example form for the multilabel head"):
        stats.decompose(multi, "map")

    pred = rng.normal(size=100).astype(np.float32)
    true = (pred + rng.normal(size=100)).astype(np.float32)
    expected = RegressionHead(4).metrics([torch.from_numpy(pred)], [torch.from_numpy(true)])
    reg = stats.Predictions("regression", pred, true, [])
    assert {k: stats.decompose(reg, k).value() for k in expected} == pytest.approx(expected)

    tags = ["B-LOC", "B-PER", "I-PER", "O"]
    true_tags = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"], ["O"]]
    pred_tags = [["B-PER", "I-PER", "O", "O"], ["B-PER", "O"], ["B-LOC"]]
    ids = {t: i for i, t in enumerate(tags)}
    logits = torch.full((3, 4, 4), -9.0)
    labels = torch.full((3, 4), -100)
    for i, (ts, ps) in enumerate(zip(true_tags, pred_tags, strict=True)):
        for j, (t, p) in enumerate(zip(ts, ps, strict=True)):
            logits[i, j, ids[p]], labels[i, j] = 9.0, ids[t]
    expected = TokenHead(4, 4, tags).metrics([logits], [labels])
    token = stats.Predictions("token", np.array([ids[t] for s in pred_tags for t in s]),
                              np.array([ids[t] for s in true_tags for t in s]), tags, np.array([4, 2, 1]))
    assert {k: stats.decompose(token, k).value() for k in expected} == pytest.approx(expected)
    assert expected["entity_f1"] == pytest.approx(2 * 1 / (3 + 3))  # one of 3 gold and 3 predicted entities right


def test_predictions_round_trip(tmp_path: Path):
    good = classification_predictions(1, 0.7)
    back = stats.Predictions.load(good.save(tmp_path / "report" / "p.npz"))
    assert back.head == "classification" and back.classes == good.classes and back.lengths is None
    assert np.array_equal(back.outputs, good.outputs) and np.array_equal(back.labels, good.labels)


# ---------------------------------------------------------------- the grid table marks only a significant best


def test_grid_markdown_bolds_the_best_only_when_the_runner_up_differs_significantly():
    grid = Grid(path=Path("g.yaml"), name="g", base=None, overrides=[], grid={"fusion.name": ["a", "b"]}, seeds=[0, 1])

    def table(p: float) -> list[dict]:
        rows = []
        for name, mean, p_best in (("a", 0.80, math.nan), ("b", 0.90, math.nan), ("c", 0.85, p)):
            rows.append({"fusion.name": name, "n": 2, "val/accuracy": mean, "val/accuracy low": mean - 0.1,
                         "val/accuracy high": mean + 0.1, "test/accuracy": mean, "test/accuracy low": mean - 0.05,
                         "test/accuracy high": mean + 0.05, "test/accuracy p vs best": p_best})
        rows[0]["test/accuracy p vs best"] = 0.001
        return rows

    marked = grid_reports.grid_markdown(grid, table(0.01), "accuracy", "max").splitlines()
    assert "| fusion.name | n | val/accuracy | test/accuracy | p vs best |" in marked
    assert "| b | 2 | 0.9000 [0.8000, 1.0000] | **0.9000 [0.8500, 0.9500]** | best |" in marked
    assert "| c | 2 | 0.8500 [0.7500, 0.9500] | 0.8500 [0.8000, 0.9000] | 0.010 |" in marked
    assert ("**Bold**: the best test mean (fusion.name=b) is significantly better than the runner-up (fusion.name=c):"
            " p = 0.010 < 0.05.") in marked[-1]
    plain = grid_reports.grid_markdown(grid, table(0.2), "accuracy", "max")
    assert "**" not in plain.split("\n\n")[1] and "| b | 2 | 0.9000 [0.8000, 1.0000] | 0.9000 [0.8500, 0.9500] | best |" in plain
    assert ("No significant difference between the best test mean (fusion.name=b) and the runner-up (fusion.name=c):"
            " p = 0.200 >= 0.05; nothing in bold.") in plain
    lowest = grid_reports.grid_markdown(grid, table(0.01), "accuracy", "min")  # a is best when lower is better
    assert "| a | 2 | 0.8000 [0.7000, 0.9000] | **0.8000 [0.7500, 0.8500]** | best |" in lowest


# ---------------------------------------------------------------- real tiny runs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """A barely trained and a trained classification run on the same test split (the second logged offline)."""
    import mm.train as mm_train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [*SMALL, "name=short", "train.max_steps=2"])
    longer = load_config(None, [*SMALL, "name=long", "train.max_steps=40", "wandb.mode=offline"])
    opts = mm_train.RunOptions(out_dir=str(out), progress=False)
    return mm_train.train(cfg, opts), mm_train.train(longer, opts)


def test_a_classification_run_writes_its_test_reports(two_runs: tuple[dict, dict]):
    _, results = two_runs
    report = Path(results["run_dir"]) / "report"
    preds = stats.Predictions.load(report / "test_predictions.npz")
    assert preds.head == "classification" and preds.outputs.shape == (160, 16)
    assert stats.decompose(preds, "accuracy").value() == results["test"]["accuracy"]  # test split order, same logits
    ci = results["test_ci"]
    assert (ci["metric"], ci["n"], ci["resamples"], ci["level"]) == ("accuracy", 160, 1000, 0.95)
    assert ci["value"] == results["test"]["accuracy"] and ci["low"] <= ci["value"] <= ci["high"]
    assert results["test_ece"] == pytest.approx(stats.ece(softmax(preds.outputs.astype(np.float64), axis=1), preds.labels))
    assert json.loads((report / "test_reliability.json").read_text())["ece"] == results["test_ece"]
    for name in ("test_report.txt", "test_report.json", "test_confusion.png", "test_reliability.png"):
        assert (report / name).is_file(), name
    assert (report / "test_reliability.png").read_bytes()[:4] == b"\x89PNG"
    (log_file,) = (Path(results["run_dir"]) / "wandb").glob("offline-run-*/run-*.wandb")
    (row,) = [r for r in read_offline_history(Path(results["run_dir"])) if "test/class_report._type" in r]
    table = json.loads((log_file.parent / "files" / row["test/class_report.path"]).read_text())
    assert table["columns"] == ["class", "precision", "recall", "f1", "support"]
    assert len(table["data"]) == 16 + 2  # the classes, then the macro and weighted averages
    summary = {}
    for record in read_records(log_file):
        summary.update(record["summary"]["update"] if record["type"] == "summary" else {})
    assert summary["test_ece"] == pytest.approx(results["test_ece"])
    assert {k: summary[f"test_ci/{k}"] for k in ci} == pytest.approx(ci)


def test_compare_script_on_two_tiny_runs(two_runs: tuple[dict, dict]):
    short, long = (r["run_dir"] for r in two_runs)
    proc = subprocess.run([sys.executable, "scripts/compare.py", long, short, "--resamples", "500"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "accuracy on 160 test examples, 1 pair of runs; 500 paired bootstrap resamples, 95 % intervals"
    summary = json.loads(lines[-1])
    acc = [r["test"]["accuracy"] for r in two_runs]
    assert (summary["a"]["value"], summary["b"]["value"]) == (acc[1], acc[0])
    assert summary["diff"]["value"] == pytest.approx(acc[1] - acc[0])
    assert lines[1].endswith(stats.Interval(acc[1], summary["a"]["low"], summary["a"]["high"]).format())
    assert lines[3].endswith(f"paired bootstrap p <= {1 / 501:.3f}") and summary["p"] == 1 / 501  # clearly apart
    assert lines[4].startswith("McNemar: A right & B wrong ") and summary["mcnemar"][0]["p"] < 0.01
    same = subprocess.run([sys.executable, "scripts/compare.py", long, long, "--metric", "macro_f1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0 and json.loads(same.stdout.splitlines()[-1])["p"] == 1.0
    bad = subprocess.run([sys.executable, "scripts/compare.py", long, str(Path(long).parent / "nothing")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "neither a finished run folder" in bad.stderr


def test_evaluate_calibrate_fits_a_temperature_on_val(two_runs: tuple[dict, dict], capsys: pytest.CaptureFixture):
    run_dir = Path(two_runs[1]["run_dir"])
    assert evaluate.main([str(run_dir), "--calibrate", "--levels", "0", "--no-wandb"]) == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads(out[-1])["calibration"]
    assert json.loads((run_dir / "report" / "calibration.json").read_text()) == result
    assert (run_dir / "report" / "test_reliability_calibrated.png").read_bytes()[:4] == b"\x89PNG"
    before, after = result["test"]["before"], result["test"]["after"]
    assert before["accuracy"] == after["accuracy"] == two_runs[1]["test"]["accuracy"]
    assert before["ece"] == pytest.approx(two_runs[1]["test_ece"]) and result["fitted_on"] == {"split": "val", "n": 160}
    assert f"| before | {before['ece']:.4f} | {before['nll']:.4f} | {before['accuracy']:.4f} |" in out
    saved = stats.Predictions.load(run_dir / stats.PREDICTIONS)  # the same test logits as at the end of training
    assert 0.01 < result["temperature"] < 100
    assert after["nll"] == pytest.approx(stats.nll(saved.outputs, saved.labels, result["temperature"]), rel=1e-4)


def test_compare_script_pairs_grid_cells_by_seed(two_runs: tuple[dict, dict], tmp_path: Path):
    """Two cells of two seeds each, made from the same runs: A's seed 1 is B's seed 0 and vice versa."""
    import shutil

    short, long = (Path(r["run_dir"]) for r in two_runs)
    for cell, seeds in (("fusion.name=x", (long, short)), ("fusion.name=y", (short, long))):
        for seed, run in enumerate(seeds):
            shutil.copytree(run / "report", tmp_path / "runs" / f"{cell}__seed={seed}" / "report")
            shutil.copy(run / "config.yaml", tmp_path / "runs" / f"{cell}__seed={seed}" / "config.yaml")
            (tmp_path / "runs" / f"{cell}__seed={seed}" / "results.json").write_text("{}")
    proc = subprocess.run([sys.executable, "scripts/compare.py", str(tmp_path / "fusion.name=x"),
                           str(tmp_path / "runs" / "fusion.name=y")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["seeds"] == [0, 1] and len(summary["mcnemar"]) == 2
    assert summary["diff"]["value"] == 0.0 and summary["p"] == 1.0  # the same runs, in the other order, on average


def test_multilabel_run_writes_a_per_label_report(tmp_path: Path):
    import mm.train as mm_train

    cfg = load_config(None, [
        "data.task=multilabel", "head.name=multilabel", "data.modalities=[text]", "encoders.text.source=tiny-bert",
        "data.synthetic.n_train=64", "data.synthetic.n_val=16", "data.synthetic.n_test=32", "train.batch_size=16",
        "train.max_steps=2", "train.metric=micro_f1", "wandb.mode=disabled",
    ])
    results = mm_train.train(cfg, mm_train.RunOptions(out_dir=str(tmp_path), progress=False))
    report_dir = Path(results["run_dir"]) / "report"
    classes = json.loads((Path(results["run_dir"]) / "classes.json").read_text())
    report = json.loads((report_dir / "test_report.json").read_text())
    assert list(report) == [*classes, "micro avg", "macro avg", "weighted avg", "samples avg"]
    assert report["micro avg"]["f1-score"] == pytest.approx(results["test"]["micro_f1"])
    assert report["macro avg"]["f1-score"] == pytest.approx(results["test"]["macro_f1"])
    assert sum(report[c]["support"] for c in classes) == 32 * 4  # four labels per synthetic sample
    assert (report_dir / "test_report.md").read_text().splitlines()[0] == "| label | precision | recall | f1 | support |"
    assert results["test_ci"]["metric"] == "micro_f1" and results["test_ci"]["value"] == pytest.approx(
        results["test"]["micro_f1"])
    assert results["test_ece"] is None and not (report_dir / "test_reliability.png").exists()
    assert stats.Predictions.load(report_dir / "test_predictions.npz").labels.shape == (32, len(classes))
    assert evaluate.main([results["run_dir"], "--calibrate"]) == 2  # classification only
