"""The fortunes dataset: a real, offline text-classification manifest dataset of four topics.

Real English sentences that install offline: Debian's ``fortunes`` package (``apt-get install -y
fortunes``) ships its cookies by topic (``/usr/share/games/fortunes/<topic>``). Four topics with
distinct vocabulary make the classes: computers, politics, science and songs-poems. Each cookie
becomes one line of text (whitespace collapsed), kept when it has 2 to 120 words; each class is
capped at ``per_class`` cookies, then the rows are shuffled and split into test / val / train
(defaults: 200 / 80 / 2,000). ``scripts/make_fortunes.py`` writes it; the benchmark suite's text job
(``scripts/bench/run.py``) builds it too.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
TOPICS = ("computers", "politics", "science", "songs-poems")


def build_fortunes(out: Path, per_class: int = 570, n_val: int = 80, n_test: int = 200, seed: int = 0,
                   source: Path = FORTUNES) -> Path:
    """Write ``out/{train,val,test}.jsonl`` (``{"text", "label"}``) from the fortune topics; returns ``out``.

    Raises:
        FileNotFoundError: the ``fortunes`` package is not installed (``apt-get install -y fortunes``).
    """
    missing = [t for t in TOPICS if not (source / t).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: no fortunes for {missing}; install them with "
                                "`apt-get install -y fortunes`")
    rng = random.Random(seed)
    rows = []
    for label in TOPICS:
        cookies = (source / label).read_text(encoding="utf-8", errors="replace").split("\n%\n")
        lines = [" ".join(c.split()) for c in cookies]
        kept = [t for t in lines if 2 <= len(t.split()) <= 120]
        rng.shuffle(kept)
        rows += [{"text": t, "label": label} for t in kept[:per_class]]
    rng.shuffle(rows)
    splits = {"test": rows[:n_test], "val": rows[n_test : n_test + n_val], "train": rows[n_test + n_val :]}
    if not splits["train"]:
        raise ValueError(f"{len(rows)} cookies leave no training rows after {n_test} test and {n_val} val rows")
    out.mkdir(parents=True, exist_ok=True)
    for split, part in splits.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return out
