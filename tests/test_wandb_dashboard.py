"""W&B as a dashboard: native charts, group and tags of grid and curve runs, model artifacts, artifact references.

There is no W&B server here: every W&B run is offline and read back from its files (``mm.wandb_offline``).
What an online run adds (the upload by ``wandb sync``, a real download) cannot run here; the download
is tested against what the offline run staged for upload, through a stand-in for ``wandb.Api``.
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import predict
import pytest
import torch
import yaml
from wandb_reader import isolate_wandb

import mm.train as mm_train
from mm.analysis.evaluation import load_run
from mm.artifacts import ArtifactRef, parse_ref, resolve_run
from mm.config import load_config, to_yaml
from mm.experiments import curves, grids
from mm.experiments.runner import cell_tags, is_done
from mm.tracking import Tracker
from mm.wandb_offline import read_offline_run

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit", "data.synthetic.n_train=64",
    "data.synthetic.n_val=32", "data.synthetic.n_test=32", "train.batch_size=16", "wandb.mode=offline",
]  # grids and curves turn the progress bar off themselves
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, like a real W&B key


@pytest.fixture(scope="module", autouse=True)
def offline_wandb(tmp_path_factory):
    """No API key, every W&B folder inside a temporary directory, one torch thread (shared cores)."""
    root = tmp_path_factory.mktemp("wandb_env")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        isolate_wandb(mp, root)
        yield
    torch.set_num_threads(threads)


def chart(run: dict, key: str) -> tuple[str, dict, str]:
    """(spec name, field settings, table key) of the custom chart logged under ``key``."""
    config = run["config"][f"_wandb.visualize.{key}"]["panel_config"]
    (query,) = config["userQuery"]["queryFields"]
    table_key = next(f["args"][0]["value"] for f in query["fields"] if f["name"] == "summaryTable")
    return config["panelDefId"], config["fieldSettings"], table_key


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ---- The tracker's charts ----


def test_line_and_bar_charts_land_in_the_offline_run(tmp_path):
    with Tracker(tmp_path, {}, mode="offline") as tracker:
        tracker.log_line("curve/error", ["x", "error", "series"], [[1, 0.5, "train"], [10, 0.25, "train"]],
                         "x", "error", stroke="series", title="errors")
        tracker.log_bar("grid/val/accuracy", ["cell", "accuracy"], [["text", 0.75], ["image", 0.5]], "cell", "accuracy")

    run = read_offline_run(tmp_path)
    assert chart(run, "curve/error") == ("wandb/line/v0", {"x": "x", "y": "error", "stroke": "series"},
                                         "curve/error_table")
    assert run["config"]["_wandb.visualize.curve/error"]["panel_config"]["stringSettings"] == {"title": "errors"}
    assert chart(run, "grid/val/accuracy") == ("wandb/bar/v0", {"label": "cell", "value": "accuracy"},
                                               "grid/val/accuracy_table")
    assert run["tables"] == {
        "curve/error_table": {"columns": ["x", "error", "series"], "data": [[1, 0.5, "train"], [10, 0.25, "train"]]},
        "grid/val/accuracy_table": {"columns": ["cell", "accuracy"], "data": [["text", 0.75], ["image", 0.5]]},
    }
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # charts are tables, not metric rows


def test_chart_fields_must_be_columns_even_with_wandb_off(tmp_path):
    with Tracker(tmp_path, {}, mode="disabled") as tracker:
        with pytest.raises(ValueError, match=r"chart 'c': \['y'\] not among the table's columns \['x', 'v'\]"):
            tracker.log_line("c", ["x", "v"], [[1, 2]], "x", "y")
        with pytest.raises(ValueError, match=r"\['s'\] not among"):
            tracker.log_line("c", ["x", "v"], [[1, 2]], "x", "v", stroke="s")
        with pytest.raises(ValueError, match=r"\['label'\] not among"):
            tracker.log_bar("c", ["x", "v"], [[1, 2]], "label", "v")
        tracker.log_model(tmp_path / "checkpoints")  # nothing to do with W&B off
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# ---- Grids and curves: group, tags, config keys, summary charts ----


GRID = {"overrides": [*TINY, "data.modalities=[text]", "train.max_steps=1", "wandb.tags=[study]"], "seeds": [0],
        "name": "dash", "grid": {"strategy": {"frozen": ["encoders.text.trainable=frozen"],
                                              "full": ["encoders.text.trainable=full"]}}}


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    path = root / "dash.yaml"
    path.write_text("# python scripts/ablate.py dash.yaml\n" + yaml.safe_dump(GRID))
    grid = grids.load_grid(path)
    return grids.run_grid(grid, grids.expand(grid, root / "out"), root / "out", log=lambda line: None), root / "out"


def test_every_grid_run_has_the_group_its_tags_and_its_overrides_as_config(grid_run):
    result, out = grid_run
    for cell, trainable in zip(result.cells, ["frozen", "full"], strict=True):
        (run,) = read_offline_run(out / "runs" / cell.name)["runs"]
        assert (run["display_name"], run["run_group"], run["job_type"]) == (cell.name, "dash", "ablation")
        assert run["tags"] == ["study", "dash", f"strategy={trainable}"]
        assert run["config"]["update"]["encoders"]["text"]["trainable"] == trainable  # filterable as a config key
    summary = read_offline_run(out / "summary")
    # The summary run: tables and image in one segment, charts in a second of the same W&B run.
    assert [(r["run_id"], r["run_group"], r["job_type"], r["tags"]) for r in summary["runs"]] == [
        (summary["runs"][0]["run_id"], "dash", "ablation-summary", ["study", "dash"])] * 2


def test_grid_summary_run_has_native_bar_charts_of_the_summary(grid_run):
    result, out = grid_run
    summary = read_offline_run(out / "summary")
    rows = {row["strategy"]: row for row in read_csv(out / "results.csv")}
    for split in ("val", "test"):
        key = f"grid/{split}/accuracy"
        assert chart(summary, key) == ("wandb/bar/v0", {"label": "cell", "value": "accuracy"}, f"{key}_table")
        # One seed: the mean is the cell's own value, the std 0.
        assert summary["tables"][f"{key}_table"] == {
            "columns": ["cell", "accuracy", "std", "n"],
            "data": [[s, float(rows[s][f"{split}/accuracy"]), 0.0, 1] for s in ("frozen", "full")]}
    assert "summary" in summary["tables"]  # reports.log_summary_run's table, in the first segment


CURVE = {"kind": "capacity", "name": "cap", "overrides": [*TINY, "data.modalities=[text]", "train.max_steps=1"],
         "seeds": [0], "points": [{"name": "linear_probe", "overrides": ["encoders.text.trainable=linear_probe"]},
                                  {"name": "full", "overrides": ["encoders.text.trainable=full"]}]}


def test_curve_runs_are_tagged_and_the_summary_run_draws_the_curve(tmp_path):
    path = tmp_path / "cap.yaml"
    path.write_text("# python scripts/learning_curve.py cap.yaml\n" + yaml.safe_dump(CURVE, sort_keys=False))
    curve = curves.load_curve(path)
    result = curves.run_curve(curve, curves.expand(curve, tmp_path / "out"), tmp_path / "out", log=lambda line: None)
    assert result["failed"] == []
    for point in ("linear_probe", "full"):
        (run,) = read_offline_run(tmp_path / "out" / "runs" / f"point={point}__seed=0")["runs"]
        assert (run["run_group"], run["job_type"], run["tags"]) == ("cap", "learning-curve", ["cap", f"point={point}"])
    summary = read_offline_run(tmp_path / "out" / "summary")
    assert {r["tags"] == ["cap"] and r["job_type"] == "learning-curve-summary" for r in summary["runs"]} == {True}
    assert chart(summary, "curve/error") == (
        "wandb/line/v0", {"x": "params_trainable", "y": "error", "stroke": "series"}, "curve/error_table")
    expected = [[int(s["params_trainable"]), float(s[f"{split}_error"]), float(s[f"{split}_error_std"]), split,
                 s["point"]] for s in read_csv(tmp_path / "out" / "summary.csv") for split in ("train", "val")]
    assert summary["tables"]["curve/error_table"] == {
        "columns": ["params_trainable", "error", "std", "series", "point"], "data": expected}


class Recorder:
    """Stands in for a Tracker: records the charts it is asked to log."""

    def __init__(self) -> None:
        self.lines: list[tuple] = []

    def log_line(self, *args, **kwargs) -> None:
        self.lines.append((*args, kwargs))


def test_data_curve_chart_has_one_train_and_one_val_line_per_policy(tmp_path):
    spec = {**CURVE, "kind": "data", "fractions": [0.5, 1.0], "policies": CURVE["points"]}
    del spec["points"]
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump(spec))
    table = [{"policy": p, "fraction": f, "train_error": 0.25 * i, "train_error_std": 0.0, "val_error": 0.125 * i,
              "val_error_std": 0.5} for i, (p, f) in enumerate([("linear_probe", 0.5), ("linear_probe", 1.0),
                                                                 ("full", 0.5), ("full", 1.0)])]
    tracker = Recorder()
    curves.log_charts(tracker, curves.load_curve(path), table)
    ((key, columns, rows, x, y, kwargs),) = tracker.lines
    assert (key, columns, x, y, kwargs["stroke"]) == (
        "curve/error", ["fraction", "error", "std", "series", "policy"], "fraction", "error", "series")
    assert rows == [[0.5, 0.0, 0.0, "linear_probe train", "linear_probe"], [0.5, 0.0, 0.5, "linear_probe val", "linear_probe"],
                    [1.0, 0.25, 0.0, "linear_probe train", "linear_probe"], [1.0, 0.125, 0.5, "linear_probe val", "linear_probe"],
                    [0.5, 0.5, 0.0, "full train", "full"], [0.5, 0.25, 0.5, "full val", "full"],
                    [1.0, 0.75, 0.0, "full train", "full"], [1.0, 0.375, 0.5, "full val", "full"]]


def test_cell_tags_are_the_spec_and_each_value_within_wandbs_limit():
    assert cell_tags("grid", {"data.modalities": ["text", "image"], "fraction": 0.25}) == [
        "grid", "data.modalities=text+image", "fraction=0.25"]
    (long,) = cell_tags("g", {"encoders.image.source": "x" * 80})[1:]
    assert len(long) == 64 and long.startswith("encoders.image.source=xxx") and long[55] == "~"


def test_a_cell_done_with_other_tags_stays_done(tmp_path):
    path = tmp_path / "dash.yaml"
    path.write_text(yaml.safe_dump(GRID))
    cell = grids.expand(grids.load_grid(path), tmp_path)[0]
    assert cell.cfg.wandb.tags == ["study", "dash", "strategy=frozen"]
    run_dir = tmp_path / "runs" / cell.name
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text("{}")
    entry = {"status": "done", "run_dir": str(run_dir), "error": None}
    for tags, lr, done in ((["study", "dash", "strategy=frozen"], None, True), ([], None, True),
                           (["other"], None, True), (["study", "dash", "strategy=frozen"], 0.5, False)):
        trained = copy.deepcopy(cell.cfg)
        trained.wandb.tags = tags
        trained.optim.lr = lr or trained.optim.lr
        (run_dir / "config.yaml").write_text(to_yaml(trained))
        assert is_done(entry, cell) is done, (tags, lr)


# ---- Model artifacts ----


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A run with wandb.log_model=true whose best (step 1: min_delta 1 lets nothing improve on it) and last (step 3) differ."""
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [*TINY, "train.max_steps=3", "train.eval_every=1", "train.min_delta=1",
                             "wandb.log_model=true"])
    results = mm_train.train(cfg, mm_train.RunOptions(out_dir=str(out), progress=False))
    return Path(results["run_dir"]), results


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_log_model_stages_best_and_last_as_model_artifacts(logged):
    run_dir, results = logged
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    assert [(run_dir / "checkpoints" / a).resolve().name for a in ("best", "last")] == ["step-00000001", "step-00000003"]
    models = [a for a in read_offline_run(run_dir)["artifacts"] if a["type"] == "model"]
    assert [(a["name"], sorted(a["aliases"]), json.loads(a["metadata"])) for a in models] == [  # W&B adds "latest"
        (f"model-{run_id}", ["best", "latest"], {"run": run_dir.name, "step": 1, "checkpoint": "step-00000001"}),
        (f"model-{run_id}", ["last", "latest"], {"run": run_dir.name, "step": 3, "checkpoint": "step-00000003"}),
    ]
    for artifact, step in zip(models, ("step-00000001", "step-00000003"), strict=True):
        entries = {e["path"]: e for e in artifact["manifest"]["contents"]}
        assert sorted(entries) == [f"checkpoints/{step}/manifest.json", f"checkpoints/{step}/model.safetensors",
                                   "classes.json", "config.yaml", "metrics.jsonl", "wandb_id.txt"]
        staged = run_dir / "artifacts" / step
        for name, entry in entries.items():
            # Logged in place from the run folder (what `wandb sync` uploads), each digest that of the file.
            assert entry["local_path"] == str(staged / name) and entry["digest"] == md5_b64(staged / name)
        weights = f"checkpoints/{step}/model.safetensors"
        assert os.path.samefile(staged / weights, run_dir / weights)  # a hard link, no second copy
        manifest = json.loads((staged / f"checkpoints/{step}/manifest.json").read_text())
        assert manifest == {"step": int(step[5:]), "files": {"model.safetensors": json.loads(
            (run_dir / f"checkpoints/{step}/manifest.json").read_text())["files"]["model.safetensors"]}}
        assert (staged / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()


def test_a_checkpoint_both_best_and_last_is_one_version_with_both_aliases(tmp_path):
    from mm.run.checkpoint import save_checkpoint

    (tmp_path / "config.yaml").write_text("seed: 0\n")
    save_checkpoint(tmp_path / "checkpoints", 2, lambda path: path.write_bytes(b"weights"), {"step": 2}, best=True)
    with Tracker(tmp_path, {}, mode="offline") as tracker:
        tracker.log_model(tmp_path / "checkpoints")
    (model,) = [a for a in read_offline_run(tmp_path)["artifacts"] if a["type"] == "model"]
    assert sorted(model["aliases"]) == ["best", "last", "latest"]
    assert sorted(e["path"] for e in model["manifest"]["contents"]) == [
        "checkpoints/step-00000002/manifest.json", "checkpoints/step-00000002/model.safetensors", "config.yaml",
        "metrics.jsonl", "wandb_id.txt"]  # no classes.json in this folder: only the files there are


def test_without_log_model_no_artifact_is_logged(tmp_path):
    cfg = load_config(None, [*TINY, "data.modalities=[text]", "train.max_steps=1"])
    run_dir = Path(mm_train.train(cfg, mm_train.RunOptions(out_dir=str(tmp_path), progress=False))["run_dir"])
    assert [a["type"] for a in read_offline_run(run_dir)["artifacts"] if a["type"] == "model"] == []
    assert not (run_dir / "artifacts").exists()


class FakeArtifact:
    """What ``wandb.Api().artifact`` would give for a model artifact of the offline run: its download
    writes the files the offline record names, as ``wandb sync`` would have uploaded them."""

    def __init__(self, record: dict, version: str) -> None:
        self.record, self.entity, self.project, self.version = record, "ent", "proj", version
        self.name = f"{record['name']}:{version}"

    def download(self, root: str) -> str:
        for entry in self.record["manifest"]["contents"]:
            target = Path(root) / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry["local_path"], target)
        return root


