"""Faults, tested for real: a process SIGKILLed inside a checkpoint write, files altered or truncated
on disk, SIGTERM and a second signal, non-finite losses, and resuming with a changed config.

The reference is always an uninterrupted run of the same config; "exact" means bitwise equal
weights and equal metrics.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mm.train as mm_train
from mm.analysis.evaluation import load_run
from mm.config import ConfigError, load_config
from mm.run.checkpoint import CheckpointError, verify_checkpoint
from mm.run.optim import lr_factor
from mm.run.options import RunOptions
from mm.run.resume import ResumeError

ROOT = Path(__file__).resolve().parents[1]
# The setting: small synthetic runs with a checkpoint every 5 steps.
RUN = ["data.synthetic.n_train=320", "data.synthetic.n_val=64", "data.synthetic.n_test=64", "train.batch_size=16",
       "train.epochs=2", "train.eval_every=5", "encoders.image.source=tiny-vit", "encoders.text.source=tiny-bert",
       "encoders.text.trainable=full", "wandb.mode=disabled"]
FLAGS = ["--no-progress", "--no-plots"]  # scripts/train.py's run options for RUN


def cfg(out: Path, *extra: str):
    return load_config(None, [*RUN, "name=run", *extra])


def opts(out: Path, **kw) -> RunOptions:
    return RunOptions(out_dir=str(out), progress=False, plots=False, **kw)


def last_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def same_run(a: dict, b: dict) -> None:
    assert a["steps"] == b["steps"] and a["best_step"] == b["best_step"]
    assert a["val"] == b["val"] and a["test"] == b["test"]
    wa, wb = last_weights(Path(a["run_dir"])), last_weights(Path(b["run_dir"]))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return mm_train.train(cfg(out), opts(out))


# A child process that SIGKILLs itself at a chosen point of the checkpoint at step 10.
KILL_INSIDE_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import mm.run.checkpoint as ck
point = {point!r}
real_save, real_point = ck.torch.save, ck._point
def save(obj, path, *a, **k):
    if point == "state" and path.name == "state.pt" and obj["step"] == 10:
        with open(path, "wb") as f:
            f.write(b"half a state")  # a torn file on disk, then death
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *a, **k)
def link(root, name, target):
    if point == "link" and name == "last" and target.name.endswith("00000010"):
        os.kill(os.getpid(), signal.SIGKILL)  # the step folder is complete; `last` not switched yet
    return real_point(root, name, target)
ck.torch.save, ck._point = save, link
sys.argv = ["train.py", *{args!r}]
import runpy
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.parametrize("point", ["state", "link"])
def test_sigkill_inside_a_checkpoint_write_resumes_exactly(tmp_path, reference, point):
    args = [*RUN, *FLAGS, f"--out-dir={tmp_path}", "name=run"]
    code = KILL_INSIDE_SAVE.format(root=str(ROOT), point=point, args=args, script=str(ROOT / "scripts/train.py"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "last").resolve().name == "step-00000005"  # still the previous complete checkpoint
    resumed = mm_train.train(cfg(tmp_path), opts(tmp_path, resume=True))
    same_run(resumed, reference)


@pytest.mark.parametrize("damage", ["altered", "truncated-state", "empty-state"])
def test_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, damage, monkeypatch):
    # Die during step 11 (checkpoints at steps 5 and 10 exist), damage step 10's files, resume.
    real_step, calls = mm_train.train_step, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(mm_train, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        mm_train.train(cfg(tmp_path), opts(tmp_path))
    monkeypatch.setattr(mm_train, "train_step", real_step)
    run = tmp_path / "run"
    last = (run / "checkpoints" / "last").resolve()
    if damage == "altered":  # 400 bytes overwritten in place: same size, different contents
        with open(last / "model.safetensors", "r+b") as f:
            f.seek(2000)
            f.write(os.urandom(400))
    else:
        with open(last / "state.pt", "r+b") as f:
            f.truncate(0 if damage == "empty-state" else 100)
    with pytest.raises(CheckpointError, match="model.safetensors|state.pt"):
        verify_checkpoint(last)
    with pytest.warns(UserWarning, match="skipping a damaged checkpoint"):
        resumed = mm_train.train(cfg(tmp_path), opts(tmp_path, resume=True))
    same_run(resumed, reference)  # resumed from step 5: the same run in the end


def test_altered_best_checkpoint_is_refused_by_evaluate(tmp_path):
    run = Path(mm_train.train(cfg(tmp_path, "train.max_steps=5"), opts(tmp_path))["run_dir"])
    with open(run / "checkpoints" / "best" / "model.safetensors", "r+b") as f:
        f.seek(3000)
        f.write(b"\0" * 64)
    with pytest.raises(CheckpointError, match="differ from the manifest"):
        load_run(run)


def test_one_nan_batch_is_skipped_and_counted(tmp_path, monkeypatch):
    real_step, calls = mm_train.train_step, {"n": 0}

    def poisoned(model, batch, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third micro-batch (optimizer step 3) has a NaN picture
            batch["image"]["pixel_values"][0] = math.nan
        return real_step(model, batch, *a, **k)

    monkeypatch.setattr(mm_train, "train_step", poisoned)
    results = mm_train.train(cfg(tmp_path, "train.max_steps=4", "train.eval_every=1", "train.keep_last_n=10"), opts(tmp_path))
    assert results["nonfinite_skipped"] == 1 and results["steps"] == 4
    ckpt = Path(results["run_dir"]) / "checkpoints"
    before, after, next_ = (load_file(str(ckpt / f"step-0000000{k}" / "model.safetensors")) for k in (2, 3, 4))
    assert all(torch.equal(before[k], after[k]) for k in before)  # step 3 changed nothing
    assert any(not torch.equal(after[k], next_[k]) for k in after)  # step 4 trained again
    logged = [json.loads(x) for x in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/nonfinite_skipped"] for r in logged if "train/nonfinite_skipped" in r] == [0, 0, 1, 1]


def test_persistent_nan_stops_and_saves_nothing_non_finite(tmp_path):
    # The divergence: huge learning rates, no clipping.
    proc = subprocess.run([sys.executable, "scripts/train.py", *RUN, *FLAGS, f"--out-dir={tmp_path}", "name=run",
                           "optim.lr=1e9", "optim.backbone_lr=1e9", "optim.max_grad_norm=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "training diverged" in proc.stderr and "in a row" in proc.stderr, proc.stderr[-2000:]
    for weights in (tmp_path / "run" / "checkpoints").glob("step-*/model.safetensors"):
        assert all(bool(torch.isfinite(t).all()) for t in load_file(str(weights)).values())
    assert not (tmp_path / "run" / "results.json").exists()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm-twice"])
def test_sigterm_checkpoints_the_current_step_and_resume_is_exact(tmp_path, reference, signals):
    proc = subprocess.Popen([sys.executable, "scripts/train.py", *RUN, *FLAGS, f"--out-dir={tmp_path}", "name=run"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "run" / "checkpoints" / "step-00000005", proc)
    for _ in range(signals):  # a second signal lands while the first one's checkpoint is written
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "stopped by SIGTERM" in err and "--resume" in err, err[-2000:]
    last = (tmp_path / "run" / "checkpoints" / "last").resolve()
    verify_checkpoint(last)
    step = int(last.name.split("-")[1])
    assert 5 <= step < 40  # saved mid-run (often between two validations)
    if signals == 1:  # what a requeued cluster job runs: the same command, --auto-resume
        proc = subprocess.run([sys.executable, "scripts/train.py", "--auto-resume", *RUN, *FLAGS,
                               f"--out-dir={tmp_path}", "name=run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    else:
        resumed = mm_train.train(cfg(tmp_path), opts(tmp_path, resume=True))
    same_run(resumed, reference)


def test_resume_with_a_changed_config_is_refused_or_applied(tmp_path):
    mm_train.train(cfg(tmp_path, "train.max_steps=10"), opts(tmp_path))
    config_before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ResumeError) as err:
        mm_train.train(cfg(tmp_path, "train.max_steps=10", "optim.lr=0.01", "optim.max_grad_norm=5"),
                       opts(tmp_path, resume=True))
    assert "optim.lr: 0.001 -> 0.01" in str(err.value) and "optim.max_grad_norm: 1.0 -> 5.0" in str(err.value)
    assert (tmp_path / "run" / "config.yaml").read_text() == config_before  # nothing written

    # Allowed: the new learning rate really applies from the resumed step on, and is recorded.
    results = mm_train.train(cfg(tmp_path, "train.max_steps=20", "optim.lr=0.01"),
                             opts(tmp_path, resume=True, allow_changes=("optim.lr", "train.max_steps")))
    assert results["steps"] == 20
    run = tmp_path / "run"
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    new_lr = {r["step"]: r["train/lr/new"] for r in logged if "train/lr/new" in r}
    assert new_lr[15] == pytest.approx(0.01 * lr_factor(15, 20, 1, "cosine"))  # new base lr, new length
    changes = json.loads((run / "resume_changes.jsonl").read_text())
    assert changes["step"] == 10 and changes["changes"]["optim.lr"] == [0.001, 0.01]
    assert "lr: 0.01" in (run / "config.yaml").read_text()


def test_run_names_cannot_leave_the_output_folder(tmp_path):
    for name in ("../../x", "/abs/dir", "a/b", ".."):
        with pytest.raises(ConfigError, match="'name'"):
            load_config(None, [f"name={name}"])
