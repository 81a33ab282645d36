"""What the loop reports as it goes: the running training loss of a logging window, and the progress bar."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from mm.run import distributed
from mm.run.distributed import Dist


class LossWindow:
    """The summed loss, micro-batch count and samples since the last log, kept on the device (no host
    sync per step). Checkpointed with the run, so a resumed run logs the same loss as an uninterrupted one."""

    def __init__(self) -> None:
        self.loss: float | torch.Tensor = 0.0
        self.n, self.samples, self.t = 0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.loss += loss
        self.n += 1
        self.samples += samples

    def flush(self, d: Dist) -> tuple[float, float]:
        """(mean loss over the window and the ranks, samples per second), then start a new window; a host sync."""
        mean = distributed.mean(float(self.loss) / self.n, d)
        rate = self.samples / (time.perf_counter() - self.t)
        self.__init__()
        return mean, rate

    def state_dict(self) -> dict[str, Any]:
        return {"loss": float(self.loss), "n": self.n, "samples": self.samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss, self.n, self.samples = state["loss"], state["n"], state["samples"]


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``train/lr/<part>`` of each parameter group (``backbone``, ``new``), as logged."""
    return {f"train/lr/{g['name'].split('/')[0]}": g["lr"] for g in optimizer.param_groups}


class Progress:
    """A tqdm bar of optimizer steps on stderr, showing the latest loss and validation metric (disabled: silent)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)
        self.shown: dict[str, str] = {}

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def show(self, key: str, value: float) -> None:
        self.shown[key] = f"{value:.3f}"
        self.bar.set_postfix(self.shown)

    def close(self) -> None:
        self.bar.close()
