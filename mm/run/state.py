"""The training state a checkpoint holds, and writing it: ``TrainState`` and ``Checkpointer``.

A checkpoint is the weights (safetensors; backbones frozen for the whole run left out, they reload
from their source) plus a ``state.pt`` of plain types and tensors: optimizer, schedule, GradScaler,
step, early stopping, the non-finite counts, the running loss window, every rank's RNG, and the
resolved config it was trained with. ``mm.run.resume.restore`` puts it back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mm.config import Config
from mm.model import MultimodalModel
from mm.run import distributed
from mm.run.checkpoint import frozen_backbones, save_checkpoint, save_weights
from mm.run.distributed import Dist
from mm.run.guard import Divergence
from mm.run.progress import LossWindow
from mm.run.stopping import EarlyStopping


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the resolved config (recorded in each checkpoint)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class TrainState:
    """What the loop changes as it goes."""

    model: MultimodalModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    stopper: EarlyStopping
    window: LossWindow = field(default_factory=LossWindow)
    step: int = 0


@dataclass
class Checkpointer:
    """Writes complete checkpoints of one run into ``root`` (``mm.run.checkpoint.save_checkpoint``).

    Attributes:
        root: the run's ``checkpoints`` folder.
        omit: frozen backbones left out of the weights (``frozen_backbones``).
        keep_last: step folders kept besides ``best``.
        strategy: ``train.strategy`` (FSDP gathers weights and optimizer state with collectives).
        d: this process's rank; rank 0 writes.
        fixed: what every checkpoint of the run records alike (config, classes, world size, global batch).
    """

    root: Path
    omit: dict[str, str]
    keep_last: int
    strategy: str
    d: Dist
    fixed: dict[str, Any]

    @classmethod
    def build(cls, ckpt_dir: Path, model: MultimodalModel, cfg: Config, config: dict[str, Any], classes: list,
              global_batch: int, d: Dist) -> Checkpointer:
        """The run's checkpointer; call before the model is wrapped for the ranks (it hashes frozen backbones)."""
        fixed = {"world": d.world, "strategy": cfg.train.strategy, "global_batch": global_batch, "classes": classes,
                 "config": config, "config_hash": config_hash(config)}
        return cls(ckpt_dir, frozen_backbones(model), cfg.train.keep_last_n, cfg.train.strategy, d, fixed)

    def save(self, s: TrainState, divergence: Divergence, best: bool) -> None:
        """Check that nothing non-finite is about to be saved, then write one checkpoint (a collective
        under torchrun: every rank calls it) and switch ``last`` (and ``best``) to it."""
        divergence.check(s.step)
        divergence.check_weights(s.model, s.step)
        weights = distributed.model_state(s.model, self.strategy, self.d)  # a collective under FSDP
        optim_state = distributed.optimizer_state(s.model, s.optimizer, self.strategy, self.d)
        rngs = distributed.gather(torch.get_rng_state(), self.d)
        windows = distributed.gather(s.window.state_dict(), self.d)
        if not self.d.main:
            return
        state = {"optimizer": optim_state, "scheduler": s.scheduler.state_dict(), "step": s.step,
                 "early_stopping": vars(s.stopper), "rng": rngs[0], "rng_ranks": rngs, "window_ranks": windows,
                 "scaler": s.scaler.state_dict(), "nonfinite": divergence.state_dict(), **self.fixed}
        save_checkpoint(self.root, s.step, lambda path: save_weights(s.model, path, self.omit, weights), state, best,
                        self.keep_last)
