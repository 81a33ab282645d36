"""Distributed helpers for runs launched by ``torchrun``: who am I, who writes, who gets which batch.

``torchrun --nproc_per_node=N scripts/train.py ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; ``init`` joins them into one process
group (NCCL on GPUs, gloo on CPU). Without torchrun ``init`` returns a single-process ``Dist`` and
every helper here is a no-op, so the loop reads the same either way.

Batches: the epoch's global micro-batches come from ``mm.run.runtime.epoch_batches`` with the global
size (per-rank batch x world size); rank ``r`` takes the ``r``-th contiguous slice of each
(``shard``). Evaluation splits are cut into ``world x k`` contiguous pieces so that every rank
runs the same number of batches (FSDP needs that) and the gathered outputs come back in split
order, each sample exactly once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (``world == 1``: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"  # where collectives' tensors live: NCCL needs them on the GPU

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder, checkpoints and W&B."""
        return self.rank == 0


def init(device: torch.device) -> Dist:
    """Join the process group torchrun set up (once per process); single-process without torchrun.

    Args:
        device: the device the run asked for; CUDA runs use NCCL and ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local,
                device=f"cuda:{local}" if device.type == "cuda" else "cpu")


def rank_device(device: torch.device, d: Dist) -> torch.device:
    """``cuda:LOCAL_RANK`` for a distributed CUDA run; ``device`` otherwise."""
    return torch.device("cuda", d.local_rank) if d.enabled and device.type == "cuda" else device


def seed_ranks(seed: int, d: Dist) -> None:
    """Under torchrun, a different torch seed per rank for a fresh run, so dropout masks differ between ranks."""
    if d.enabled:
        torch.manual_seed(seed + 7919 * d.rank)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first(d: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (building the feature cache, say); the others wait, then run it
    and find its results on disk."""
    if not d.main:
        barrier(d)
    yield
    if d.main:
        barrier(d)


def broadcast(value: T, d: Dist) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not d.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T, d: Dist) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank (any picklable object)."""
    if not d.enabled:
        return [value]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, value)
    return out


def mean(value: float, d: Dist) -> float:
    """The mean of a float over the ranks (one all-reduce)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return float(t) / d.world


def shard(batch: Sequence[T], d: Dist) -> list[T]:
    """Rank ``r``'s contiguous slice of a global batch (sizes differ by at most one)."""
    n, r, w = len(batch), d.rank, d.world
    return list(batch[r * n // w : (r + 1) * n // w])


def usable(micro: list[list[int]], d: Dist) -> list[list[int]]:
    """An epoch's global micro-batches that every rank can take a slice of: under torchrun a final
    micro-batch with fewer samples than ranks is dropped (each rank needs at least one sample)."""
    return [b for b in micro if len(b) >= d.world]


def eval_batches(n: int, batch_size: int, d: Dist) -> list[list[int]]:
    """This rank's batches of an ``n``-sample evaluation split: ``world x k`` contiguous pieces of at
    most ``batch_size``, rank ``r`` taking pieces ``r k ... (r+1) k - 1``, so every rank runs ``k``
    batches and rank order is split order."""
    k = max(1, -(-n // (batch_size * d.world)))
    pieces = d.world * k
    bounds = [i * n // pieces for i in range(pieces + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(d.rank * k, (d.rank + 1) * k)]


def close(d: Dist) -> None:
    """End the job's process group, all ranks together: a barrier first, so no rank tears the group
    down while another still uses it (a rank destroying its group early left the job hanging at exit
    now and then, pytorch/pytorch#75097)."""
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, strategy: str, device: torch.device, sync_batchnorm: bool) -> torch.nn.Module:
    """The module the training loop runs forward through: ``model`` itself in a single process,
    DistributedDataParallel under torchrun (``strategy="ddp"``), or ``model`` sharded in place by
    FSDP2's ``fully_shard`` (each encoder, then the whole model; ``strategy="fsdp"``).

    Call it before building the optimizer (FSDP replaces parameters by sharded DTensors). DDP
    averages gradients over the ranks during backward; ``find_unused_parameters`` is on because a
    missing or dropped modality leaves its encoder without a gradient in some batches.
    """
    if not d.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for encoder in model.encoders.values():
            fully_shard(encoder)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm and device.type == "cuda":  # BatchNorm statistics over every rank's samples
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def no_sync(wrapper: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on a micro-batch that is not the last of its optimizer step."""
    if sync or not dist.is_initialized():
        return contextlib.nullcontext()
    if hasattr(wrapper, "no_sync"):  # DDP
        return wrapper.no_sync()
    return _fsdp_no_sync(wrapper)


@contextlib.contextmanager
def _fsdp_no_sync(model: torch.nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def model_state(model: torch.nn.Module, strategy: str, d: Dist) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights; under FSDP a collective that every rank must call, with the
    tensors on rank 0 only (on CPU)."""
    if not (d.enabled and strategy == "fsdp"):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], strategy: str, d: Dist) -> tuple:
    """Load full weights (every rank has read them) into a plain or FSDP-sharded model; returns
    ``(missing, unexpected)`` keys like ``load_state_dict(strict=False)``."""
    if not (d.enabled and strategy == "fsdp"):
        return model.load_state_dict(state, strict=False)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, strategy: str, d: Dist) -> dict:
    """The optimizer's state to save: its own ``state_dict``, or under FSDP the full state keyed by
    parameter name (a collective; complete on rank 0)."""
    if not (d.enabled and strategy == "fsdp"):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, strategy: str,
                         d: Dist) -> None:
    if not (d.enabled and strategy == "fsdp"):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # strict=False: a parameter that never had a gradient (an unused "missing" embedding) has no state.
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))
