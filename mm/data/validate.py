"""Checking a dataset before training: every problem of every split, all at once.

``validate_dir`` reads ``train/val/test.jsonl`` (or CoNLL ``.txt``) of a folder and checks, for the
requested modalities and head:

- every line is UTF-8 and a JSON object; every requested value has its type (a text is a string,
  a media value a path); every media path stays inside the folder (``mm.data.media``) and names a
  file; no row lacks all the requested modalities;
- labels: present, of the head's kind, one kind of class name (an int among strings is a problem),
  more than one training class, no val/test class that training lacks; a class with fewer than
  two training samples is a warning;
- every requested modality has a value in some row (otherwise the model would only ever see its
  "missing" embedding); duplicate rows (same ``id``, or where rows have none, the same values) and
  val/test rows that also appear in train are warnings;
- ``deep=True`` (``scripts/validate_data.py``): every media file is decoded fully, as the encoders
  decode it, so a truncated or mislabelled file is found before training; unusual sample rates,
  channel counts, 16-bit, palette and transparent images are warnings (they are converted, see
  ``mm.data.media``), and duplicates and leaks compare file contents instead of paths.

Problems are what a run would fail on or silently learn nonsense from; warnings are worth knowing.
``check_dataset`` is the entry point of the training loop: the cheap checks (no file opened) on
the dataset a data config names, raising one error that lists every problem.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm.data.collate import TEXT
from mm.data.conll import read_conll
from mm.data.errors import ManifestError, MediaError, listing
from mm.data.manifest import SPLITS, parse_manifest
from mm.data.media import TRUNCATED, inside_path
from mm.labels import CODECS, LabelError, TagLabels, label_at, label_vocabulary
from mm.registry import ENCODERS

# Everything modality-specific is asked of the modality's encoder class (mm.registry.ENCODERS, its
# default kind): ``media`` (values are files), ``decode_file`` (a file decoded without a model, with
# notes on the conversion) and ``check_value`` (a non-media value checked, with warnings).
SAMPLE = "sample"  # the kind of a problem with one sample's value: data.on_error=skip leaves it out
EXAMPLES = 5  # warnings of one kind printed by Report.format


@dataclass
class Issue:
    """One finding: where (``file:line``, a file or the folder), what, and its kind.

    A problem's kind is ``sample`` (one sample's value or file) or ``dataset``; a warning's kind
    groups warnings of one sort when printed.
    """

    where: str
    reason: str
    kind: str = "dataset"
    split: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.where else self.reason


@dataclass
class Report:
    """What ``validate_dir`` found. ``ok`` when there is no problem (warnings are allowed).

    Attributes:
        root: the dataset folder.
        modalities: the modalities checked.
        rows: split -> rows read.
        problems: every problem, in file order.
        warnings: every warning.
    """

    root: Path
    modalities: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    problems: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, where: str, reason: str, kind: str = "dataset", split: str = "") -> None:
        self.problems.append(Issue(where, reason, kind, split))

    def warn(self, kind: str, where: str, reason: str) -> None:
        self.warnings.append(Issue(where, reason, kind))

    def format(self, examples: int = EXAMPLES) -> str:
        """The problems (the first ``LISTED``, then their count), then the warnings grouped by kind
        (``examples`` of each)."""
        sizes = ", ".join(f"{s} {n} rows" for s, n in self.rows.items())
        lines = [f"dataset {self.root}: {sizes}; modalities {', '.join(self.modalities) or '(none)'}"]
        lines.append(f"{len(self.problems)} problem(s)" + (":" if self.problems else ""))
        if self.problems:
            lines.append(listing([str(p) for p in self.problems], indent="  "))
        groups: dict[str, list[Issue]] = defaultdict(list)
        for w in self.warnings:
            groups[w.kind].append(w)
        lines.append(f"{len(self.warnings)} warning(s)" + (":" if self.warnings else ""))
        for kind, issues in groups.items():
            lines.append(f"  {kind} ({len(issues)}):")
            lines += [f"    {w}" for w in issues[:examples]]
            if len(issues) > examples:
                lines.append(f"    ... and {len(issues) - examples} more")
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        """A ``ManifestError`` listing every problem, if there is one."""
        if self.problems:
            raise ManifestError(f"{len(self.problems)} problem(s) in the dataset {self.root} "
                                f"(python scripts/validate_data.py {self.root} checks it):\n"
                                + listing([str(p) for p in self.problems], indent="  "))

    def strict(self) -> None:
        """Strict checking: a damaged file that still decodes (a WAV holding less audio than its header
        declares, ``mm.data.media.TRUNCATED``) is a problem, not a warning."""
        damaged = [w for w in self.warnings if w.kind.startswith(TRUNCATED)]
        self.warnings = [w for w in self.warnings if w not in damaged]
        self.problems += [Issue(w.where, f"{w.kind}: {w.reason}", SAMPLE) for w in damaged]

    def tolerate_bad_samples(self, max_fraction: float) -> None:
        """``data.on_error: skip``: a split's sample problems become warnings (the dataset leaves
        those samples out) while they touch at most ``max_fraction`` of its rows."""
        for split, n in self.rows.items():
            mine = [p for p in self.problems if p.kind == SAMPLE and p.split == split]
            if len({p.where for p in mine}) <= max_fraction * n:
                self.problems = [p for p in self.problems if p not in mine]
                self.warnings += [Issue(p.where, p.reason, "skipped (data.on_error=skip)") for p in mine]


def _read(report: Report, root: Path, split: str) -> list[dict]:
    """The rows of one split; what cannot be read becomes a problem."""
    jsonl, conll = root / f"{split}.jsonl", root / f"{split}.txt"
    if not jsonl.is_file() and conll.is_file():
        try:
            return read_conll(conll)
        except ManifestError as err:
            report.problem("", str(err))
            return []
    if not jsonl.is_file():
        report.problem(str(jsonl), "manifest not found")
        return []
    rows, problems = parse_manifest(jsonl)
    for p in problems:
        report.problem("", p)
    if not rows and not problems:
        report.problem(str(jsonl), "no samples")
    return rows


class _Checker:
    """The state of one ``validate_dir`` pass."""

    def __init__(self, report: Report, root: Path, label_key: str, head: str, allow_outside: bool,
                 deep: bool | tuple[str, ...]):
        self.report, self.root, self.label_key, self.head = report, root, label_key, head
        self.allow_outside, self.deep = allow_outside, deep
        self.present: dict[str, Counter] = defaultdict(Counter)  # split -> modality -> rows with a value

    def row_value(self, row: dict, m: str) -> Any:
        if m == TEXT and self.head == "token":  # token tagging: the words are the text
            words = row.get(TagLabels.words_key)
            return " ".join(map(str, words)) if isinstance(words, list) else None
        return row.get(m)

    def identity(self, m: str, value: Any, where: str, split: str) -> str:
        """What two equal values share (a text, a file, its bytes when deep); problems raise MediaError."""
        encoder = ENCODERS.kind(m) if m in ENCODERS else None
        if encoder is not None and encoder.media:
            path = inside_path(value, self.root, self.allow_outside)
            if self.deep is True or (self.deep and split in self.deep):
                for note in encoder.decode_file(path):
                    self.report.warn(note, where, f"{m} {value}")
            return hashlib.sha1(path.read_bytes()).hexdigest() if self.deep is True else str(path)
        for kind, reason in encoder.check_value(value) if encoder is not None else ():
            self.report.warn(kind, where, reason)
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)  # compared as its JSON

    def row(self, split: str, row: dict) -> tuple:
        """Check a row's values; its signature: ``(modality, identity)`` of each good value."""
        where, signature, present = row["_where"], [], []
        for m in self.report.modalities:
            value = self.row_value(row, m)
            if value is None:
                continue
            present.append(m)
            self.present[split][m] += 1
            try:
                signature.append((m, self.identity(m, value, where, split)))
            except MediaError as err:
                self.report.problem(where, f"{m} {err}", SAMPLE, split)
        if not present and self.report.modalities:
            self.report.problem(where, f"no value for any of the modalities {self.report.modalities}", split=split)
        return tuple(signature)


