"""Manifest datasets: a folder with ``train.jsonl``, ``val.jsonl``, ``test.jsonl``.

Each line is one sample with a value per modality, all optional (``text``: a string; ``image``,
``audio``: paths relative to the folder) and a label at ``label_key`` (dotted, e.g. ``label`` or
``labels.match``). Each modality's value is decoded by its encoder (``Encoder.load``: an image
through PIL into the encoder's transform, audio read, downmixed and resampled to its rate); the
dataset itself never names a modality. Media paths must stay inside the folder
(``mm.data.media``); ``mm.data.validate`` checks a whole dataset at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mm.data.collate import TEXT
from mm.data.conll import read_conll
from mm.data.errors import ManifestError, MediaError, listing
from mm.data.media import inside_path
from mm.labels import ClassLabels, Codec, LabelError, MultiLabels, RegressionLabels, TagLabels, label_at
from mm.run.runtime import seeded

SPLITS = ("train", "val", "test")
ON_ERROR = ("raise", "skip")  # data.on_error


def parse_manifest(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of a JSONL manifest and a problem (``file:line: reason``) per line it cannot read.

    A line must be UTF-8 (a byte-order mark on the first is ignored) and one JSON object; blank
    lines are skipped. Each row gets its place under ``_where`` (``file:line``).
    """
    rows, problems = [], []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                problems.append(f"{path}:{lineno}: not UTF-8: byte 0x{raw[err.start]:02x} at column {err.start + 1}")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{path}:{lineno}: invalid JSON: {err.msg}")
                continue
            if not isinstance(row, dict):
                problems.append(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                continue
            row["_where"] = f"{path}:{lineno}"
            rows.append(row)
    return rows, problems


def read_manifest(path: Path) -> list[dict]:
    """Parse a JSONL manifest (``parse_manifest``); one ``ManifestError`` lists every bad line."""
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    rows, problems = parse_manifest(path)
    if problems:
        raise ManifestError(listing(problems))
    if not rows:
        raise ManifestError(f"{path}: no samples")
    return rows


def read_split(root: Path, split: str) -> list[dict]:
    """The rows of one split: ``<split>.jsonl``, or where there is none, the CoNLL file ``<split>.txt``."""
    if not (root / f"{split}.jsonl").is_file() and (root / f"{split}.txt").is_file():
        return read_conll(root / f"{split}.txt")
    return read_manifest(root / f"{split}.jsonl")


class ManifestDataset(Dataset):
    """One split of a manifest folder, yielding samples decoded by the modalities' encoders.

    Media paths are checked when the split is built (``mm.data.media.inside_path``): a value that is
    not a path, a path that leaves the folder (unless ``allow_outside_paths``) or names no file is
    a bad sample. A sample that fails to decode raises a ``ManifestError`` naming its ``file:line``.

    With ``on_error="skip"`` the bad samples are dropped when the split is built instead, so a run
    never meets one: besides the path checks, every sample is decoded once by its encoders
    (``load`` without augmentation), and those that fail are left out of ``rows`` and listed in
    ``bad``. The same files fail on every run, so the kept samples, their indices and the batches
    are the same on every run and after a resume. More than ``max_bad_fraction`` of the split bad
    is a ``ManifestError`` listing them.

    Args:
        root: the manifest folder.
        split: ``train``, ``val`` or ``test`` (or any name, with ``rows``).
        encoders: modality -> encoder (``Encoder.load`` decodes a row's value); other keys of a
            row are ignored.
        label_key: dotted key of the label in each row.
        classes: the class list (from the training split); a label outside it is an error.
        codec: how labels are encoded (``mm.labels``); by default class ids over ``classes``. With
            the token codec each row also needs its words under ``tokens``, one per tag.
        rows: the parsed rows, instead of reading ``<split>.jsonl``.
        require_labels: False for inference (an unlabelled row gets a placeholder label).
        augment: decode with the encoders' training-time augmentation, seeded per sample and
            epoch (``set_epoch``) from ``seed``.
        seed: the run's seed, for augmentation.
        allow_outside_paths: accept media paths outside ``root`` (``data.allow_outside_paths``;
            ``build_splits`` passes the config's, false by default; prediction from the command
            line gives absolute paths).
        on_error: ``raise`` (a bad sample is an error) or ``skip`` (it is left out and counted).
        max_bad_fraction: with ``skip``, the largest share of the split that may be bad.

    Attributes:
        rows: the samples served (with ``skip``, the good ones).
        bad: ``file:line: reason`` of each sample left out (always empty with ``raise``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        encoders: Mapping[str, Any],
        label_key: str,
        classes: list,
        codec: Codec | None = None,
        rows: list[dict] | None = None,
        require_labels: bool = True,
        augment: bool = False,
        seed: int = 0,
        allow_outside_paths: bool = True,
        on_error: str = "raise",
        max_bad_fraction: float = 0.01,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"unknown on_error {on_error!r} (data.on_error); valid: {list(ON_ERROR)}")
        self.root = Path(root)
        self.split = split
        self.encoders = dict(encoders)
        self.modalities = sorted(encoders)
        self.codec = codec if codec is not None else ClassLabels(classes)
        self.classes = list(self.codec.classes)
        self.label_key = label_key
        self.augment = augment and any(e.augment for e in self.encoders.values())
        self.seed, self.epoch = seed, 0
        self._lengths: dict[tuple[str, ...], dict[str, list[int]]] = {}
        self.rows: list[dict] = rows if rows is not None else read_split(self.root, split)
        self.labels: list = []
        self.words: list[list[str]] = []  # token tagging only
        bad: dict[int, str] = {}  # row -> what is wrong with it
        for i, row in enumerate(self.rows):
            value = label_at(row, label_key)
            if value is None and not require_labels:  # inference: a placeholder that is never scored
                value = self._placeholder(row)
            if value is None:
                raise ManifestError(f"{row['_where']}: no label at key '{label_key}'")
            try:
                self.labels.append(self.codec.encode(value))
            except LabelError as err:
                raise ManifestError(f"{row['_where']}: {err} (key '{label_key}')") from None
            if isinstance(self.codec, TagLabels):
                self.words.append(self._words(row, value))
            reasons = self._path_problems(row, allow_outside_paths)
            if reasons:
                bad[i] = f"{row['_where']}: {'; '.join(reasons)}"
        if bad and on_error == "raise":
            raise ManifestError(listing(list(bad.values())))
        if on_error == "skip":
            self._skip_bad(bad, max_bad_fraction)
        self.bad = [bad[i] for i in sorted(bad)]

    def _path_problems(self, row: dict, allow_outside: bool) -> list[str]:
        """What is wrong with the media paths of a row: ``<modality> <reason>`` each."""
        reasons = []
        for m, enc in self.encoders.items():
            if enc.media and row.get(m) is not None:
                try:
                    inside_path(row[m], self.root, allow_outside)
                except MediaError as err:
                    reasons.append(f"{m} {err}")
        return reasons

    def _skip_bad(self, bad: dict[int, str], max_bad_fraction: float) -> None:
        """Decode every sample whose paths are fine once (adding failures to ``bad``); keep the rest."""
        total = len(self.rows)
        for i in range(total):
            if i not in bad:
                try:
                    self._decoded(i, train=False)
                except ManifestError as err:
                    bad[i] = str(err)
        if len(bad) > max_bad_fraction * total:
            raise ManifestError(f"{self.split}: {len(bad)} of {total} samples cannot be read, more than "
                                f"data.max_bad_fraction={max_bad_fraction}:\n" + listing([bad[i] for i in sorted(bad)]))
        keep = [i for i in range(total) if i not in bad]
        self.rows = [self.rows[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        if self.words:
            self.words = [self.words[i] for i in keep]

    def _placeholder(self, row: dict) -> Any:
        if isinstance(self.codec, TagLabels):
            return [self.classes[0]] * len(row.get(TagLabels.words_key) or [])
        if isinstance(self.codec, MultiLabels):
            return []
        if isinstance(self.codec, RegressionLabels):
            return 0.0
        return self.classes[0]

    def _words(self, row: dict, tags: list) -> list[str]:
        words = row.get(TagLabels.words_key)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise ManifestError(f"{row['_where']}: token tagging needs a non-empty list of words at "
                                f"'{TagLabels.words_key}'")
        if len(words) != len(tags):
            raise ManifestError(f"{row['_where']}: {len(words)} words at '{TagLabels.words_key}' but "
                                f"{len(tags)} tags at '{self.label_key}'")
        return words

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the next samples get (the loop calls it before each epoch)."""
        self.epoch = epoch

    def _values(self, i: int) -> dict[str, Any]:
        """Sample ``i``'s manifest value per modality (None where absent); token tagging reads the words."""
        values = {m: self.rows[i].get(m) for m in self.modalities}
        if isinstance(self.codec, TagLabels):  # token tagging: the words are the text
            values[TEXT] = " ".join(self.words[i]) if TEXT in values else None
        return values

    def lengths(self) -> dict[str, list[int]]:
        """Each sample's length per modality whose encoder has one (``Encoder.length``: text word
        pieces, audio samples; 0 where a sample lacks the modality), for length-grouped batches.

        Read cheaply (tokenizer, file headers) once per dataset and modality set, then remembered."""
        key = tuple(self.modalities)
        if key not in self._lengths:  # one dict shared with restricted copies (``mm.data.cached``)
            values = [self._values(i) for i in range(len(self))]
            found: dict[str, list[int]] = {}
            for m in self.modalities:
                first = next((v[m] for v in values if v[m] is not None), None)
                if first is not None and self.encoders[m].length(first, self.root) is not None:
                    found[m] = [0 if v[m] is None else self.encoders[m].length(v[m], self.root) for v in values]
            self._lengths[key] = found
        return self._lengths[key]

    def _decoded(self, i: int, train: bool) -> dict[str, Any]:
        """Sample ``i``'s present values decoded by their encoders; a failure names the row."""
        row = self.rows[i]
        decoded = {}
        for m, value in self._values(i).items():
            if value is None:
                continue
            try:
                decoded[m] = self.encoders[m].load(value, self.root, train=train)
            except Exception as err:  # what a decoder raises is its own; the row is ours to name
                reason = str(err) if isinstance(err, MediaError) else f"{value!r}: {type(err).__name__}: {err}"
                raise ManifestError(f"{row['_where']}: {m} {reason}") from err
        return decoded

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample: dict[str, Any] = {"index": i, "label": self.labels[i]}
        if isinstance(self.codec, TagLabels):
            sample["words"] = self.words[i]
        if not self.augment:
            return {**sample, **self._decoded(i, train=False)}
        # Augmentation drawn from (seed, epoch, sample) alone: the same after a resume, with any workers.
        with seeded((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i):
            return {**sample, **self._decoded(i, train=True)}
