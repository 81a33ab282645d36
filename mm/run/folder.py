"""The run folder: ``out_dir/name``, created (a new run never overwrites an old one)."""

from __future__ import annotations

from pathlib import Path

from mm.config import Config
from mm.run import distributed
from mm.run.distributed import Dist


def default_run_name(cfg: Config) -> str:
    data = cfg.data.task if cfg.data.dataset == "synthetic" else Path(cfg.data.dataset).name
    return f"{data}-{'+'.join(sorted(cfg.data.modalities))}-{cfg.fusion.name}-s{cfg.seed}"


def run_folder(cfg: Config, d: Dist | None = None) -> Path:
    """``out_dir/name``, created; a new run never overwrites an old one (``-2``, ``-3``... are appended)."""
    d = d or Dist()
    base = Path(cfg.train.out_dir) / (cfg.name or default_run_name(cfg))
    if cfg.train.resume:
        if not (base / "checkpoints").is_dir():
            raise FileNotFoundError(f"train.resume: no checkpoint to resume in {base}/checkpoints")
        return base
    run_dir, k = base, 1
    while d.main:  # claimed by creating it: two runs starting at once never share a folder
        try:
            run_dir.mkdir(parents=True)
            break
        except FileExistsError:
            k += 1
            run_dir = base.with_name(f"{base.name}-{k}")
    return distributed.broadcast(run_dir, d)  # rank 0 picks the name; every rank uses it
