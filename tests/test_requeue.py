"""Run folders and requeues, with the faults done for real: two live processes on one run folder, a
SIGKILLed holder, SIGTERM during set-up and mid-run under ``--auto-resume``, a finished run requeued, a
truncated ``best`` checkpoint, a step folder that lost its manifest, a run that diverges before its
first checkpoint, and a mistyped ``--allow-changes`` key.

The reference is an uninterrupted run of the same config; "exact" means bitwise equal weights, equal
results and an equal ``metrics.jsonl`` (throughput aside).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import mm.train as mm_train
from mm.config import load_config
from mm.run.checkpoint import CheckpointError, resume_point, save_checkpoint, save_weights, verify_checkpoint
from mm.run.folder import RunLocked, lock, unlock
from mm.run.options import RunOptions

ROOT = Path(__file__).resolve().parents[1]
# tests/test_faults.py's setting: 40 steps, a checkpoint (and a validation) every 5, a log every 5 and 10.
RUN = ["data.synthetic.n_train=320", "data.synthetic.n_val=64", "data.synthetic.n_test=64", "train.batch_size=16",
       "train.epochs=2", "train.eval_every=5", "encoders.image.source=tiny-vit", "encoders.text.source=tiny-bert",
       "encoders.text.trainable=full", "wandb.mode=disabled"]
FLAGS = ["--no-progress", "--no-plots"]


def train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "scripts/train.py", *RUN, *FLAGS, f"--out-dir={out}", "name=run", *extra]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert path.exists(), f"{path} never appeared (exit {proc.poll()})"


def rows(run: Path) -> list[dict]:
    """metrics.jsonl without the throughput (wall-clock) field."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "train/samples_per_s"} for x in lines]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: sha256 and modification time (ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return mm_train.train(load_config(None, [*RUN, "name=run"]), RunOptions(out_dir=str(out), progress=False,
                                                                              plots=False))


# ---- one process per run folder (fast: no training) ----

HOLD = """
import sys, time
from pathlib import Path
from mm.run.folder import lock
lock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)
"""


