"""Which samples make each optimizer step: the schedule's length and an epoch's batches.

A micro-batch holds ``train.batch_size`` samples per rank, so the global batch is batch size x
ranks x ``optim.grad_accum_steps``. An epoch's micro-batches are a pure function of the seed, the
epoch and (with ``data.bucket_by_length``) the samples' lengths, so a resumed run sees exactly the
batches an uninterrupted one would; each rank reads its contiguous slice of each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

from torch.utils.data import DataLoader, Dataset

from mm.config import Config
from mm.run import distributed
from mm.run.distributed import Dist
from mm.run.runtime import epoch_batches, sort_lengths, train_subset
from mm.run.state import TrainState


@dataclass
class Plan:
    """The run's schedule of batches.

    Attributes:
        train_idx: the training samples the run uses (``data.train_fraction``).
        global_micro: samples per micro-batch over all ranks.
        accum: micro-batches per optimizer step.
        seed: the run's seed.
        lengths: one per sample of ``train_idx`` (length-grouped batches), or None.
        d: this process's rank.
        total_steps: optimizer steps of the whole run.
        eval_every: optimizer steps between validations.
    """

    train_idx: list[int]
    global_micro: int
    accum: int
    seed: int
    lengths: list[float] | None
    d: Dist
    total_steps: int = 0
    eval_every: int = 0

    @classmethod
    def build(cls, cfg: Config, train_set: Dataset, d: Dist) -> Plan:
        train_idx = train_subset(len(train_set), cfg.data.train_fraction, cfg.seed)
        # data.bucket_by_length: lengths read once from the tokenizer and file headers (less padding).
        lengths = sort_lengths(train_set.lengths(), train_idx) if cfg.data.bucket_by_length else None
        plan = cls(train_idx, cfg.train.batch_size * d.world, cfg.optim.grad_accum_steps, cfg.seed, lengths, d)
        plan.total_steps = cfg.train.max_steps or plan.steps_per_epoch * cfg.train.epochs
        plan.eval_every = cfg.train.eval_every or plan.steps_per_epoch
        return plan

    def micro(self, epoch: int) -> list[list[int]]:
        """The global micro-batches of an epoch (dataset indices)."""
        micro = epoch_batches(len(self.train_idx), self.global_micro, self.seed, epoch, self.lengths)
        return distributed.usable([[self.train_idx[i] for i in b] for b in micro], self.d)

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks."""
        return self.global_micro * self.accum

    @cached_property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.micro(0)) / self.accum)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def remaining(self, step: int) -> tuple[int, list[list[list[int]]]]:
        """The epoch ``step`` falls in and its optimizer steps still to run, each a list of micro-batches."""
        epoch, done = divmod(step, self.steps_per_epoch)
        micro = self.micro(epoch)
        return epoch, [micro[i : i + self.accum] for i in range(0, len(micro), self.accum)][done:]

    def is_eval(self, step: int) -> bool:
        """Validate (and checkpoint) after this step: every ``eval_every`` steps and at the end."""
        return step % self.eval_every == 0 or step == self.total_steps

    def is_log(self, step: int) -> bool:
        """Log the running loss every 10 steps and before each validation (so a resumed run's windows
        line up with an uninterrupted one's)."""
        return step % 10 == 0 or self.is_eval(step)

    def done(self, s: TrainState) -> bool:
        """The run has trained all its steps, or early stopping says so."""
        return s.step >= self.total_steps or s.stopper.should_stop

    def steps(self, s: TrainState, train_set: Dataset, loader: Callable[..., DataLoader]
              ) -> Iterator[tuple[list[list[int]], Iterator[dict]]]:
        """From ``s.step`` on until ``done``: each optimizer step's global micro-batches, with the iterator
        over this rank's batches of their epoch (one loader per epoch, its augmentation drawn from
        (seed, epoch, sample))."""
        while not self.done(s):
            epoch, groups = self.remaining(s.step)
            train_set.set_epoch(epoch)
            batches = iter(loader("train", [distributed.shard(b, self.d) for group in groups for b in group]))
            for group in groups:
                yield group, batches
                if self.done(s):
                    return
