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
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"  # a checkpoint's weights file
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


def load_state(path: Path) -> dict[str, Any]:
    """Read ``state.pt`` (``weights_only``: tensors and plain types, never arbitrary objects).

    Raises:
        CheckpointError: naming the file, when it is empty, truncated or holds anything else.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path}: unreadable training state ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'empty file'})") from None


# ---- Checkpoints as one unit -------------------------------------------------------------------
# ``checkpoints/step-00000040/`` holds ``model.safetensors``, ``state.pt`` and ``manifest.json``
# (every file's size and sha256). It is written under a temporary name, fsynced, then renamed into
# place, and only then do the ``last`` (and, when validation improved, ``best``) symlinks switch
# to it, each by an atomic ``os.replace``. A kill at any moment leaves ``last`` on the previous
# complete checkpoint; a truncated or altered file fails its manifest check and is never loaded.

MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or its files do not match their manifest."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_folder(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def save_checkpoint(root: Path, step: int, write_weights: Any, state: dict[str, Any], best: bool,
                    keep_last: int = 2) -> Path:
    """Write one complete checkpoint and switch ``last`` (and ``best``) to it.

    Args:
        root: the run's ``checkpoints`` folder.
        write_weights: called with the path to write ``model.safetensors`` to (``save_weights``).
        state: optimizer, schedule, counters, RNG (``torch.save``, loads with ``weights_only``).
        best: also point ``best`` here.
        keep_last: step folders kept besides ``best`` (older ones are deleted).
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    write_weights(tmp / WEIGHTS)
    torch.save(state, tmp / "state.pt")
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    for p in tmp.iterdir():
        _fsync(p)
    _fsync(tmp)
    final = _step_folder(root, step)
    if final.exists():  # a resumed run passing a step whose checkpoint was damaged
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(root)
    _point(root, "last", final)
    if best:
        _point(root, "best", final)
    _prune(root, keep_last)
    return final


def _point(root: Path, name: str, target: Path) -> None:
    link, tmp = root / name, root / f".{name}-{os.getpid()}"
    if link.is_dir() and not link.is_symlink():  # a run written by an older mm: a plain folder
        shutil.rmtree(link)
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    os.replace(tmp, link)
    _fsync(root)


def point_best(root: Path, target: Path) -> None:
    """Switch ``best`` to ``target`` atomically (a resume that fell back to an earlier checkpoint)."""
    _point(root, "best", target)


def _prune(root: Path, keep_last: int) -> None:
    protected = {(root / n).resolve() for n in ("last", "best") if (root / n).exists()}
    steps = sorted(root.glob("step-*"))
    for folder in steps[: max(0, len(steps) - keep_last)]:
        if folder.resolve() not in protected:
            shutil.rmtree(folder)
    for tmp in root.glob(".tmp-*"):  # left by a process killed while writing
        if not tmp.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(tmp, ignore_errors=True)


def verify_checkpoint(folder: Path) -> None:
    """Check every file of ``folder`` against its manifest (size, then sha256).

    Every ``step-*`` folder is written with its manifest (the manifest is written before the folder
    gets its name), so one without is damaged. Only a plain ``last`` / ``best`` folder of an older mm
    (from before step folders) has none; it is accepted as it is.

    Raises:
        CheckpointError: naming the folder, the file and what is wrong.
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        if folder.resolve().name.startswith("step-"):
            raise CheckpointError(f"{manifest}: missing (every step folder is written with one): damaged")
        if not (folder / WEIGHTS).is_file():
            raise CheckpointError(f"{folder}: no {WEIGHTS}")
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{manifest}: unreadable manifest ({err})") from None
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if path.stat().st_size != want["size"]:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes, the manifest says {want['size']} (truncated?)")
        if _sha256(path) != want["sha256"]:
            raise CheckpointError(f"{path}: contents differ from the manifest's sha256 (altered or corrupt)")


def resume_point(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of a run and its state: ``last`` if it verifies, else the
    newest step folder that does (with a warning naming what was wrong). None when there is none."""
    candidates = [root / "last"] if (root / "last").exists() else []
    candidates += sorted(root.glob("step-*"), reverse=True)
    seen = set()
    for folder in candidates:
        if folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        try:
            verify_checkpoint(folder)
            state = load_state(folder / "state.pt")
        except CheckpointError as err:
            warnings.warn(f"skipping a damaged checkpoint: {err}", stacklevel=2)
            continue
        return folder, state
    return None


# ---- A checkpoint staged as a W&B model artifact (mm.tracking.Tracker.log_model) -----------------

STAGING = "artifacts"  # run_dir/artifacts/<step folder>/: what log_model logs, in place
RUN_FILES = ("config.yaml", "classes.json", "metrics.jsonl", "wandb_id.txt")


def stage_checkpoint(run_dir: Path, checkpoint: Path) -> tuple[Path, dict[str, Any]]:
    """Lays out one checkpoint of a run as a model artifact, in ``run_dir/artifacts/<step folder>/``.

    The weights are a hard link to the checkpoint's file (a copy across file systems): checkpoints
    are written once and never changed, and the link keeps the bytes when the step folder is
    pruned later. The run's small files are copied as they are now.

    Args:
        run_dir: The run folder.
        checkpoint: One of its ``checkpoints/step-*`` folders (``best`` or ``last``, resolved).

    Returns:
        The staged folder and the artifact's metadata: the run's name, the step and the folder.
    """
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    stage = run_dir / STAGING / checkpoint.name
    shutil.rmtree(stage, ignore_errors=True)
    target = stage / "checkpoints" / checkpoint.name
    target.mkdir(parents=True)
    try:
        os.link(checkpoint / WEIGHTS, target / WEIGHTS)
    except OSError:
        shutil.copy2(checkpoint / WEIGHTS, target / WEIGHTS)
    # The manifest of what the artifact holds: verify_checkpoint checks every file it lists.
    kept = {"step": manifest["step"], "files": {WEIGHTS: manifest["files"][WEIGHTS]}}
    (target / MANIFEST).write_text(json.dumps(kept, indent=1))
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, stage / name)
    return stage, {"run": run_dir.name, "step": manifest["step"], "checkpoint": checkpoint.name}
