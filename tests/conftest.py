"""Shared fixtures: an isolated cache, no model-hub access, tiny backbones built once per session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# huggingface_hub reads these when it is first imported, so they are set before any test module
# imports transformers or timm: any attempt to download fails instead of hanging on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# A test calls a script as the command line does, through its main(argv): ``import ablate``, then
# ``ablate.main([...])``. scripts/ goes on sys.path here, once, instead of loading files by path:
# the test gets the one module object the script's own imports and monkeypatching see, and a
# script's name is checked by the import (no installed distribution shadows one).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


@pytest.fixture(scope="session", autouse=True)
def mm_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ``MM_CACHE`` for the whole session (tiny backbones, synthetic data)."""
    root = tmp_path_factory.mktemp("mm_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MM_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def tiny_bert(mm_cache: Path) -> Path:
    """Folder of the tiny random BERT checkpoint (hub layout, with tokenizer)."""
    from mm.encoders.sources import resolve_source

    return Path(resolve_source("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_vit(mm_cache: Path) -> Path:
    """Folder of the tiny random timm ViT checkpoint (timm hub layout)."""
    from mm.encoders.sources import resolve_source

    return Path(resolve_source("tiny-vit"))


@pytest.fixture(scope="session")
def tiny_wav2vec2(mm_cache: Path) -> Path:
    """Folder of the tiny random wav2vec2 checkpoint (hub layout, with feature extractor)."""
    from mm.encoders.sources import resolve_source

    return Path(resolve_source("tiny-wav2vec2"))