def _label_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _check_classes(report: Report, labelled: dict[str, list[tuple[dict, Any]]], key: str) -> None:
    """Classification labels: one kind of scalar, more than one training class, none unseen in train."""
    for rows in labelled.values():
        for row, value in rows:
            if isinstance(value, (list, dict)):
                report.problem(row["_where"], f"label at '{key}' is a {type(value).__name__}, not a class "
                                              "(lists of classes need head.name=multilabel or token)")
    train = [(row, v) for row, v in labelled["train"] if not isinstance(v, (list, dict))]
    kinds = Counter(_label_kind(v) for _, v in train)
    if not kinds:
        return
    main = kinds.most_common(1)[0][0]
    for rows in labelled.values():
        for row, value in rows:
            kind = _label_kind(value)
            if kind != main and kind not in ("list", "object"):
                report.problem(row["_where"], f"label {value!r} at '{key}' is a {kind} among {main} labels "
                                              f"(it would be a class of its own)")
    counts = Counter(v for _, v in train if _label_kind(v) == main)
    train_file = train[0][0]["_where"].rsplit(":", 1)[0]
    if len(counts) == 1:
        report.problem(train_file, f"the training split has a single class {next(iter(counts))!r}: nothing to learn")
    first = {}
    for row, v in train:
        first.setdefault(v, row["_where"])
    for c, n in sorted(counts.items(), key=lambda cn: str(cn[0])):
        if n < 2:
            report.warn("class with fewer than 2 training samples", first[c], f"class {c!r} has {n} training sample")
    for split in ("val", "test"):
        for row, value in labelled.get(split, []):
            if _label_kind(value) == main and value not in counts:
                report.problem(row["_where"], f"label {value!r} is not one of the {len(counts)} training classes",
                               split=split)


