"""The experiment runner: a cell trained as ``python -m mm.experiments.cell``, a new kind of curve as one entry."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

import mm.train as mm_train
from mm.config import ConfigError
from mm.experiments import cell, curves, grids, summaries
from mm.experiments.spec import KINDS, CurveKind, Sweep

TINY = [
    "encoders.text.source=tiny-bert", "data.modalities=[text]", "data.synthetic.n_train=48",
    "data.synthetic.n_val=16", "data.synthetic.n_test=16", "train.batch_size=16", "train.max_steps=2",
    "wandb.mode=disabled",
]
NAMES = ["fusion.hidden_dim=16__seed=0", "fusion.hidden_dim=32__seed=0"]
TIMING = {"wall_time_s", "throughput_samples_per_s", "peak_memory_mb", "peak_memory_kind"}
EPOCHS = CurveKind("policies", "policy", min_sets=2, sweep=Sweep(
    "epochs", "train.epochs", "epochs", int, lambda v: isinstance(v, int) and v > 0, "positive integers",
    "training epochs (train.epochs)"))


def tiny_grid(path: Path) -> grids.Grid:
    spec = {"overrides": TINY, "grid": {"fusion.hidden_dim": [16, 32]}, "seeds": [0]}
    path.write_text("# python scripts/ablate.py tiny.yaml\n" + yaml.safe_dump(spec))
    return grids.load_grid(path)


def test_subprocess_cells_train_like_in_process_and_fail_alone(tmp_path, monkeypatch):
    grid = tiny_grid(tmp_path / "tiny.yaml")
    here = grids.run_grid(grid, grids.expand(grid, tmp_path / "a")[:1], tmp_path / "a", log=lambda line: None)

    # The subprocesses find this checkout's mm from any folder and never call this process's train().
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mm_train, "train", lambda cfg, opts: pytest.fail("trained in the runner's process"))
    out = tmp_path / "b"
    cells = grids.expand(grid, out)
    cells[1].cfg.encoders.text.source = str(tmp_path / "missing")  # a valid config that fails to train
    there = grids.run_grid(grid, cells, out, workers=2, use_subprocess=True, log=lambda line: None)

    assert here.trained == there.trained == [NAMES[0]] and there.failed == [NAMES[1]]
    assert [row["peak_memory_kind"] for row in there.rows] == ["process_peak_rss"]
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in there.rows] == \
        [{k: v for k, v in row.items() if k not in TIMING} for row in here.rows]
    # The cell's log ends with the JSON summary that python -m mm.experiments.cell prints.
    summary = json.loads((out / "logs" / f"{NAMES[0]}.log").read_text().splitlines()[-1])
    results = json.loads((out / "runs" / NAMES[0] / "results.json").read_text())
    assert (summary["run_dir"], summary["val"], summary["test"]) == (str(out / "runs" / NAMES[0]), results["val"],
                                                                     results["test"])
    # A failed subprocess fails its cell alone, with the last line of its output as the error.
    lines = [line for line in (out / "logs" / f"{NAMES[1]}.log").read_text().splitlines() if line.strip()]
    assert there.state[NAMES[1]]["error"] == f"RuntimeError: {lines[-1]}"
    assert "missing" in lines[-1]


def test_cell_main_rejects_an_invalid_config(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_stepz: 2}\n")
    monkeypatch.setattr(mm_train, "train", lambda cfg, opts: pytest.fail("an invalid config trained"))
    assert cell.main(["--config", str(bad)]) == 2
    assert "train.max_stepz" in capsys.readouterr().err


def test_a_new_curve_kind_is_one_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, "epochs", EPOCHS)
    spec = {"kind": "epochs", "overrides": TINY, "epochs": [1, 3], "seeds": [0, 1], "policies": [
        {"name": "frozen", "overrides": ["encoders.text.trainable=frozen"]},
        {"name": "full", "overrides": ["encoders.text.trainable=full"]}]}
    path = tmp_path / "epochs.yaml"
    path.write_text(yaml.safe_dump(spec))
    curve = curves.load_curve(path)
    cells = curves.expand(curve, tmp_path)
    assert [c.name for c in cells] == [f"policy={p}__epochs={e}__seed={seed}" for p in ("frozen", "full")
                                       for e in (1, 3) for seed in (0, 1)]
    assert [(c.cfg.encoders.text.trainable, c.cfg.train.epochs) for c in cells[::2]] == [
        ("frozen", 1), ("frozen", 3), ("full", 1), ("full", 3)]
    only = curves.expand(curves.load_curve(path, only=["full"]), tmp_path)  # learning_curve.py --only full
    assert [c.name for c in only] == [c.name for c in cells if c.values["policy"] == "full"]
    with pytest.raises(ConfigError, match=r"no 'policies' entry named \['ful'\]; the file has \['frozen', 'full'\]"):
        curves.load_curve(path, only=["ful"])
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(yaml.safe_dump(curves.curve_dict(curve)))  # curve.yaml reruns the same runs
    assert [c.cfg for c in curves.expand(curves.load_curve(resolved), tmp_path)] == [c.cfg for c in cells]
    path.write_text(yaml.safe_dump({**spec, "overrides": [*TINY, "train.epochs=5"]}))
    with pytest.raises(ConfigError, match=r"epochs\.yaml: 'train\.epochs' is set by the curve runner"):
        curves.load_curve(path)
    path.write_text(yaml.safe_dump({**spec, "fractions": [1.0]}))
    with pytest.raises(ConfigError, match=r"epochs\.yaml: a epochs curve has no 'fractions'"):
        curves.load_curve(path)

    # Its reports: one summary row per (policy, epochs), the swept column in the table and on the x axis.
    rows = [{"run": c.name, "policy": c.values["policy"], "fraction": 1.0, "epochs": c.values["epochs"],
             "seed": c.seed, "n_train": 48, "params_trainable": 10 + i // 4, "params_total": 100,
             "train_error": 0.1 * i, "val_error": 0.2, "test_error": 0.05 * i, "best_step": 1, "steps": 2,
             "wall_time_s": 1.0} for i, c in enumerate(cells)]
    table = summaries.curve_summary(curve, rows)
    assert [(g["policy"], g["epochs"], g["n"]) for g in table] == [("frozen", 1, 2), ("frozen", 3, 2),
                                                                  ("full", 1, 2), ("full", 3, 2)]
    errors = [r["train_error"] for r in rows[2:4]]
    assert (table[1]["train_error"], table[1]["train_error_std"]) == (statistics.fmean(errors),
                                                                      statistics.stdev(errors))
    markdown = summaries.curve_markdown(curve, table)
    assert "| policy | fraction | epochs | n_train | trainable params | n |" in markdown
    assert f"| full | 1 | 3 | 48 | 11 | 2 | {0.65:.4f} ± {statistics.stdev([0.6, 0.7]):.4f} |" in markdown
    assert summaries.curve_plot(curve, table, tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_bundles_vary_several_keys_together(tmp_path):
    from mm.config import ConfigError
    from mm.experiments.grids import expand, load_grid

    spec = tmp_path / "g.yaml"
    spec.write_text(
        "# python scripts/ablate.py g.yaml\n"
        "overrides: ['data.modalities=[text]', encoders.text.source=tiny-bert]\n"
        "grid:\n"
        "  strategy:\n"
        "    frozen: [encoders.text.trainable=frozen, encoders.image.trainable=frozen]\n"
        "    full: [encoders.text.trainable=full, encoders.image.trainable=full]\n"
        "  fusion.name: [concat, late]\n"
    )
    cells = expand(load_grid(spec), tmp_path / "out")
    assert [c.name for c in cells] == ["strategy=frozen__fusion.name=concat__seed=0",
                                       "strategy=frozen__fusion.name=late__seed=0",
                                       "strategy=full__fusion.name=concat__seed=0",
                                       "strategy=full__fusion.name=late__seed=0"]
    assert [(c.cfg.encoders.text.trainable, c.cfg.encoders.image.trainable, c.cfg.fusion.name) for c in cells] == [
        ("frozen", "frozen", "concat"), ("frozen", "frozen", "late"), ("full", "full", "concat"), ("full", "full", "late")]
    spec.write_text("grid:\n  strategy:\n    full: [seed=3]\n")
    with pytest.raises(ConfigError, match="not a settable override"):
        load_grid(spec)
