"""Two processes on CPU (gloo), launched by a real ``torchrun``: the same training as one process
with the same global batch, exact resume after a SIGKILL, FSDP2, and the world-size rules."""

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

import mm.train as mm_train
from mm.config import load_config
from mm.run.distributed import Dist, eval_batches, shard, usable
from mm.run.options import RunOptions

ROOT = Path(__file__).resolve().parents[1]
# Text (frozen MiniLM, from the feature cache) + image (tiny ViT, fine-tuned); no dropout anywhere,
# so one process and two must compute the same gradients.
TINY = ["data.synthetic.n_train=160", "data.synthetic.n_val=48", "data.synthetic.n_test=50",
        "encoders.image.source=tiny-vit", "fusion.dropout=0.0", "wandb.mode=disabled",
        "train.max_steps=24", "train.eval_every=4"]


def opts(out: Path, **kw) -> RunOptions:
    return RunOptions(out_dir=str(out), progress=False, plots=False, **kw)


def torchrun(nproc: int, out: Path, name: str, *overrides: str, resume: bool = False, env: dict | None = None,
             **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "scripts" / "train.py"), *TINY, "--no-progress", "--no-plots", f"--out-dir={out}", f"name={name}",
           *overrides]
    if resume:
        cmd += ["--resume", str(out / name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (torchrun starts its workers in sessions of their own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in map(int, (task / "children").read_text().split()):
            found += [child, *descendants(child)]
    return found


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return err


def weights(run: Path, kind: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / kind / "model.safetensors"))


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_shards_cover_every_sample_once():
    micro = [list(range(i, i + 5)) for i in range(0, 15, 5)] + [[15]]
    ranks = [Dist(rank=r, world=2) for r in (0, 1)]
    assert usable(micro, ranks[0]) == micro[:3]  # a last micro-batch smaller than the world is dropped
    assert [shard(micro[0], d) for d in ranks] == [[0, 1], [2, 3, 4]]
    for n, bs, world in [(50, 8, 2), (48, 128, 2), (7, 2, 3), (400, 128, 1)]:
        per_rank = [eval_batches(n, bs, Dist(rank=r, world=world)) for r in range(world)]
        assert len({len(b) for b in per_rank}) == 1  # the same number of batches on every rank
        flat = [i for batches in per_rank for b in batches for i in b]
        assert flat == list(range(n)) and all(0 < len(b) <= bs for bs_ in per_rank for b in bs_)


def test_two_ranks_train_like_one_and_resume_exactly_after_sigkill(tmp_path):
    # One process with batch 16, two with 8 each: the same global batch.
    one = load_config(None, [*TINY, "name=one", "train.batch_size=16"])
    mm_train.train(one, opts(tmp_path))
    # A fresh cache folder: rank 0 builds the frozen text encoder's features, rank 1 then reads them.
    err = finish(torchrun(2, tmp_path, "two", "train.batch_size=8", env={"MM_CACHE": str(tmp_path / "cache")}))
    assert err.count("text train=built val=built test=built") == 1 and err.count("text train=hit val=hit test=hit") == 1
    # Kill the whole job (launcher and both ranks) with SIGKILL once a checkpoint exists, then resume.
    killed = torchrun(2, tmp_path, "killed", "train.batch_size=8")
    state = tmp_path / "killed" / "checkpoints" / "last" / "state.pt"
    deadline = time.monotonic() + 240
    while not state.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    for pid in [killed.pid, *descendants(killed.pid)]:
        os.kill(pid, signal.SIGKILL)
    killed.communicate()
    assert not (tmp_path / "killed" / "results.json").exists()  # it really died mid-run
    finish(torchrun(2, tmp_path, "killed", "train.batch_size=8", resume=True))

    w1, w2, wk = weights(tmp_path / "one"), weights(tmp_path / "two"), weights(tmp_path / "killed")
    assert w1.keys() == w2.keys() and len(w1) > 10
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
        assert torch.equal(wk[k], w2[k]), k  # exact resume under DDP
    r1, r2 = results(tmp_path / "one"), results(tmp_path / "two")
    assert r2["best_step"] == r1["best_step"] and r2["steps"] == r1["steps"] == 24
    for split in ("val", "test"):
        assert r2[split]["accuracy"] == r1[split]["accuracy"]  # every sample counted once
        assert r2[split]["loss"] == pytest.approx(r1[split]["loss"], rel=1e-4)
    assert results(tmp_path / "killed")["test"] == r2["test"]
    # Only rank 0 wrote: one metrics log, no second run folder.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["cache", "killed", "one", "two"]

    # Another world size: allowed with the same global batch (1 x 16), refused otherwise.
    with pytest.raises(ValueError, match="global batch of 16"):
        mm_train.train(load_config(None, [*TINY, "name=killed", "train.batch_size=8"]), opts(tmp_path, resume=True))
    again = mm_train.train(load_config(None, [*TINY, "name=killed", "train.batch_size=16", "train.max_steps=28"]),
                           opts(tmp_path, resume=True, allow_changes=("train.max_steps",)))
    assert again["steps"] == 28


def test_fsdp_two_ranks_train_like_one_and_resume_exactly_after_sigterm(tmp_path):
    one = load_config(None, [*TINY, "name=one", "train.batch_size=16"])
    mm_train.train(one, opts(tmp_path))
    finish(torchrun(2, tmp_path, "fsdp", "train.batch_size=8", "train.strategy=fsdp"))
    w1, wf = weights(tmp_path / "one"), weights(tmp_path / "fsdp")
    assert w1.keys() == wf.keys()
    for k in w1:
        torch.testing.assert_close(wf[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    assert results(tmp_path / "fsdp")["test"]["accuracy"] == results(tmp_path / "one")["test"]["accuracy"]

    # SIGTERM to torchrun (what a scheduler sends): it passes the signal to both ranks, which agree
    # to stop after the same step, gather the sharded state into one checkpoint and exit 143.
    stopped = torchrun(2, tmp_path, "stopped", "train.batch_size=8", "train.strategy=fsdp")
    state = tmp_path / "stopped" / "checkpoints" / "step-00000004"
    deadline = time.monotonic() + 240
    while not state.exists() and stopped.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode != 0 and "stopped by SIGTERM" in err, err[-3000:]
    assert not (tmp_path / "stopped" / "results.json").exists()
    finish(torchrun(2, tmp_path, "stopped", "train.batch_size=8", "train.strategy=fsdp", resume=True))
    ws = weights(tmp_path / "stopped")
    assert all(torch.equal(ws[k], wf[k]) for k in wf)  # exact resume under FSDP
    assert results(tmp_path / "stopped")["test"] == results(tmp_path / "fsdp")["test"]
