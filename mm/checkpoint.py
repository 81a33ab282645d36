"""Checkpoints: weights as safetensors, the rest (optimizer, schedule, RNG, counters) as a
``torch.save`` dict of tensors and plain types that loads with ``weights_only=True``.

A backbone frozen for the whole run holds exactly the weights of its source, so checkpoints leave
it out (``frozen_backbones``): a grid of frozen-MiniLM runs then writes a few MB per checkpoint
instead of 90. The file's metadata records each omitted module with the digest of its weights;
``load_weights`` expects exactly those keys to be missing and, unless told not to, checks that the
rebuilt model's weights there still have that digest, so a source that changed since training is an
error, never a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

OMITTED = "mm.omitted"  # metadata key: {module prefix: weights digest} of the modules left out


def weights_digest(module: nn.Module) -> str:
    """sha256 over the sorted ``state_dict`` entries: name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def frozen_backbones(model: nn.Module) -> dict[str, str]:
    """``{"encoders.<m>.backbone": digest}`` for every encoder of ``model`` frozen for the whole run."""
    return {f"encoders.{m}.backbone": enc.weights_digest() for m, enc in model.encoders.items() if enc.frozen_for_run}


def _under(key: str, prefixes: Any) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def save_weights(model: nn.Module | None, path: Path, omit: dict[str, str] | None = None,
                 weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write the weights of ``model`` (or the given ``weights``) to ``path`` (safetensors), atomically.

    Args:
        omit: module prefix -> weights digest of modules to leave out (``frozen_backbones``).
        weights: a full state dict to write instead of ``model.state_dict()`` (FSDP gathers one).
    """
    omit = omit or {}
    state, seen = {}, set()
    for key, tensor in (weights if weights is not None else model.state_dict()).items():
        if _under(key, omit):
            continue
        t = tensor.detach().contiguous()
        if t.data_ptr() in seen:  # tied weights: safetensors refuses shared storage
            t = t.clone()
        seen.add(t.data_ptr())
        state[key] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={OMITTED: json.dumps(omit, sort_keys=True)})
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path, verify: bool = True) -> None:
    """Load ``path`` into ``model``: every key must be there but those of the omitted modules.

    Args:
        verify: check that each omitted module of ``model`` has the digest recorded at save time
            (hashes its weights; the training loop skips it when reloading into the same model).

    Raises:
        ValueError: naming the file, when keys differ or an omitted module's weights changed.
    """
    with safe_open(str(path), framework="pt") as f:
        omitted = json.loads((f.metadata() or {}).get(OMITTED, "{}"))
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    wrong = [k for k in missing if not _under(k, omitted)]
    if wrong or unexpected:
        raise ValueError(f"{path}: does not fit the model: missing {wrong[:5]}, unexpected {unexpected[:5]}"
                         f" ({len(wrong)} and {len(unexpected)} in all)")
    for prefix, digest in omitted.items() if verify else ():
        if weights_digest(model.get_submodule(prefix)) != digest:
            raise ValueError(
                f"{path}: {prefix} was frozen in training and not saved; it is rebuilt from its source, whose "
                f"weights have changed since (digest {digest[:12]} at save time): restore that source"
            )


def save_state(state: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)