def _missing_labels(report: Report, missing: list[tuple[str, dict]], total: int, key: str, head: str) -> None:
    """Rows without a label at ``key``: one problem with the count, where, and the fix (the key the
    rows seem to carry their label at), not one line per row."""
    split, first = missing[0]
    if len(missing) == 1:
        report.problem(first["_where"], f"no label at key '{key}'", split=split)
        return
    keys = Counter(k for _, row in missing for k in row if not k.startswith("_"))
    likely = [k for k in ("tags", "label", "labels") if k != key and keys[k] == len(missing)]
    if head == "token" and likely[:1] != ["tags"] and "tags" in keys:
        likely.insert(0, "tags")
    fix = (f"the rows have '{likely[0]}': set data.label_key={likely[0]}" if likely
           else f"set data.label_key to the key of the label (the rows have: {', '.join(sorted(keys)[:8])})")
    places = ", ".join(row["_where"] for _, row in missing[:3]) + (", ..." if len(missing) > 3 else "")
    report.problem("", f"no label at key '{key}' in {len(missing)} of {total} rows ({places}); {fix}", split=split)


def _check_labels(report: Report, splits: dict[str, list[dict]], key: str, head: str) -> None:
    labelled: dict[str, list[tuple[dict, Any]]] = {}
    missing: list[tuple[str, dict]] = []
    for split, rows in splits.items():
        labelled[split] = []
        for row in rows:
            value = label_at(row, key)
            if value is None:
                missing.append((split, row))
            else:
                labelled[split].append((row, value))
    if missing:
        _missing_labels(report, missing, sum(len(rows) for rows in splits.values()), key, head)
    if head == "classification":
        _check_classes(report, labelled, key)
        return
    # Other heads: their codec's own checks, row by row so that every bad row is reported.
    good: dict[str, list[dict]] = defaultdict(list)
    for split, rows in labelled.items():
        for row, value in rows:
            try:
                label_vocabulary(head, [row], key)
                if head == "token" and len(row.get(TagLabels.words_key) or []) != len(value):
                    raise LabelError(f"{row['_where']}: {len(row.get(TagLabels.words_key) or [])} words at "
                                     f"'{TagLabels.words_key}' but {len(value)} tags at '{key}'")
                good[split].append(row)
            except LabelError as err:
                report.problem("", str(err), split=split)
    classes = set(label_vocabulary(head, good["train"], key))
    for split in ("val", "test"):
        for row in good[split]:
            value = label_at(row, key)
            unseen = sorted({str(c) for c in (value if isinstance(value, list) else [])} - {str(c) for c in classes})
            if head != "regression" and unseen:
                report.problem(row["_where"], f"labels {unseen} at '{key}' are not among the training classes",
                               split=split)


