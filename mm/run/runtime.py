"""The runtime under the loop: device, precision, moving batches, seeding, deterministic (length-grouped) batches.

Everything here is a small pure helper that the training loop, the feature cache, evaluation,
learning curves and baselines share; nothing here imports the loop, so no module needs the loop
for a helper. Distributed helpers (rank, world size, sharding) live in ``mm.run.distributed``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when there is one, else CPU; anything else as ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (``auto`` or ``bf16``); fp16 autocast when asked for (on any device:
    the training loop pairs it with a GradScaler); plain fp32 otherwise (``bf16`` on a CPU too)."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def fast_float32(device: torch.device, precision: str) -> bool:
    """On CUDA with reduced precision (``auto`` / ``bf16`` / ``fp16``), let the matmuls and cuDNN
    convolutions that stay in fp32 under autocast use TF32 tensor cores (10-bit mantissa, like bf16's
    7 or fp16's 10: no less exact than the run's own precision). ``fp32`` runs stay IEEE fp32, and a
    CPU has no TF32. Returns whether TF32 is on."""
    on = device.type == "cuda" and precision in ("auto", "bf16", "fp16")
    if on:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return on


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block with python, numpy and torch (CPU) RNGs seeded by ``seed``, then restore them.

    Random preprocessing (augmentation) draws from all three; seeding them per sample and epoch
    makes an augmented epoch the same on every run and after a resume, whatever the worker count.
    """
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (nested dicts of tensors) on ``device``; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


POOL_BATCHES = 16  # length-grouped batches: lengths are sorted only within random pools of this many batches


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: Sequence[float] | None = None,
                  pool: int = POOL_BATCHES) -> list[list[int]]:
    """The micro-batches of one epoch: a permutation drawn from (seed, epoch) alone, so a
    resumed run sees exactly the batches an uninterrupted one would.

    With ``lengths`` (one per sample, ``data.bucket_by_length``) the batches hold samples of similar
    length, so that little of each is padding: the permutation is cut into pools of ``pool``
    batches, each pool is sorted by length (stable: equal lengths keep their random order) and
    cut into batches, and the full batches are shuffled (the short last one stays last). Sorting
    only within a random pool keeps the length range of a batch, and so the labels that go with
    length, as varied as a random pool of ``pool x batch_size`` samples; shuffling the batches
    keeps consecutive steps from walking long-to-short through a pool. Still a pure function of
    (seed, epoch, lengths).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(lengths) != n:
        raise ValueError(f"lengths: {len(lengths)} values for {n} samples")
    batches = []
    for start in range(0, n, batch_size * pool):
        chunk = sorted(perm[start : start + batch_size * pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    short = batches[-1:] if len(batches[-1]) < batch_size else []
    full = batches[: len(batches) - len(short)]
    return [full[k] for k in torch.randperm(len(full), generator=g).tolist()] + short


def sort_lengths(per_modality: Mapping[str, Sequence[int]], subset: Sequence[int]) -> list[float] | None:
    """One length per sample of ``subset`` from a dataset's ``lengths()`` (modality -> one per sample),
    for ``epoch_batches``: the length itself with one modality that has lengths; with several (text
    and audio), the sum of each one's length over its longest in the subset. None when no modality's
    length matters (pictures only)."""
    if not per_modality:
        return None
    if len(per_modality) == 1:
        (values,) = per_modality.values()
        return [float(values[i]) for i in subset]
    longest = {m: max(1, max(values[i] for i in subset)) for m, values in per_modality.items()}
    return [sum(values[i] / longest[m] for m, values in per_modality.items()) for i in subset]


def train_subset(n: int, fraction: float, seed: int) -> list[int]:
    """The training indices a run uses: a seeded random ``fraction`` of ``n`` (all when 1). Smaller
    fractions are prefixes of larger ones, so a data curve's subsets are nested."""
    if fraction >= 1:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[: max(1, round(fraction * n))])
