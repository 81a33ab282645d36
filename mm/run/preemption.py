"""Stopping cleanly when told to: SIGTERM (what schedulers send before they kill), SIGINT (Ctrl-C)
and SIGUSR1 (SLURM's ``--signal=USR1@120`` warning) finish the current optimizer step, checkpoint,
flush the logs and exit with status ``128 + signal`` (143, 130, 138). ``--resume`` continues.

A signal only sets a flag, which the training loop reads between optimizer steps; a second signal
while the checkpoint is being written sets it again and changes nothing (and the checkpoint is
switched in atomically in any case, ``mm.run.checkpoint.save_checkpoint``).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from mm.run import distributed
from mm.run.distributed import Dist

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Preempted(KeyboardInterrupt):
    """The run stopped on a signal after saving its checkpoint. A ``KeyboardInterrupt``, so that code
    running runs (a grid) stops as it does on Ctrl-C instead of counting it as a failed run.

    Attributes:
        signum: the signal.
        step: the optimizer step the checkpoint holds.
        run_dir: the run folder, for ``--resume``.
    """

    def __init__(self, signum: int, step: int, run_dir: str) -> None:
        self.signum, self.step, self.run_dir = signum, step, run_dir
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved. "
                         f"Continue with: python scripts/train.py --resume {run_dir}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While active, the signals above set ``requested`` (the signal number) instead of killing.

    Only the main thread can install handlers; elsewhere (a run started from a thread) this does
    nothing and the signals keep their default behaviour.
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def agreed(self, d: Dist) -> bool:
        """Whether to stop now: a signal reached this process, or (under torchrun) any rank (a collective)."""
        stop = self.requested is not None
        return distributed.mean(float(stop), d) > 0 if d.enabled else stop

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.requested is not None:  # stopping: more signals are absorbed until the process exits
            return
        for s, handler in self._previous.items():
            signal.signal(s, handler)
