"""W&B isolation for tests: no API key, mode or server from the environment, every W&B folder in a tmp dir.

Reading back what a run logged offline is the library's (``mm.wandb_offline``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_FOLDERS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")


def isolate_wandb(monkeypatch: Any, root: Path) -> None:
    """No API key, mode or server from the environment, and every W&B folder under ``root``."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in _FOLDERS:
        monkeypatch.setenv(name, str(root / name.lower()))
    monkeypatch.setenv("NETRC", str(root / "netrc"))
