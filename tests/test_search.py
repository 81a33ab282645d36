"""Learning-rate range test and Optuna search (mm.search): known answers, real subprocesses, real kills.

The synthetic task of configs/search/lr_synthetic.yaml has a measured good range of head learning
rates (configs/ablations/lr_synthetic.yaml, README "Learning rates"): GOOD below.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mm.config import ConfigError
from mm.search import lr_find
from mm.search.spec import read_search

ROOT = Path(__file__).resolve().parents[1]
SEARCH = ROOT / "configs" / "search" / "lr_synthetic.yaml"
# The good range of optim.lr, measured (configs/ablations/lr_synthetic.yaml, seed 0, val accuracy at 40
# steps): 1e-5 0.25, 1e-4 0.56, 3e-4 0.66, 1e-3 0.84 | 3e-3 0.92, 1e-2 0.97, 3e-2 0.95 | 1e-1 0.86, ...:
# every rate measured inside reaches 0.9, both neighbours outside fall below it.
GOOD = (1e-3, 1e-1)


# ---------------------------------------------------------------- range test: the sweep itself


def quadratic_step(lam_max: float = 4.0, dim: int = 8, seed: int = 0):
    """Full-batch gradient descent on 0.5 * sum(lam_i * w_i^2) + a constant: the Hessian's largest
    eigenvalue is ``lam_max``, so GD converges for lr < 2 / lam_max and diverges above."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.linspace(1.0, lam_max, dim)
    w = torch.randn(dim, generator=g) + 3.0

    def step(lr: float) -> float:
        loss = 0.5 * float((lam * w * w).sum()) + 1.0
        w.sub_(lr * lam * w)
        return loss

    return step


def test_sweep_on_a_quadratic_suggests_inside_the_stable_range() -> None:
    curve = lr_find.sweep(quadratic_step(), "new", start_lr=1e-5, end_lr=10.0, steps=100)
    assert curve.reason is None and curve.diverged  # above 2 / lam_max = 0.5 it must blow up
    assert curve.lrs[-1] > 0.5
    # Stable and fast: between a tenth of 1 / lam_max and 2 / lam_max.
    for value in (curve.steepest, curve.min_tenth):
        assert 0.025 <= value <= 0.5, (curve.steepest, curve.min_tenth)
    assert curve.lrs[0] == pytest.approx(1e-5) and curve.lrs[1] == pytest.approx(1e-5 * 10 ** (6 / 99))


