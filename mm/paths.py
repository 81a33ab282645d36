"""Where mm keeps generated artefacts (synthetic data, tiny backbones, feature caches)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$MM_CACHE`` if set, else ``~/.cache/mm``."""
    root = Path(os.environ.get("MM_CACHE", Path.home() / ".cache" / "mm")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
