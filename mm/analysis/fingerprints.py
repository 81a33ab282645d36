"""Fingerprints of a split's examples: what makes two runs' saved predictions comparable.

``scripts/compare.py`` pairs two runs example by example. Equal counts and labels do not prove the
examples are the same (two folders of the same size and label order pair unrelated examples), so a
run saves with its test predictions one fingerprint per example, in prediction order:
``<id>:<digest>``, where ``id`` is the row's ``id`` (else its line in the split's manifest) and
``digest`` the first 16 hex digits of a SHA-256 over the row's values, every media file's bytes in
place of its path. The whole row counts, not only the modalities a run reads, so a text-only run
and an image-only run on the same folder compare, and the folder may move (paths are relative).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DIGITS = 16  # hex digits of the digest kept: 64 bits, no collision among any split's examples


def _value(value: Any, root: Path, files: dict[str, str]) -> Any:
    """A row value as it enters the digest: a string naming a file in ``root`` as that file's SHA-256."""
    if isinstance(value, str) and value and "\n" not in value and len(value) < 4096:
        try:
            path = (root / value).resolve()
            is_file = path.is_file()
        except (OSError, ValueError):
            is_file = False
        if is_file:
            key = str(path)
            if key not in files:
                files[key] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
            return files[key]
    if isinstance(value, dict):
        return {k: _value(v, root, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_value(v, root, files) for v in value]
    return value


def example_fingerprint(row: dict[str, Any], root: Path, files: dict[str, str] | None = None) -> str:
    """``<id>:<digest>`` of one manifest row (see the module docstring); ``files`` caches file digests."""
    where = str(row.get("_where", "?"))
    ident = row.get("id", Path(where.rsplit(":", 1)[0]).name + ":" + where.rsplit(":", 1)[-1])
    content = {k: _value(v, root, {} if files is None else files) for k, v in row.items() if k != "_where"}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:DIGITS]
    return f"{ident}:{digest}"


def split_fingerprints(dataset: Any, indices: Sequence[int]) -> list[str] | None:
    """The fingerprints of ``dataset``'s rows at ``indices`` (the order predictions were made in);
    None for a dataset without manifest rows (wrappers such as the feature cache's are looked through)."""
    while not (hasattr(dataset, "rows") and hasattr(dataset, "root")) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    rows, root = getattr(dataset, "rows", None), getattr(dataset, "root", None)
    if rows is None or root is None:
        return None
    files: dict[str, str] = {}
    return [example_fingerprint(rows[int(i)], Path(root), files) for i in indices]


def first_difference(a: Sequence[str], b: Sequence[str]) -> str | None:
    """Where two runs' example fingerprints first differ, in words; None when they are the same."""
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            ida, idb = x.rsplit(":", 1)[0], y.rsplit(":", 1)[0]
            what = "its content differs" if ida == idb else f"A has example {ida!r}, B has {idb!r}"
            return f"test example {i} ({ida!r}) is not the same example: {what} (fingerprints {x} vs {y})"
    return None