def test_sweep_says_so_when_nothing_can_be_learned() -> None:
    """Constant inputs, balanced labels, a zero-initialised linear classifier: the loss starts at
    log(4), the best a model can do without information, and never falls below it at any rate."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 4)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    x, y = torch.ones(64, 3), torch.arange(64) % 4
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)

    def step(lr: float) -> float:
        for group in opt.param_groups:
            group["lr"] = lr
        loss = torch.nn.functional.cross_entropy(layer(x), y[torch.randperm(64)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    curve = lr_find.sweep(step, "new", start_lr=1e-4, end_lr=10.0, steps=60)
    assert curve.losses[0] == pytest.approx(math.log(4))
    assert curve.steepest is None and curve.min_tenth is None
    assert "does not learn from these inputs at any rate" in curve.reason
    assert lr_find.overrides([curve]) == []


def test_blind_floor_is_the_entropy_of_the_label_frequencies() -> None:
    from mm.heads import ClassificationHead

    head = ClassificationHead(4, 3)
    y = [torch.tensor([0, 0, 0]), torch.tensor([1])]  # frequencies 3/4, 1/4, 0
    assert lr_find.blind_floor(head, y) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-6)
    assert lr_find.blind_floor(torch.nn.Linear(2, 2), y) is None


def test_a_fall_to_the_label_frequencies_is_not_learning() -> None:
    """A two-class head that starts badly (0.82) and only learns the class balance (log 2) falls 19 %
    from its start, yet never below what predicting the frequencies gives: no suggestion then."""
    lrs = [lr_find.lr_at(i, 60, 1e-5, 1.0) for i in range(60)]
    losses = [math.log(2) + 0.13 * math.exp(-i / 8) - 0.03 * (i > 30) * math.sin(i) ** 2 for i in range(60)]
    curve = lr_find.Curve("new", lrs=lrs, losses=losses, smoothed=losses)
    assert lr_find.suggest(curve, 0.1).reason is None  # against its own start it looks like learning
    curve = lr_find.Curve("new", lrs=lrs, losses=losses, smoothed=losses)
    reason = lr_find.suggest(curve, 0.1, floor=math.log(2)).reason
    assert "never fell 10% below the blind floor (predicting the label frequencies), 0.6931" in reason
    assert curve.steepest is None and curve.min_tenth is None


def test_sweep_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        lr_find.sweep(lambda lr: 1.0, "new", start_lr=1.0, end_lr=0.1)


def test_overrides_are_pasteable() -> None:
    a = lr_find.Curve("new", steepest=0.0123, min_tenth=0.004)
    b = lr_find.Curve("backbone", steepest=2e-4, min_tenth=1e-4)
    assert lr_find.overrides([a, b]) == ["optim.lr=0.0123", "optim.backbone_lr=0.0002"]
    assert lr_find.overrides([a, b], "min_tenth") == ["optim.lr=0.004", "optim.backbone_lr=0.0001"]


# ---------------------------------------------------------------- search spec


def write_spec(tmp_path: Path, **changes) -> Path:
    spec = yaml.safe_load(SEARCH.read_text())
    spec.update(changes)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_read_search_of_the_shipped_spec() -> None:
    search = read_search(SEARCH)
    assert (search.name, search.metric, search.direction, search.n_trials) == ("lr_synthetic", "accuracy", "maximize", 10)
    assert [(p.key, p.type, p.low, p.high) for p in search.space] == [("optim.lr", "log_uniform", 1e-5, 10.0)]
    assert search.trial_overrides({"optim.lr": 0.01}) == ["optim.lr=0.01"]


@pytest.mark.parametrize(("change", "message"), [
    ({"space": {"optim.lrr": {"type": "log_uniform", "low": 1e-4, "high": 1.0}}}, "space.optim.lrr: command-line overrides: invalid config key 'optim.lrr'"),
    ({"space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1.0}}}, "space.optim.lr: needs 'type'"),
    ({"space": {"optim.lr": {"type": "log_uniform", "low": 0.0, "high": 1.0}}}, "a log scale needs low > 0"),
    ({"space": {"optim.lr": {"type": "log_uniform", "low": 1e-4, "high": 1.0, "step": 2}}}, "takes ['high', 'low']"),
    ({"space": {"train.batch_size": {"type": "int", "low": 0, "high": 4}}}, "space.train.batch_size"),
    ({"space": {"seed": {"type": "int", "low": 0, "high": 4}}}, "dotted config key"),
    ({"space": {"name": {"type": "categorical", "choices": ["a"]}}}, "dotted config key"),
    ({"space": {"wandb.group": {"type": "categorical", "choices": ["a"]}}}, "set by the search"),
    ({"pruner": {"name": "median", "n_startup": 3}}, "pruner.n_startup: not an argument of optuna.pruners.MedianPruner"),
    ({"pruner": {"name": "asha"}}, "'pruner' needs a name"),
    ({"direction": "up"}, "'direction'"),
    ({"n_trials": 0}, "'n_trials' must be a positive integer"),
    ({"storage": "study.db"}, "an RDB URL"),
    ({"trials": 3}, "unknown top-level key 'trials'"),
])
def test_read_search_names_file_and_key(tmp_path: Path, change: dict, message: str) -> None:
    path = write_spec(tmp_path, **change)
    with pytest.raises(ConfigError) as err:
        read_search(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_search_cli_exits_2_on_a_bad_file_before_running(tmp_path: Path) -> None:
    path = write_spec(tmp_path, space={"optim.lr": {"type": "uniform", "low": 1.0, "high": 0.1}})
    proc = subprocess.run([sys.executable, "scripts/search.py", str(path), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "space.optim.lr: need numbers low < high" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_metrics_follower_reads_complete_lines_only(tmp_path: Path) -> None:
    from mm.search.study import MetricsFollower

    path = tmp_path / "metrics.jsonl"
    follower = MetricsFollower(path)
    assert follower.new_rows() == []
    path.write_text('{"step": 10, "val/accuracy": 0.5}\n{"step": 20, "val/acc')
    assert follower.new_rows() == [{"step": 10, "val/accuracy": 0.5}]
    with path.open("a") as f:
        f.write('uracy": 0.75}\n')
    assert follower.new_rows() == [{"step": 20, "val/accuracy": 0.75}]
    path.write_text('{"step": 10, "train/loss": 1.0}\n')  # a resumed run rewrote the file
    assert follower.new_rows() == [{"step": 10, "train/loss": 1.0}]


# ---------------------------------------------------------------- real runs (slow)

TASK = yaml.safe_load(SEARCH.read_text())["overrides"]


@pytest.mark.slow
def test_range_test_of_the_synthetic_task_lands_in_its_good_range(tmp_path: Path) -> None:
    from mm.config import load_config

    cfg = load_config(None, [*TASK, "wandb.mode=disabled"])
    (curve,) = lr_find.range_test(cfg, start_lr=1e-5, end_lr=10.0, steps=100, log=lambda s: None)
    assert curve.part == "new" and curve.reason is None
    assert GOOD[0] < curve.steepest < GOOD[1], curve.steepest
    assert GOOD[0] < curve.min_tenth < GOOD[1], curve.min_tenth


@pytest.mark.slow
def test_lr_find_cli_refuses_to_suggest_for_a_task_its_inputs_cannot_tell(tmp_path: Path) -> None:
    """``pitch`` is heard, never seen: a model of the pictures alone cannot learn it at any rate."""
    task = [o for o in TASK if not o.startswith("data.task")]
    proc = subprocess.run([sys.executable, "scripts/lr_find.py", "data.task=pitch", *task,
                           "wandb.mode=disabled", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "new: no suggestion for optim.lr" in proc.stdout and "paste" not in proc.stdout
    result = json.loads((tmp_path / "lr_find.json").read_text())
    assert result["suggest_steepest"] == [] and (tmp_path / "lr_find.png").is_file()


def search_cmd(spec: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "scripts/search.py", str(spec), "--out", str(out), *extra]


def trials(out: Path) -> list[tuple[int, str, float | None, float | None]]:
    """(number, state, value, optim.lr) of each trial, read from the SQLite file itself."""
    with sqlite3.connect(out / "study.db") as db:
        rows = db.execute("SELECT t.number, t.state, v.value, p.param_value FROM trials t "
                          "LEFT JOIN trial_values v ON v.trial_id = t.trial_id "
                          "LEFT JOIN trial_params p ON p.trial_id = t.trial_id ORDER BY t.number").fetchall()
    return rows


def attrs(out: Path, key: str) -> dict[int, str]:
    with sqlite3.connect(out / "study.db") as db:
        return dict(db.execute("SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a "
                               "ON a.trial_id = t.trial_id WHERE a.key = ?", (key,)).fetchall())


@pytest.mark.slow
def test_search_finds_a_rate_in_the_good_range(tmp_path: Path) -> None:
    out = tmp_path / "s"
    spec = write_spec(tmp_path, n_trials=8)
    proc = subprocess.run(search_cmd(spec, out, "wandb.mode=disabled"), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert GOOD[0] < best["optim"]["lr"] < GOOD[1]
    first = (out / "best.yaml").read_text().splitlines()[0]
    assert first == f"# python scripts/train.py --config {out / 'best.yaml'}"
    states = [state for _, state, _, _ in trials(out)]
    assert states.count("COMPLETE") + states.count("PRUNED") == 8
    for name in ("trials.csv", "trials.md", "history.png", "importance.png", "intermediate.png"):
        assert (out / name).is_file(), name


def wait_for(predicate, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


@pytest.mark.slow
def test_killed_search_resumes_without_redoing_finished_trials(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, n_trials=4, pruner={"name": "none"}, heartbeat={"interval": 1, "grace": 4},
                      sampler={"name": "random", "seed": 0})
    out = tmp_path / "s"
    proc = subprocess.Popen(search_cmd(spec, out, "wandb.mode=disabled"), cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = lambda: (out / "study.db").is_file() and sum(s == "COMPLETE" for _, s, _, _ in trials(out)) >= 2  # noqa: E731
    wait_for(done, 900, "two finished trials")
    wait_for(lambda: any(s == "RUNNING" for _, s, _, _ in trials(out)), 300, "a third trial running")
    os.killpg(proc.pid, signal.SIGKILL)  # the search and its running trial, no chance to clean up
    proc.wait()
    before = {n: (s, v, p) for n, s, v, p in trials(out) if s == "COMPLETE"}
    killed = [(n, p) for n, s, _, p in trials(out) if s == "RUNNING"]
    assert len(killed) == 1
    logs = {n: (out / "logs" / f"trial={n}__seed=0.log").stat().st_mtime_ns for n in before}

    rerun = subprocess.run(search_cmd(spec, out, "wandb.mode=disabled"), cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = trials(out)
    for n, row in before.items():  # finished trials untouched, never restarted
        assert (after[n][1], after[n][2], after[n][3]) == row
        assert f"trial {n} start" not in rerun.stdout
        assert (out / "logs" / f"trial={n}__seed=0.log").stat().st_mtime_ns == logs[n]
    states = [s for _, s, _, _ in after]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1
    (n_killed, lr_killed), = killed
    assert after[n_killed][1] == "FAIL"
    retried = [n for n, s, _, p in after if n > n_killed and p == lr_killed and s == "COMPLETE"]
    assert len(retried) == 1  # the killed trial ran again with the same value


@pytest.mark.slow
def test_two_processes_split_the_trials_of_one_sqlite_study(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, n_trials=4, pruner={"name": "none"}, sampler={"name": "random", "seed": 0})
    out = tmp_path / "s"
    out.mkdir()
    procs = [subprocess.Popen(search_cmd(spec, out, "wandb.mode=disabled", "--worker", str(k)), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ran = [[int(line.split("trial ")[1].split()[0]) for line in text.splitlines() if " start: " in line]
           for text in outputs]
    assert ran[0] and ran[1], outputs  # both worked
    assert not set(ran[0]) & set(ran[1])  # no trial run twice
    rows = trials(out)
    finished = [n for n, s, _, _ in rows if s == "COMPLETE"]
    assert sorted(ran[0] + ran[1]) == finished and len(finished) == 4
    surplus = attrs(out, "surplus")
    assert all(s == "FAIL" for n, s, _, _ in rows if n in surplus)
    assert len({p for n, s, _, p in rows if s == "COMPLETE"}) == 4  # the workers drew different values
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"trial={n}__seed=0" for n in finished)


# ---------------------------------------------------------------- fair comparisons


def test_fair_grid_gives_each_variant_its_own_rates(tmp_path: Path) -> None:
    from mm.experiments.grids import expand, load_grid
    from mm.search.fair import fair_grid, variants

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"overrides": TASK, "grid": {
        "strategy": {"frozen": ["encoders.image.trainable=frozen"], "full": ["encoders.image.trainable=full"]},
        "optim.weight_decay": [0.0, 0.1]}, "seeds": [0, 1]}, sort_keys=False))
    grid = load_grid(path)
    labels = [label for label, _ in variants(grid)]
    assert labels == ["strategy=frozen,optim.weight_decay=0.0", "strategy=frozen,optim.weight_decay=0.1",
                      "strategy=full,optim.weight_decay=0.0", "strategy=full,optim.weight_decay=0.1"]
    rates = {label: [f"optim.lr={0.001 * (i + 1):g}"] for i, label in enumerate(labels)}
    out = fair_grid(grid, rates, tmp_path / "fair.yaml", "test")
    assert out.read_text().splitlines()[0] == f"# python scripts/ablate.py {out}"
    fair = load_grid(out)
    assert fair.seeds == [0, 1] and fair.name == "grid_own_lr"
    cells = expand(fair, tmp_path / "runs")
    lr = {(c.values["variant"], c.seed): (c.cfg.optim.lr, c.cfg.optim.weight_decay,
                                          c.cfg.encoders.image.trainable) for c in cells}
    assert lr[("strategy=full,optim.weight_decay=0.0", 1)] == (0.003, 0.0, "full")
    assert lr[("strategy=frozen,optim.weight_decay=0.1", 0)] == (0.002, 0.1, "frozen")
    assert len(cells) == 8


def test_slurm_search_workers_script_parses_and_shares_one_storage() -> None:
    path = ROOT / "scripts" / "slurm" / "search_workers.sbatch"
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text()
    assert 'python scripts/search.py "$spec" --storage "$storage" --worker "$worker" &' in text
