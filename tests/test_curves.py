"""Learning curves: runs, results.csv and summary, measured params and train error, resuming, the shipped curves."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
import torch
import yaml

import mm.train as mm_train
from mm.analysis.evaluation import load_run
from mm.config import ConfigError, load_config
from mm.data import build_splits
from mm.data.collate import Collator
from mm.experiments import curves
from mm.labels import build_codec
from mm.model import build_model
from mm.run import runtime

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit", "data.task=color_animal",
    "data.modalities=[text,image]", "data.synthetic.n_train=64", "data.synthetic.n_val=32",
    "data.synthetic.n_test=32", "train.batch_size=16", "train.max_steps=3", "wandb.mode=disabled",
]
CAPACITY = {"kind": "capacity", "overrides": TINY, "seeds": [0, 1], "points": [
    {"name": "linear_probe", "overrides": ["encoders.text.trainable=linear_probe"]},
    {"name": "full", "overrides": ["encoders.text.trainable=full"]},
]}
DATA = {"kind": "data", "overrides": TINY, "seeds": [0, 1], "fractions": [0.25, 1.0], "policies": [
    {"name": "frozen", "overrides": ["encoders.text.trainable=frozen"]},
    {"name": "lora", "overrides": ["encoders.text.trainable=lora", "encoders.text.lora_r=2"]},
]}
REAL_TRAIN = mm_train.train
COLUMNS = ["run", "fraction", "seed", "n_train", "params_trainable", "params_total", "train_error", "val_error",
           "test_error", "best_step", "steps", "wall_time_s"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the runs are tiny and the test machine's two cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_curve(path: Path, spec: dict) -> Path:
    path.write_text("# python scripts/learning_curve.py tiny.yaml\n" + yaml.safe_dump(spec, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def run(path: Path, out: Path) -> dict:
    curve, lines = curves.load_curve(path), []
    result = curves.run_curve(curve, curves.expand(curve, out), out, log=lines.append)
    return {**result, "lines": lines}


@pytest.fixture(scope="module")
def capacity(tmp_path_factory):
    root = tmp_path_factory.mktemp("capacity")
    path = write_curve(root / "cap.yaml", CAPACITY)
    return path, root / "out", run(path, root / "out")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root / "out", run(write_curve(root / "data.yaml", DATA), root / "out")


def test_capacity_rows_and_measured_trainable_params(capacity):
    path, out, result = capacity
    rows = read_csv(out / "results.csv")
    names = ["point=linear_probe__seed=0", "point=linear_probe__seed=1", "point=full__seed=0", "point=full__seed=1"]
    assert [r["run"] for r in rows] == names and result["trained"] == names and result["failed"] == []
    assert list(rows[0]) == [COLUMNS[0], "point", *COLUMNS[1:]]
    assert [(r["point"], r["fraction"], r["seed"], r["n_train"]) for r in rows] == [
        ("linear_probe", "1.0", "0", "64"), ("linear_probe", "1.0", "1", "64"), ("full", "1.0", "0", "64"),
        ("full", "1.0", "1", "64")]
    classes = json.loads((out / "runs" / names[0] / "classes.json").read_text())
    for row, cell in zip(rows, curves.expand(curves.load_curve(path), out), strict=True):
        model = build_model(cell.cfg, num_classes=build_codec("classification", classes).num_outputs, classes=classes)
        assert int(row["params_trainable"]) == sum(p.numel() for p in model.parameters() if p.requires_grad)
        res = json.loads((out / "runs" / row["run"] / "results.json").read_text())
        assert float(row["val_error"]) == 1 - res["val"]["accuracy"]
        assert float(row["test_error"]) == 1 - res["test"]["accuracy"]
        assert (int(row["steps"]), cell.cfg.wandb.group, cell.cfg.wandb.job_type) == (3, "cap", "learning-curve")
    assert int(rows[0]["params_trainable"]) < int(rows[2]["params_trainable"])
    progress = r"\[curve {}/4 +\d+\.\ds\] done  {}  params={:,}  train_error={:.4f}  val_error={:.4f}  test_error={:.4f}"
    for i, (line, row) in enumerate(zip(result["lines"], rows, strict=True), 1):
        errors = [float(row[k]) for k in curves.ERRORS]
        assert re.match(progress.format(i, row["run"], int(row["params_trainable"]), *errors), line), line


def test_data_rows_use_the_fraction_of_the_training_set(data):
    out, result = data
    rows = read_csv(out / "results.csv")
    assert list(rows[0]) == [COLUMNS[0], "policy", *COLUMNS[1:]]
    assert [(r["policy"], r["fraction"], r["seed"], r["n_train"]) for r in rows] == [
        (p, f, s, n) for p in ("frozen", "lora") for f, n in (("0.25", "16"), ("1.0", "64")) for s in ("0", "1")]
    for row in rows:
        cfg = load_config(out / "runs" / row["run"] / "config.yaml")
        assert cfg.data.train_fraction == float(row["fraction"]) and cfg.seed == int(row["seed"])


@pytest.mark.parametrize("which", ["capacity", "data"])
def test_summary_is_mean_and_std_over_seeds(which, request):
    fixture = request.getfixturevalue(which)
    out, result = fixture[-2:]
    rows, group = read_csv(out / "results.csv"), "point" if which == "capacity" else "policy"
    summary = read_csv(out / "summary.csv")
    keys = list(dict.fromkeys((r[group], r["fraction"]) for r in rows))
    assert [(s[group], s["fraction"]) for s in summary] == keys and len(keys) == (2 if which == "capacity" else 4)
    for s in summary:
        found = [r for r in rows if (r[group], r["fraction"]) == (s[group], s["fraction"])]
        assert int(s["n"]) == len(found) == 2 and s["params_trainable"] == found[0]["params_trainable"]
        for col in curves.ERRORS:
            values = [float(r[col]) for r in found]
            assert float(s[col]) == statistics.fmean(values)
            assert float(s[col + "_std"]) == statistics.stdev(values)
            assert f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}" in (out / "summary.md").read_text()
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["markdown"] == (out / "summary.md").read_text()


@pytest.mark.parametrize(("run_name", "n"), [("policy=lora__fraction=0.25__seed=1", 16),
                                             ("policy=frozen__fraction=1.0__seed=0", 64)])
def test_train_error_is_the_best_checkpoint_on_the_runs_training_examples(data, run_name, n):
    out, _ = data
    row = next(r for r in read_csv(out / "results.csv") if r["run"] == run_name)
    cfg, model, classes = load_run(out / "runs" / run_name)
    splits, _ = build_splits(cfg.data, dict(model.encoders), classes)
    used = runtime.train_subset(len(splits["train"]), cfg.data.train_fraction, cfg.seed)
    batch = Collator(cfg.data.modalities, dict(model.encoders))([splits["train"][i] for i in used])
    with torch.no_grad():
        correct = (model(batch).argmax(-1) == batch["label"]).sum().item()
    assert len(used) == n and float(row["train_error"]) == 1 - correct / n
    assert json.loads((out / "runs" / run_name / "train_eval.json").read_text())["n"] == n


def test_rerun_skips_finished_runs_and_reruns_an_interrupted_one(capacity, monkeypatch):
    path, out, _ = capacity
    before = read_csv(out / "results.csv")
    state_file = out / "state.json"
    state = json.loads(state_file.read_text())
    state["cells"]["point=linear_probe__seed=1"]["status"] = "running"  # killed during this run
    state_file.write_text(json.dumps(state))
    trained = []
    monkeypatch.setattr(mm_train, "train", lambda cfg, opts: trained.append(cfg.name) or REAL_TRAIN(cfg, opts))
    result = run(path, out)
    assert trained == ["point=linear_probe__seed=1"] and result["trained"] == trained
    assert [line.split("] ")[1][:5] for line in result["lines"]] == ["skip ", "done ", "skip ", "skip "]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]  # noqa: E731
    assert strip(read_csv(out / "results.csv")) == strip(before)



def test_curve_file_errors_name_the_file_and_key(tmp_path):
    cases = [
        ({**CAPACITY, "pointz": []}, r"bad\.yaml: unknown top-level key 'pointz'"),
        ({**CAPACITY, "kind": "size"}, r"bad\.yaml: 'kind' must be one of \['capacity', 'data', 'shots'\]"),
        ({**DATA, "policies": DATA["policies"][:1]}, r"bad\.yaml: 'policies' must be a list of at least 2"),
        ({**DATA, "fractions": [0.0, 1.0]}, r"bad\.yaml: 'fractions' must be a non-empty list of numbers in \(0, 1\]"),
        ({**DATA, "overrides": [*TINY, "data.train_fraction=0.5"]}, r"'data\.train_fraction' is set by the curve"),
        ({**CAPACITY, "points": CAPACITY["points"] * 2}, r"bad\.yaml: 'points' names repeat"),
        ({**CAPACITY, "fractions": [1.0]}, r"bad\.yaml: a capacity curve has no 'fractions'"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            curves.load_curve(write_curve(tmp_path / "bad.yaml", spec))
    typo = curves.load_curve(write_curve(tmp_path / "typo.yaml", {**CAPACITY, "points": [
        {"name": "x", "overrides": ["encoders.text.trainabel=full"]}]}))
    with pytest.raises(ConfigError, match=r"typo\.yaml: run point=x__seed=0: .*encoders\.text\.trainabel"):
        curves.expand(typo, tmp_path)


def test_cli_dry_run_with_seeds(tmp_path, capsys):
    import learning_curve as script
    path = write_curve(tmp_path / "tiny.yaml", DATA)
    assert script.main([str(path), "--out", str(tmp_path / "o"), "--dry-run", "--seeds", "7", "optim.lr=0.1"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{i}/4 policy={p}__fraction={f}__seed=7" for i, (p, f) in
        enumerate([("frozen", 0.25), ("frozen", 1.0), ("lora", 0.25), ("lora", 1.0)], 1)]
    assert not (tmp_path / "o").exists()
    assert script.main([str(write_curve(tmp_path / "bad.yaml", {**DATA, "kind": "x"}))]) == 2


@pytest.mark.parametrize("name", ["capacity", "data"])
def test_shipped_curves_load_and_every_run_validates(name, tmp_path):
    path = ROOT / "configs" / "curves" / f"{name}.yaml"
    assert path.read_text().splitlines()[0] == f"# python scripts/learning_curve.py configs/curves/{name}.yaml"
    curve = curves.load_curve(path)
    cells = curves.expand(curve, tmp_path)
    assert curve.kind == name and len(curve.seeds) >= 2
    assert {c.cfg.encoders.text.source for c in cells} == {"minilm"}
    policies = {c.cfg.encoders.text.trainable for c in cells}
    assert {"linear_probe", "full"} <= policies
    if name == "capacity":
        assert {"last_n", "lora"} <= policies and len(curve.points) >= 6
    else:
        assert len(curve.fractions) >= 4 and {c.cfg.train.max_steps for c in cells} != {0}