def _check_duplicates(report: Report, signatures: dict[str, list[tuple[dict, tuple]]]) -> None:
    """Duplicate rows within a split (same ``id``, else same values) and val/test rows seen in train."""
    for split, entries in signatures.items():
        has_ids = any("id" in row for row, _ in entries)
        seen: dict[Any, str] = {}
        for row, signature in entries:
            key = ("id", json.dumps(row["id"])) if has_ids and "id" in row else signature
            if not key:
                continue
            if key in seen:
                what = f"id {row['id']!r}" if has_ids and "id" in row else "values"
                report.warn(f"duplicate rows in {split}", row["_where"], f"same {what} as {seen[key]}")
            else:
                seen[key] = row["_where"]
    in_train = {sig: row["_where"] for row, sig in reversed(signatures.get("train", [])) if sig}
    for split in ("val", "test"):
        for row, signature in signatures.get(split, []):
            if signature in in_train:
                names = "/".join(m for m, _ in signature)
                report.warn(f"{split} rows also in train", row["_where"], f"same {names} as {in_train[signature]}")


def validate_dir(root: str | Path, modalities: list[str] | None = None, label_key: str = "label",
                 head: str = "classification", allow_outside_paths: bool = False,
                 deep: bool | tuple[str, ...] = True) -> Report:
    """Check every split of a dataset folder at once (see the module docstring).

    Args:
        root: the folder with ``train/val/test.jsonl`` (or CoNLL ``.txt``).
        modalities: the modalities a run would read; by default those of the registered modalities
            (``mm.registry.ENCODERS``) that some row has.
        label_key: dotted key of the label in each row.
        head: the head's name (``mm.labels.CODECS``), which decides what a label must be.
        allow_outside_paths: accept media paths outside the folder (``data.allow_outside_paths``).
        deep: decode every media file fully (otherwise no file is opened); a tuple of split names
            decodes only those splits' files.

    Returns:
        The ``Report``; ``report.ok`` when there is no problem.
    """
    if head not in CODECS:
        raise ValueError(f"unknown head {head!r}; valid: {sorted(CODECS)}")
    root = Path(root)
    report = Report(root, list(modalities or []))
    splits = {s: _read(report, root, s) for s in SPLITS}
    report.rows = {s: len(rows) for s, rows in splits.items()}
    checker = _Checker(report, root, label_key, head, allow_outside_paths, deep)
    if modalities is None:
        report.modalities = [m for m in ENCODERS
                             if any(checker.row_value(r, m) is not None for rows in splits.values() for r in rows)]
    if not report.modalities:
        report.problem(str(root), f"no row has any of {list(ENCODERS)}; name the modalities to check")
    signatures = {s: [(row, checker.row(s, row)) for row in rows] for s, rows in splits.items()}
    for m in report.modalities:
        if not any(checker.present[s][m] for s in splits):
            report.problem(str(root), f"modality {m!r} is requested but no row of {'/'.join(splits)} has a value for it")
        elif not checker.present["train"][m]:
            report.warn("modality absent from train", str(root), f"no training row has {m!r}")
    _check_labels(report, splits, label_key, head)
    _check_duplicates(report, signatures)
    return report


def check_dataset(data_cfg: Any, modalities: list[str] | None = None, head_name: str = "classification",
                  deep: bool | tuple[str, ...] = False, strict: bool = True) -> Report:
    """Check the dataset a data config names before any model is built.

    The cheap mode (the default) opens no media file: manifests, value types, media paths inside
    the folder and present, labels, classes and modality presence (``validate_dir``); a dataset
    of thousands of rows takes well under a second. With ``data.on_error: skip`` the problems of
    single samples (a missing file, a bad path or value) are tolerated up to
    ``data.max_bad_fraction`` of each split, since the dataset then leaves those samples out.

    Args:
        data_cfg: the ``data`` section (``mm.config.DataConfig``).
        modalities: the modalities the model reads (default: ``data_cfg.modalities``).
        head_name: ``cfg.head.name``.
        deep: also decode every media file (what ``scripts/validate_data.py`` does), or those of the
            splits named (the training loop decodes ``("val", "test")``: a bad test file is found
            before training, not after it).
        strict: raise when there is a problem.

    Returns:
        The ``Report`` (its warnings are worth logging).

    Raises:
        ManifestError: with ``strict``, one error listing every problem.
    """
    from mm.data import resolve_dataset  # the package imports this module's neighbours, not this one

    root, label_key = resolve_dataset(data_cfg, head_name)
    report = validate_dir(root, list(modalities or data_cfg.modalities), label_key, head_name,
                          data_cfg.allow_outside_paths, deep)
    if data_cfg.on_error == "skip":
        report.tolerate_bad_samples(data_cfg.max_bad_fraction)
    if strict:
        report.raise_if_problems()
    return report
