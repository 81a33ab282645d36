#!/usr/bin/env python
"""Where one training step spends its time: ``torch.profiler`` over steps of mm's loop pieces.

    python scripts/bench/profile_step.py [--config configs/default.yaml] [--steps 5] [--out runs/bench] [key=value ...]
    python scripts/bench/profile_step.py --hub [--steps 2]     # BERT-base + ViT-B/16 sized, random weights

Default: the job ``make train`` runs (``configs/default.yaml``), built by ``mm.prepare``: each step
is labelled in phases (``data``: the loader's next batch; ``forward_backward``: ``mm.train.train_step``;
``clip``, ``optimizer``: as the loop does them) after one untimed step. ``--hub``: the sizes of
``configs/hub_gpu.yaml``'s text and image backbones (BERT-base at 128 tokens, ViT-B/16 at 224 px,
random weights from their configurations, batch 8) trained one step each on this CPU. Writes the
phase totals and the 25 most expensive operators (self CPU time) to ``<out>/profile_<job>.txt``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402


def default_job(config: str, overrides: list[str], steps: int):
    """A generator of labelled steps of the config's job (mm's own loop pieces)."""
    from mm.config import load_config
    from mm.prepare import prepare
    from mm.run.optim import build_optimizer
    from mm.run.runtime import epoch_batches, seed_everything
    from mm.train import train_step

    cfg = load_config(config, [*overrides, "wandb.mode=disabled"])
    seed_everything(cfg.seed, cfg.train.deterministic)
    job = prepare(cfg)
    model = job.model.train()
    optimizer = build_optimizer(model, cfg.optim)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = iter(job.loader("train", epoch_batches(len(job.splits["train"]), cfg.train.batch_size, 0, 0)[: steps + 1]))

    def step() -> None:
        with record_function("data"):
            batch = next(batches)
        with record_function("forward_backward"):
            train_step(model, batch, job.device, cfg.train.precision, 1.0)
        with record_function("clip"):
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or math.inf)
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step


def hub_job():
    import gpu

    jobs = [gpu.bert_job(8, torch.device("cpu")), gpu.vit_job(8, torch.device("cpu"))]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True) for m, _, _ in jobs]

    def step() -> None:
        for name, (model, loss_fn, _), opt in zip(("bert_base", "vit_b16"), jobs, optimizers, strict=True):
            model.train()
            with record_function(f"{name}_forward_backward"):
                loss_fn().backward()
            with record_function(f"{name}_optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--hub", action="store_true", help="BERT-base + ViT-B/16 sized step instead")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    step = hub_job() if args.hub else default_job(args.config, args.overrides, args.steps)
    step()  # warm-up: first-call allocations and lazy initialisation, not profiled
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    names = ([f"{m}_{p}" for m in ("bert_base", "vit_b16") for p in ("forward_backward", "optimizer")] if args.hub
             else ["data", "forward_backward", "clip", "optimizer"])
    phases = sorted((e for e in events if e.key in names), key=lambda e: -e.cpu_time_total)
    total = sum(e.cpu_time_total for e in phases)
    lines = [f"threads {torch.get_num_threads()}, steps {args.steps}, job {'hub' if args.hub else args.config}",
             "phase | ms per step | share"]
    lines += [f"{e.key} | {e.cpu_time_total / 1e3 / args.steps:.1f} | {e.cpu_time_total / total:.1%}" for e in phases]
    lines += ["", events.table(sort_by="self_cpu_time_total", row_limit=25)]
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile_{'hub' if args.hub else Path(args.config).stem}.txt"
    path.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