def fake_api(run_dir: Path, calls: list):
    """A stand-in for ``wandb.Api`` serving the run's model artifacts by alias (``best`` is v0, ``last`` v1)."""
    models = [a for a in read_offline_run(run_dir)["artifacts"] if a["type"] == "model"]

    class Api:
        def artifact(self, name: str, type: str | None = None) -> FakeArtifact:
            calls.append((name, type))
            alias = name.rpartition(":")[2]
            version = next(i for i, a in enumerate(models) if alias in a["aliases"])
            return FakeArtifact(models[version], f"v{version}")

    return Api


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resolve_run_downloads_an_artifact_that_load_run_reads(logged, tmp_path, monkeypatch):
    import wandb

    import mm.tracking

    run_dir, _ = logged
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    calls: list = []
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(mm.tracking, "check_server", lambda settings: None)  # no server here to probe
    monkeypatch.setattr(wandb, "Api", fake_api(run_dir, calls))

    for alias, version in (("best", "v0"), ("last", "v1")):
        root = resolve_run(f"artifact:ent/proj/model-{run_id}:{alias}", cache=tmp_path)
        assert root == tmp_path / "ent" / "proj" / f"model-{run_id}" / version
        assert calls[-1] == (f"ent/proj/model-{run_id}:{alias}", "model")
        cfg, model, classes = load_run(root)
        run_cfg, run_model, run_classes = load_run(run_dir, alias)
        assert (cfg, classes) == (run_cfg, run_classes)
        assert same_weights(model, run_model) and same_weights(load_run(root, "last")[1], run_model)
    # The best and last checkpoints differ, so the two downloads do too.
    assert not same_weights(load_run(run_dir, "best")[1], load_run(run_dir, "last")[1])