def test_a_second_process_is_refused_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"in use by another process \\(pid {holder.pid}\\)"):
            lock(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    lock(tmp_path)  # the kernel dropped the dead holder's lock
    assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    unlock(tmp_path)


@pytest.mark.slow
def test_two_trainings_in_one_folder_the_second_exits_2_naming_the_first(tmp_path):
    longer = "train.epochs=6"  # 120 steps: the first is still training when the others start
    first = subprocess.Popen(train_cmd(tmp_path, longer), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    wait_for(tmp_path / "run" / "checkpoints" / "step-00000005", first)
    # An overlapping requeue of the same job, and a --resume of the same folder, while the first trains.
    for extra in (["--auto-resume"], ["--resume", str(tmp_path / "run")]):
        second = subprocess.run(train_cmd(tmp_path, longer, *extra), cwd=ROOT, capture_output=True, text=True,
                                timeout=900)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by another process (pid {first.pid})" in second.stderr
    assert first.poll() is None, "the first run ended before the others were refused"
    _, err = first.communicate(timeout=900)
    assert first.returncode == 0, err[-2000:]
    logged = [(r["step"], tuple(sorted(r))) for r in rows(tmp_path / "run")]
    assert len(logged) == len(set(logged)) and logged[-1][0] == 120  # every row once: one writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# ---- requeues converge on one folder, and a finished run stays finished ----

@pytest.mark.slow
def test_auto_resume_converges_whatever_the_moment_of_each_preemption(tmp_path, reference):
    run = tmp_path / "run"
    # 1. SIGTERM during set-up: the folder has its config and no checkpoint (the default handler kills).
    proc = subprocess.Popen(train_cmd(tmp_path, "--auto-resume"), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    wait_for(run / "config.yaml", proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert not (run / "checkpoints" / "last").exists()
    # 2. The requeue starts afresh in the same folder; SIGTERM after the checkpoint at step 5 stops it
    #    between two logging steps (the next step is 6) with a checkpoint.
    proc = subprocess.Popen(train_cmd(tmp_path, "--auto-resume"), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    wait_for(run / "checkpoints" / "step-00000005", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 143, err[-2000:]
    step = int((run / "checkpoints" / "last").resolve().name.split("-")[1])
    assert 5 <= step < 40
    # 3. The last requeue finishes the run: one folder, the uninterrupted run's weights, results and log.
    done = subprocess.run(train_cmd(tmp_path, "--auto-resume"), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    results = json.loads((run / "results.json").read_text())
    for key in ("steps", "best_step", "val", "test"):
        assert results[key] == reference[key], key
    a, b = load_file(run / "checkpoints/last/model.safetensors"), load_file(
        Path(reference["run_dir"]) / "checkpoints/last/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # train/loss at the first log after the SIGTERM (its window began before it) is the uninterrupted run's.
    assert rows(run) == rows(Path(reference["run_dir"]))


@pytest.mark.slow
def test_a_finished_run_requeued_reports_itself_and_changes_nothing(tmp_path):
    opts = RunOptions(out_dir=str(tmp_path), progress=False, plots=False)
    results = mm_train.train(load_config(None, [*RUN, "name=run", "train.max_steps=2"]), opts)
    before = snapshot(tmp_path / "run")
    for extra in (["--auto-resume"], ["--resume", str(tmp_path / "run")]):
        again = subprocess.run(train_cmd(tmp_path, "train.max_steps=2", *extra), cwd=ROOT, capture_output=True,
                               text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "has finished already" in again.stderr
        summary = json.loads(again.stdout.strip().splitlines()[-1])
        assert (summary["test"], summary["wall_time_s"]) == (results["test"], results["wall_time_s"])
        assert snapshot(tmp_path / "run") == before


# ---- damaged checkpoints ----

@pytest.mark.slow
def test_a_truncated_best_checkpoint_is_refused_at_resume_start_naming_the_file(tmp_path):
    # min_delta 1: no validation improves on the first, so best stays at step 5 while last moves on.
    cmd = train_cmd(tmp_path, "train.min_delta=1")
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "run" / "checkpoints"
    wait_for(ckpt / "best", proc)
    time.sleep(1)  # past step 5's own signal check: the stop then checkpoints a later step
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=900)
    assert (ckpt / "best").resolve().name == "step-00000005" != (ckpt / "last").resolve().name
    weights = ckpt / "step-00000005" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    last_before = (ckpt / "last").resolve().name
    resumed = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    assert "best checkpoint (step 5)" in resumed.stderr and str(weights) in resumed.stderr
    assert (ckpt / "last").resolve().name == last_before and not (tmp_path / "run" / "results.json").exists()


def test_a_step_folder_without_its_manifest_counts_as_damaged(tmp_path):
    model = nn.Linear(4, 3)
    for step in (5, 10):
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(tmp_path, step, lambda path: save_weights(model, path), {"step": step}, best=False)
    newest = tmp_path / "step-00000010"
    (newest / "manifest.json").unlink()  # the manifest is lost...
    with open(newest / "model.safetensors", "r+b") as f:  # ...and the weights damaged
        f.seek(100)
        f.write(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="manifest.json: missing"):
        verify_checkpoint(newest)
    with pytest.warns(UserWarning, match="skipping a damaged checkpoint"):
        folder, state = resume_point(tmp_path)
    assert folder.resolve().name == "step-00000005" and state["step"] == 5


# ---- messages that must not lie ----

@pytest.mark.slow
def test_divergence_before_the_first_checkpoint_says_there_is_none(tmp_path):
    proc = subprocess.run(train_cmd(tmp_path, "train.eval_every=100", "optim.lr=1e9", "optim.backbone_lr=1e9",
                                    "optim.max_grad_norm=0"), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1 and "training diverged" in proc.stderr, proc.stderr[-2000:]
    assert "no checkpoint was written yet" in proc.stderr and "last good checkpoint is" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last").exists()


def test_a_mistyped_allow_changes_key_exits_2_before_any_work(tmp_path):
    proc = subprocess.run(train_cmd(tmp_path, "--resume", "--allow-changes=optim.lr,optim.lrr"), cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--allow-changes: optim.lrr: not a config key" in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


def test_old_config_spellings_of_run_options_fail_naming_the_flag(tmp_path):
    from mm.config import ConfigError

    for key, flag in [("train.out_dir=x", "--out-dir"), ("train.progress=false", "--no-progress"),
                      ("train.plots=false", "--no-plots"), ("train.resume=true", "--resume"),
                      ("train.resume_allow_changes=[optim.lr]", "--allow-changes")]:
        with pytest.raises(ConfigError, match=f"'{key.split('=')[0]}' is not a config key any more.*{flag}"):
            load_config(None, [key])
    (tmp_path / "old.yaml").write_text("train:\n  out_dir: runs\n")
    with pytest.raises(ConfigError, match="old.yaml: 'train.out_dir' is not a config key any more"):
        load_config(tmp_path / "old.yaml")
