"""CoNLL-format token tagging files, read into the rows manifests use.

One token per line with its tag in the LAST whitespace-separated column (other columns, such as
part-of-speech or chunk tags, are ignored); a blank line ends a sentence; ``-DOCSTART-`` lines are
document separators and skipped::

    -DOCSTART- -X- -X- O

    EU NNP B-NP B-ORG
    rejects VBZ B-VP O

Each sentence becomes ``{"tokens": [...], "tags": [...], "_where": "file:line"}`` (the line of its
first token), so a folder holding ``train.txt``, ``val.txt`` and ``test.txt`` works like a JSONL
manifest labelled at ``tags`` (see ``mm.data.manifest.read_split``).
"""

from __future__ import annotations

from pathlib import Path

from mm.data.errors import ManifestError
from mm.labels import TAG_PATTERN

TAGS_KEY = "tags"


def read_conll(path: str | Path) -> list[dict]:
    """Sentences of a CoNLL file as rows; errors name ``file:line``.

    Raises:
        ManifestError: a missing file, a line with fewer than two columns, a tag that is neither
            ``O`` nor ``B-``/``I-``/``E-``/``S-`` prefixed, or a file without sentences.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"CoNLL file not found: {path}")
    rows: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0

    def end_sentence() -> None:
        if tokens:
            rows.append({"tokens": list(tokens), TAGS_KEY: list(tags), "_where": f"{path}:{start}"})
        tokens.clear()
        tags.clear()

    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            columns = line.split()
            if not columns:
                end_sentence()
                continue
            if columns[0] == "-DOCSTART-":
                end_sentence()
                continue
            if len(columns) < 2:
                raise ManifestError(f"{path}:{lineno}: expected a token and a tag, got {line.strip()!r}")
            if not TAG_PATTERN.match(columns[-1]):
                raise ManifestError(f"{path}:{lineno}: tag {columns[-1]!r} is neither 'O' nor B-/I-/E-/S- prefixed")
            if not tokens:
                start = lineno
            tokens.append(columns[0])
            tags.append(columns[-1])
    end_sentence()
    if not rows:
        raise ManifestError(f"{path}: no sentences")
    return rows


def write_conll(path: str | Path, rows: list[dict]) -> None:
    """Writes rows with ``tokens`` and ``tags`` as a two-column CoNLL file."""
    lines = []
    for row in rows:
        lines += [f"{token} {tag}" for token, tag in zip(row["tokens"], row[TAGS_KEY], strict=True)] + [""]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
