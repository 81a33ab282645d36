"""Early stopping on the validation metric that also picks the best checkpoint."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EarlyStopping:
    """Tracks the best validation value; ``should_stop`` after ``patience`` validations without an
    improvement larger than ``min_delta`` (``patience`` 0 never stops)."""

    mode: str = "max"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record a validation; return True when it is a new best."""
        if self.best is None or (value - self.best if self.mode == "max" else self.best - value) > self.min_delta:
            self.best, self.best_step, self.bad_evals = value, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience
