"""Grids across machines: shards in one folder, --report, W&B sweeps as `wandb agent` runs them, SLURM scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ablate
import pytest
import yaml
from test_ablate import (  # the grid tests' helpers, and their W&B folders in a temporary directory
    NAMES,
    CountingTrain,
    offline_wandb,  # noqa: F401  (an autouse fixture)
    read_csv,
    without_timing,
    write_grid,
)
from test_ablate import TINY as ABLATE_TINY

import mm.train as mm_train
from mm.config import load_config
from mm.experiments import grids
from mm.wandb_offline import read_records

ROOT = Path(__file__).resolve().parents[1]
TINY = [o for o in ABLATE_TINY if o != "wandb.mode=offline"] + ["wandb.mode=disabled"]  # no W&B process per cell
SLURM = {  # each script and the command it exists for
    "train_ddp.sbatch": "torchrun --standalone --nproc_per_node=\"$SLURM_GPUS_ON_NODE\" scripts/train.py",
    "train_multinode.sbatch": "--rdzv-backend=c10d",
    "ablate_array.sbatch": "--shard \"$SLURM_ARRAY_TASK_ID/$shards\"",
    "sweep_agents.sbatch": "CUDA_VISIBLE_DEVICES=\"$gpu\" wandb agent",
}


def tiny_grid(path: Path, **fields) -> Path:
    return write_grid(path, **{"overrides": TINY, "ceilings": False, **fields})


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    return tiny_grid(tmp_path_factory.mktemp("grid") / "tiny.yaml")


@pytest.fixture(scope="module")
def reference(grid_file, tmp_path_factory) -> Path:
    """The tiny grid run once, whole, in this process (it writes state.json, as grid folders always had)."""
    out = tmp_path_factory.mktemp("reference")
    grid = grids.load_grid(grid_file)
    assert grids.run_grid(grid, grids.expand(grid, out), out, log=lambda line: None).trained == NAMES
    return out


def statuses(path: Path) -> dict[str, str]:
    return {name: entry["status"] for name, entry in json.loads(path.read_text())["cells"].items()}


def test_two_concurrent_shards_then_report_equal_the_whole_grid(reference, grid_file, tmp_path):
    out = tmp_path / "grid"
    cmd = [sys.executable, "scripts/ablate.py", str(grid_file), "--out", str(out)]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    logs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]

    # Each shard recorded its own cells (index % 2) in its own folder, and left the grid's tables alone.
    for i, shard in enumerate(("0-of-2", "1-of-2")):
        assert statuses(out / "shards" / shard / "state.json") == {n: "done" for n in NAMES[i::2]}
        assert [r["cell"] for r in read_csv(out / "shards" / shard / "results.csv")] == NAMES[i::2]
        assert (out / "shards" / shard / "summary.md").is_file()
    assert sorted(p.name for p in (out / "runs").iterdir()) == NAMES
    assert not any((out / name).exists() for name in ("state.json", "results.csv", "summary.md", "summary.png"))
    assert not list(out.rglob("*.tmp"))
    assert f"the whole grid: 4/4 cells done, its tables: python scripts/ablate.py {grid_file} --out {out} " \
           "--report" in "".join(logs)

    report = subprocess.run([*cmd, "--report"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    assert f"{out}: results.csv, summary.md, summary.png; 4/4 cells done" in report.stdout
    assert without_timing(read_csv(out / "results.csv")) == without_timing(read_csv(reference / "results.csv"))
    assert (out / "summary.md").read_text() == (reference / "summary.md").read_text()
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shard_must_be_i_of_n(grid_file, tmp_path, capsys):
    out = tmp_path / "o"
    for bad in ("2/2", "3/2", "1/0", "-1/2", "1", "a/2", "0/2/3", ""):
        assert ablate.main([str(grid_file), "--out", str(out), f"--shard={bad}"]) == 2, bad
        assert "error: --shard" in capsys.readouterr().err, bad
    assert ablate.main([str(grid_file), "--out", str(out), "--shard", "2/2"]) == 2
    assert capsys.readouterr().err == ("error: --shard 2/2: need N >= 1 and 0 <= I < N "
                                       "(shards are numbered 0 to N-1)\n")
    assert ablate.main([str(grid_file), "--out", str(out), "--shard", "0/2", "--report"]) == 2
    assert "run it without --shard" in capsys.readouterr().err
    assert not out.exists()

    assert ablate.main([str(grid_file), "--out", str(out), "--shard", "7/8"]) == 0  # more shards than cells
    assert capsys.readouterr().out == "shard 7/8: no cells (the grid has 4)\n"
    assert not out.exists()

    # The dry run shows the shard's cells, with their index in the whole grid.
    assert ablate.main([str(grid_file), "--out", str(out), "--shard", "1/2", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"2/4 {NAMES[1]}", f"4/4 {NAMES[3]}"]
    assert grids.Shard.parse("3/4").select(list(range(10))) == [3, 7]


def test_partial_grid_report_lists_missing_cells_and_shards_resume(reference, grid_file, tmp_path, monkeypatch,
                                                                    capsys):
    out = tmp_path / "grid"
    args = [str(grid_file), "--out", str(out)]

    # Shard 1/2 is killed during its second cell.
    killed = CountingTrain(fail={NAMES[3]: KeyboardInterrupt()})
    monkeypatch.setattr(mm_train, "train", killed)
    assert ablate.main([*args, "--shard", "1/2"]) == 130
    assert killed.names == [NAMES[1], NAMES[3]]
    assert statuses(out / "shards" / "1-of-2" / "state.json") == {NAMES[1]: "done", NAMES[3]: "running"}
    capsys.readouterr()

    assert ablate.main([*args, "--report"]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["missing (3):", f"  {NAMES[0]} (pending)", f"  {NAMES[2]} (pending)",
                                         f"  {NAMES[3]} (running)"]
    assert f"{out}: results.csv, summary.md, summary.png; 1/4 cells done" in captured.out
    assert [r["cell"] for r in read_csv(out / "results.csv")] == [NAMES[1]]

    # Rerun: the shard trains only its unfinished cell; then the other shard runs.
    again = CountingTrain()
    monkeypatch.setattr(mm_train, "train", again)
    assert ablate.main([*args, "--shard", "1/2"]) == 0
    assert again.names == [NAMES[3]]
    assert "the whole grid: 2/4 cells done" in capsys.readouterr().out
    assert ablate.main([*args, "--shard", "0/2"]) == 0
    assert again.names == [NAMES[3], NAMES[0], NAMES[2]]
    capsys.readouterr()

    assert ablate.main([*args, "--report"]) == 0
    assert capsys.readouterr().err == ""
    assert without_timing(read_csv(out / "results.csv")) == without_timing(read_csv(reference / "results.csv"))
    assert (out / "summary.md").read_text() == (reference / "summary.md").read_text()

    # A whole-grid run counts what the shards finished; a changed grid has no result yet.
    assert ablate.main(args) == 0
    assert again.names == [NAMES[3], NAMES[0], NAMES[2]]
    assert statuses(out / "state.json") == {n: "done" for n in NAMES}
    assert ablate.main([*args, "--report", "optim.lr=0.5"]) == 1
    assert capsys.readouterr().err.splitlines()[1:] == [f"  {n} (stale)" for n in NAMES]
    assert ablate.main([str(grid_file), "--out", str(tmp_path / "nowhere"), "--report"]) == 2


def test_report_reads_a_folder_with_only_state_json(reference, grid_file):
    # Grid folders written before shards existed have one state.json; --report reads them as they are.
    before = read_csv(reference / "results.csv")
    grid = grids.load_grid(grid_file)
    result = grids.report_grid(grid, grids.expand(grid, reference), reference)
    assert result.missing == [] and [row["cell"] for row in result.rows] == NAMES
    assert read_csv(reference / "results.csv") == before


def test_sweep_command_as_wandb_agent_builds_and_runs_it(tmp_path, monkeypatch):
    """The exported sweep, launched by wandb's own Agent code, trains the cell's config in the sweep's run.

    No W&B server here, so ``wandb agent`` itself cannot start: this drives ``Agent._command_run``
    (what the agent does with each run the server hands out) with the sweep's ``command``, as
    ``Agent.run`` sets it from the stored sweep, and lets its ``AgentProcess`` run the command.
    """
    from wandb.wandb_agent import Agent

    overrides = [o for o in TINY if not o.startswith(("data.modalities", "wandb.mode", "train.max_steps"))]
    grid_file = tiny_grid(tmp_path / "sweepy.yaml", seeds=[0], overrides=[
        *overrides, "encoders.image.source=tiny-vit", "train.max_steps=1", "wandb.mode=offline"],
        grid={"data.modalities": [["text"], ["text", "image"]], "fusion.hidden_dim": [16, 32]})
    sweep = tmp_path / "sweep.yaml"
    assert ablate.main([str(grid_file), "--sweep", str(sweep)]) == 0
    spec = yaml.safe_load(sweep.read_text())
    assert (spec["project"], spec["program"], "entity" in spec) == ("mm", "scripts/train.py", False)
    cell = grids.expand(grids.load_grid(grid_file), tmp_path)[3]
    assert cell.name == "data.modalities=text+image__fusion.hidden_dim=32__seed=0"

    # The agent runs from the repo root (here: a folder whose scripts/ is the repo's), with the
    # environment `wandb agent mm/<sweep id>` sets, and `python` from PATH.
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for name, value in {"WANDB_SWEEP_ID": "sweep01", "WANDB_PROJECT": spec["project"], "WANDB_RUN_ID": "",
                        "WANDB_SWEEP_PARAM_PATH": ""}.items():
        monkeypatch.setenv(name, value)  # the agent sets the last two itself; this restores them afterwards
    agent = Agent(api=None, queue=None, sweep_id="sweep01")
    agent._sweep_command = spec["command"]
    args = {**{key: {"value": value} for key, value in cell.values.items()}, "seed": {"value": cell.seed}}
    agent._command_run({"type": "run", "run_id": "cell0003", "program": spec["program"], "args": args})
    proc = agent._run_processes["cell0003"]
    assert proc.wait(timeout=600) == 0
    assert proc._popen.args == ["/usr/bin/env", "python", "scripts/train.py", *overrides,
                                "encoders.image.source=tiny-vit", "train.max_steps=1", "wandb.mode=offline", "wandb.group=sweepy", "wandb.job_type=ablation",
                                "data.modalities=['text', 'image']", "fusion.hidden_dim=32", "seed=0"]

    # It trained the cell's config (its run name and folder aside, and the cell's W&B tags: the sweep
    # tells its runs apart) ...
    (run_dir,) = (tmp_path / "runs").iterdir()
    cfg = load_config(run_dir / "config.yaml")
    assert (cfg.data.modalities, cfg.fusion.hidden_dim) == (["text", "image"], 32)
    cfg.name = cell.cfg.name
    cfg.wandb.tags = cell.cfg.wandb.tags
    assert cfg == cell.cfg
    # ... as the sweep's own W&B run, which carries the metric the sweep optimizes.
    (log_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = read_records(log_file)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert (run["run_id"], run["sweep_id"], run["project"], run["run_group"], run["job_type"]) == (
        "cell0003", "sweep01", "mm", "sweepy", "ablation")
    best = [r["summary"]["update"][spec["metric"]["name"]] for r in records
            if r["type"] == "summary" and spec["metric"]["name"] in r["summary"]["update"]]
    assert best == [json.loads((run_dir / "results.json").read_text())["val"]["accuracy"]]


@pytest.mark.parametrize("name", SLURM)
def test_slurm_scripts_are_valid_bash(name):
    path = ROOT / "scripts" / "slurm" / name
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = path.read_text()
    assert text.startswith("#!/bin/bash\n") and "\n#SBATCH " in text and SLURM[name] in text
