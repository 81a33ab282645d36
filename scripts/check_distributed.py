#!/usr/bin/env python
"""Measure how closely torchrun with N processes reproduces one process with the same global batch.

    python scripts/check_distributed.py [--nproc 2] [--strategy ddp|fsdp] [--out runs/check_distributed] [key=value ...]

Trains the same config twice on CPU (gloo): once in one process with ``train.batch_size = B x N``,
once under ``torchrun --nproc_per_node=N`` with ``train.batch_size = B``; then prints the largest
absolute and relative weight difference after the last step and both runs' val/test metrics and
wall times. Default: the synthetic benchmark, frozen MiniLM (cached) + tiny ViT fine-tuned, no
dropout (dropout masks differ between ranks by design), 40 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
BASE = ["data.synthetic.n_train=640", "data.synthetic.n_val=160", "data.synthetic.n_test=160",
        "encoders.image.source=tiny-vit", "fusion.dropout=0.0", "train.max_steps=40", "train.eval_every=10",
        "--no-progress", "--no-plots", "wandb.mode=disabled", "train.device=cpu"]


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16, help="per-process batch B of the N-process run")
    parser.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp"])
    parser.add_argument("--out", type=Path, default=Path("runs/check_distributed"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    common = [*BASE, *args.overrides, f"--out-dir={args.out}"]
    stamp = time.strftime("%H%M%S")
    one, many = f"one-{stamp}", f"{args.strategy}{args.nproc}-{stamp}"
    t1 = run([sys.executable, "scripts/train.py", *common, f"name={one}", f"train.batch_size={args.batch * args.nproc}"])
    tn = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
              "scripts/train.py", *common, f"name={many}", f"train.batch_size={args.batch}",
              f"train.strategy={args.strategy}"])
    wa = load_file(str(args.out / one / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(args.out / many / "checkpoints" / "last" / "model.safetensors"))
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    scale = max(float(wa[k].abs().max()) for k in wa)
    ra, rb = (json.loads((args.out / n / "results.json").read_text()) for n in (one, many))
    print(json.dumps({
        "nproc": args.nproc, "strategy": args.strategy, "global_batch": args.batch * args.nproc,
        "steps": ra["steps"], "tensors": len(wa), "max_abs_weight_diff": diff, "max_abs_weight": scale,
        "one_process": {"val": ra["val"], "test": ra["test"], "wall_s": round(t1, 1)},
        f"{args.nproc}_processes": {"val": rb["val"], "test": rb["test"], "wall_s": round(tn, 1)},
    }, indent=1))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