def test_predict_reads_an_artifact_reference_as_it_reads_the_run(logged, tmp_path, monkeypatch, capsys):
    import wandb

    import mm.tracking
    from mm.data import resolve_dataset

    run_dir, _ = logged
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("MM_ARTIFACT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mm.tracking, "check_server", lambda settings: None)
    monkeypatch.setattr(wandb, "Api", fake_api(run_dir, []))
    root, _ = resolve_dataset(load_run(run_dir)[0].data)
    outputs = []
    for ref in (str(run_dir), f"wandb-artifact://ent/proj/model-{run_id}:best"):
        assert predict.main([ref, "--input", str(root / "test.jsonl")]) == 0
        outputs.append(capsys.readouterr().out)
    assert len(outputs[0].splitlines()) == 32 and outputs[0] == outputs[1]


def test_a_downloaded_artifact_folder_passes_through_as_a_run(logged, tmp_path):
    run_dir, _ = logged
    folder = shutil.copytree(run_dir / "artifacts" / "step-00000003", tmp_path / "fetched")  # e.g. `wandb artifact get`
    assert resolve_run(folder) == folder
    assert [os.readlink(folder / "checkpoints" / a) for a in ("best", "last")] == ["step-00000003"] * 2
    assert same_weights(load_run(folder)[1], load_run(run_dir, "last")[1])


def test_evaluate_logs_the_robustness_matrix_as_native_charts(logged):
    run_dir, _ = logged
    proc = subprocess.run([sys.executable, "scripts/evaluate.py", str(run_dir), "--levels", "0", "0.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_csv(run_dir / "eval-test" / "robustness.csv")
    run = read_offline_run(run_dir)
    assert chart(run, "robustness/test/removed") == (
        "wandb/bar/v0", {"label": "removed", "value": "accuracy"}, "robustness/test/removed_table")
    assert chart(run, "robustness/test/noise") == (
        "wandb/line/v0", {"x": "level", "y": "accuracy", "stroke": "modality"}, "robustness/test/noise_table")
    assert run["tables"]["robustness/test/removed_table"] == {"columns": ["removed", "accuracy"], "data": [
        [r["modality"], float(r["accuracy"])] for r in rows if r["kind"] == "removed"]}
    assert run["tables"]["robustness/test/noise_table"] == {"columns": ["level", "accuracy", "modality"], "data": [
        [float(r["level"]), float(r["accuracy"]), r["modality"]] for r in rows if r["kind"] == "noise"]}


# ---- Artifact references and their errors ----


def test_parse_ref_reads_both_forms_and_leaves_paths_alone():
    assert parse_ref("artifact:mm/model-1a2b3c4d:best") == ArtifactRef(None, "mm", "model-1a2b3c4d", "best")
    assert parse_ref("wandb-artifact://team/mm/model-1a2b3c4d:v3") == ArtifactRef("team", "mm", "model-1a2b3c4d", "v3")
    assert parse_ref("wandb-artifact://team/mm/model-1a2b3c4d:v3").path == "team/mm/model-1a2b3c4d:v3"
    assert parse_ref("runs/color_animal-text+image-concat-s0") is None
    for bad in ("artifact:model-1a2b3c4d:best", "artifact:mm/model-1a2b3c4d", "artifact:a/b/c/d:best",
                "wandb-artifact://mm//x:best", "artifact:mm/model:"):
        with pytest.raises(ValueError, match="is not an artifact reference: write .*the alias or version is required"):
            parse_ref(bad)


def test_resolve_run_passes_a_folder_through_and_names_a_missing_one(tmp_path):
    assert resolve_run(tmp_path) == tmp_path and resolve_run(str(tmp_path)) == tmp_path
    with pytest.raises(FileNotFoundError, match=r"nope: no such run folder \(a W&B model artifact is written "
                                                 r"artifact:\[entity/\]project/name:alias\)"):
        resolve_run(tmp_path / "nope")


def test_without_a_key_or_online_mode_no_download_is_tried(tmp_path, monkeypatch):
    import wandb

    def no_api(*args, **kwargs):
        raise AssertionError("wandb.Api must not be reached")

    monkeypatch.setattr(wandb, "Api", no_api)
    with pytest.raises(ConnectionError, match=r"cannot download mm/model-x:best: no W&B API key \(set WANDB_API_KEY"):
        resolve_run("artifact:mm/model-x:best", cache=tmp_path)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ConnectionError, match="cannot download mm/model-x:best: WANDB_MODE=offline"):
        resolve_run("artifact:mm/model-x:best", cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("script", ["predict", "evaluate"])
def test_scripts_refuse_an_unreachable_artifact_as_a_usage_error(tmp_path, script):
    # A fresh process, as wandb reads WANDB_BASE_URL once per process; the refused port is real.
    url = f"http://127.0.0.1:{closed_port()}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}, "WANDB_API_KEY": FAKE_KEY,
           "WANDB_BASE_URL": url, "HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "config"),
           "WANDB_CACHE_DIR": str(tmp_path / "cache"), "MM_ARTIFACT_CACHE": str(tmp_path / "artifacts")}
    args = ["artifact:mm/model-x:best", *(["--text", "a red ring"] if script == "predict" else [])]
    proc = subprocess.run([sys.executable, f"scripts/{script}.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    assert (f"error: argument run_dir: cannot download mm/model-x:best: no connection to {url}: "
            "ConnectionRefusedError(111, 'Connection refused')") in proc.stderr
    assert not (tmp_path / "artifacts").exists()
