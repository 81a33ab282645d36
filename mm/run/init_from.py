"""Continued fine-tuning (``train.init_from``): a new run starts from a trained run's weights.

Data flow: the source (a run folder, or ``artifact:...`` downloaded by ``mm.artifacts``) is checked
before any expensive work; the new run's classes are the source's, in the source's order, then the
new data's unseen classes appended (``grown_classes``), so a class keeps its row; the model is built
for that class list and every weight is copied from the source's ``best`` checkpoint. A tensor
whose shape differs only where the class count grew (the head's output rows, a CRF's transition
matrix) gets the source's values in its leading block and keeps its fresh initialisation for the
new classes. Any other difference is an error naming the tensor. A resumed run never re-initialises:
its own checkpoint wins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

CHECKPOINT = "best"


@dataclass(frozen=True)
class InitSource:
    """A finished run to start from: its folder, its class list, and the reference the user gave."""

    folder: Path
    classes: list
    reference: str

    @property
    def weights(self) -> Path:
        from mm.run.checkpoint import WEIGHTS

        return self.folder / "checkpoints" / CHECKPOINT / WEIGHTS

    @property
    def artifact(self) -> str | None:
        """The W&B artifact path for lineage (``entity/project/name:alias``), if the source was one."""
        return self.reference.removeprefix("artifact:") if self.reference.startswith("artifact:") else None


def init_source(reference: str) -> InitSource:
    """Resolve and check ``train.init_from`` (cheap: files and their checksums, no model built).

    Raises:
        FileNotFoundError / ValueError: naming ``train.init_from`` and what is missing or damaged.
    """
    from mm.artifacts import resolve_run
    from mm.run.checkpoint import verify_checkpoint

    try:
        folder = Path(resolve_run(reference))
    except (ValueError, OSError, LookupError) as err:
        raise FileNotFoundError(f"train.init_from={reference}: {err}") from None
    for name in ("config.yaml", "classes.json", f"checkpoints/{CHECKPOINT}"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"train.init_from={reference}: {folder} is not a finished mm run ({name} is missing)")
    try:
        verify_checkpoint(folder / "checkpoints" / CHECKPOINT)
    except ValueError as err:
        raise ValueError(f"train.init_from={reference}: {err}") from None
    return InitSource(folder, json.loads((folder / "classes.json").read_text()), reference)


def grown_classes(old: list, new: list) -> list:
    """The source's classes in their order, then the classes only the new data has (in its order)."""
    return [*old, *(c for c in new if c not in old)]


def load_init(model: nn.Module, source: InitSource, classes: list) -> dict[str, Any]:
    """Copy the source's weights into ``model`` (built for ``classes``, which start with the source's).

    Returns:
        What happened: counts of tensors ``loaded``, the ``grown`` ones (new class rows kept fresh),
        the model's tensors the source lacks (``fresh``, e.g. a modality added) and the source's
        tensors the model has no place for (``unused``, e.g. a modality dropped).

    Raises:
        ValueError: naming the tensor whose shape differs other than by the class count, or a frozen
            backbone the source did not save whose weights differ from the source's.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from mm.run.checkpoint import OMITTED, weights_digest

    n_old, n_new = len(source.classes), len(classes)
    if classes[:n_old] != source.classes:
        raise ValueError(f"train.init_from: the run's classes must start with the source's {source.classes[:5]}...")
    with safe_open(str(source.weights), framework="pt") as f:
        omitted = json.loads((f.metadata() or {}).get(OMITTED, "{}"))
    saved, target = load_file(str(source.weights)), model.state_dict()
    state, grown, fresh = {}, [], []
    for key, t in target.items():
        if key not in saved:
            if not any(key.startswith(p + ".") for p in omitted):
                fresh.append(key)
            continue
        s = saved[key]
        if s.shape == t.shape:
            state[key] = s
        elif s.ndim == t.ndim and all(a == b or (a, b) == (n_old, n_new) for a, b in zip(s.shape, t.shape, strict=True)):
            block = t.detach().clone()
            block[tuple(slice(0, a) for a in s.shape)] = s  # the old classes' rows; new rows stay fresh
            state[key] = block
            grown.append(key)
        else:
            raise ValueError(f"train.init_from: {source.weights}: {key} has shape {tuple(s.shape)}, the new model's "
                             f"is {tuple(t.shape)} (only the class count may change: {n_old} -> {n_new})")
    model.load_state_dict(state, strict=False)
    for prefix, digest in omitted.items():
        if prefix in dict(model.named_modules()) and weights_digest(model.get_submodule(prefix)) != digest:
            raise ValueError(f"train.init_from: {prefix} was frozen in {source.folder} and not saved; this run "
                             "builds it with other weights (another source?): use the source's encoder settings")
    return {"source": str(source.folder), "loaded": len(state) - len(grown), "grown": grown, "fresh": fresh,
            "unused": sorted(k for k in saved if k not in target), "classes_added": classes[n_old:]}


def start_classes(cfg: Any, source: InitSource | None) -> list | None:
    """The class list of a run that starts from ``source``: its classes, then the new data's unseen
    ones (None without a source or for a head without classes: ``prepare`` reads them as usual)."""
    from mm.data import training_classes

    if source is None or cfg.head.name == "regression":
        return None
    return grown_classes(source.classes, training_classes(cfg.data, cfg.head.name))


def start_from(model: nn.Module, source: InitSource, classes: list, run_dir: Path, d: Any) -> dict[str, Any]:
    """``load_init`` on every rank; rank 0 records what happened in ``run_dir/init_from.json``."""
    report = load_init(model, source, classes)
    if d.main:
        (run_dir / "init_from.json").write_text(json.dumps({"reference": source.reference, **report}, indent=2) + "\n")
    return report
