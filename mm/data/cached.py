"""Cached encoder outputs: the table of one split, building it atomically, serving it by index.

An entry of the feature cache (``mm.features`` decides when and under which key) is a folder::

    features.safetensors   pooled [N, D]; tokens [sum L_i + 1, D] and mask [sum L_i + 1]: every
                           sample's first L_i positions (up to its last real token), concatenated,
                           then one zero / False row that padding positions gather;
                           offsets [N + 1] (sample i is rows offsets[i]:offsets[i+1]); present [N]
    meta.json              the fields its key hashes, readable
    .complete              written last: an entry without it is partial and is rebuilt, never read

An entry is built in a temporary sibling under a file lock and renamed into place, so concurrent
grid cells (threads or ``--workers`` processes) compute a shared entry once and never read half of
one. ``CachedSplit`` and ``CachedCollator`` serve tables to the loop: the cached modalities are
never decoded, and a batch gathers their outputs by sample index into ``batch["cached"][m]``.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from mm.data.collate import Collator
from mm.encoders.base import Encoder

MARKER = ".complete"


@dataclass
class FeatureTable:
    """One split's cached outputs of one encoder (the layout of ``features.safetensors``)."""

    pooled: torch.Tensor  # [N, D]
    tokens: torch.Tensor  # [sum L_i + 1, D], the last row zeros: padding
    mask: torch.Tensor  # [sum L_i + 1] bool, the last one False: padding
    offsets: torch.Tensor  # [N + 1] int64
    present: torch.Tensor  # [N] bool

    def __len__(self) -> int:
        return len(self.pooled)

    def gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples ``index [B]`` as ``EncoderOutput`` fields, padded to their longest with zeros."""
        start = self.offsets[index]
        length = self.offsets[index + 1] - start  # [B]
        pos = torch.arange(int(length.max()))
        padding = len(self.mask) - 1
        rows = torch.where(pos[None, :] < length[:, None], start[:, None] + pos[None, :], padding).flatten()  # [B*T]
        tokens = self.tokens.index_select(0, rows).view(len(index), -1, self.tokens.shape[1])  # [B, T, D]
        return {"tokens": tokens, "mask": self.mask.index_select(0, rows).view(len(index), -1),
                "pooled": self.pooled.index_select(0, index)}

    def save(self, folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in vars(self).items()}, str(folder / "features.safetensors"))

    @classmethod
    def load(cls, folder: Path) -> FeatureTable:
        return cls(**load_file(str(folder / "features.safetensors")))


def _collate_unlabelled(collate: Collator, samples: list[dict[str, Any]]) -> dict[str, Any]:
    # Labels are not needed to compute features, and token tags are ragged: a dummy one each.
    return collate([{**s, "label": 0} for s in samples])


@torch.no_grad()
def compute_table(encoder: Encoder, modality: str, dataset: Any, batch_size: int, device: torch.device,
                  autocast: Callable[[], Any], num_workers: int = 0) -> FeatureTable:
    """Run ``encoder`` over a split in order, decoding only ``modality``, and keep every sample's outputs.

    Batches come from the model's own ``Collator`` (absent samples get its placeholders, whose
    outputs the model replaces by its missing embedding anyway).
    """
    source = _restricted(dataset, [modality])
    collate = Collator([modality], {modality: encoder})
    # A private generator keeps the DataLoader from drawing on the global RNG (the run's dropout).
    loader = DataLoader(source, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator(),
                        collate_fn=functools.partial(_collate_unlabelled, collate))
    pooled, tokens, masks, lengths, present = [], [], [], [], []
    for batch in loader:
        with autocast():
            out = encoder({k: v.to(device) for k, v in batch[modality].items()})
        T = out.mask.shape[1]
        # Each sample keeps its positions up to its last real one (all of them when none is real).
        last = T - out.mask.flip(1).int().argmax(1)  # [B]
        length = torch.where(out.mask.any(1), last, T)
        keep = torch.arange(T, device=out.mask.device)[None, :] < length[:, None]  # [B, T]
        pooled.append(out.pooled.cpu())
        tokens.append(out.tokens[keep].cpu())  # [sum L_i, D], sample-major
        masks.append(out.mask[keep].cpu())
        lengths.append(length.cpu())
        present.append(batch["present"][modality])
    tokens.append(torch.zeros_like(tokens[-1][:1]))  # the padding row
    masks.append(torch.zeros(1, dtype=torch.bool))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cat(lengths).long().cumsum(0)])
    return FeatureTable(torch.cat(pooled), torch.cat(tokens), torch.cat(masks), offsets, torch.cat(present))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: one process (or thread) at a time builds an entry."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_build(root: Path, key: str, fields: dict[str, Any],
                  build: Callable[[], FeatureTable]) -> tuple[FeatureTable, str]:
    """The entry ``root/key``: read when complete (``hit``), else built and written atomically (``built``).

    Args:
        root: the cache folder, e.g. ``cache_dir() / "features"``.
        key: the entry's name (``mm.features.feature_key``).
        fields: what the key hashes, written to ``meta.json``.
        build: computes the table on a miss.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    if (final / MARKER).is_file():
        return FeatureTable.load(final), "hit"
    with _locked(root / f".{key}.lock"):
        if (final / MARKER).is_file():  # built by another cell while this one waited
            return FeatureTable.load(final), "hit"
        shutil.rmtree(final, ignore_errors=True)  # partial: no marker, never read
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            table = build()
            table.save(tmp)
            (tmp / "meta.json").write_text(json.dumps({**fields, "samples": len(table)}, indent=2, default=str))
            (tmp / MARKER).write_text("ok\n")
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():  # not a lost race with a process that skipped the lock
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return table, "built"


def _restricted(obj: Any, modalities: list[str]) -> Any:
    """A shallow copy of a dataset or collator that handles only ``modalities``."""
    view = copy.copy(obj)
    view.modalities = sorted(modalities)
    return view


class CachedSplit(Dataset):
    """A split that never reads its cached modalities; each sample points at the split's tables.

    Args:
        dataset: the split (a ``ManifestDataset``).
        tables: cached modality -> its ``FeatureTable`` on this split.
    """

    def __init__(self, dataset: Any, tables: dict[str, FeatureTable]):
        self.dataset = _restricted(dataset, [m for m in dataset.modalities if m not in tables])
        self.tables = tables

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)  # split, rows, classes, ... of the wrapped split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dataset[i], "cached": self.tables}

    def lengths(self) -> dict[str, list[int]]:
        """The live modalities' lengths (the split's ``lengths``) and the cached ones': tokens per sample
        in its table, what ``FeatureTable.gather`` pads to."""
        cached = {m: (t.offsets[1:] - t.offsets[:-1]).tolist() for m, t in self.tables.items()}
        return {**self.dataset.lengths(), **cached}


class CachedCollator:
    """``Collator`` for the live modalities, plus ``batch["cached"][m]`` and ``present[m]`` gathered by index."""

    def __init__(self, collate: Collator, cached: list[str]):
        self.collate = _restricted(collate, [m for m in collate.modalities if m not in cached])

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(samples)
        tables: dict[str, FeatureTable] = samples[0]["cached"]
        batch["cached"] = {m: table.gather(batch["index"]) for m, table in tables.items()}
        batch["present"].update({m: table.present[batch["index"]] for m, table in tables.items()})
        return batch

