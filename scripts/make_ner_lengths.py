#!/usr/bin/env python
"""Build a timing stand-in for CoNLL-2003 English: real English words in sentences of its lengths.

    python scripts/make_ner_lengths.py OUT_DIR [--train 14041] [--val 3250] [--test 3453] [--seed 0]

No annotated English NER corpus installs offline (PyPI and Debian have none; see README, "NER").
To size the README's NER budget for the real corpus, this writes a folder of the same shape:
``{train,val,test}.jsonl`` with ``tokens`` and ``tags`` per row and CoNLL-2003's split sizes, the
words taken in order from Debian's ``fortunes`` cookies (``apt-get install -y fortunes``), each
sentence's length drawn from a gamma distribution with CoNLL-2003's mean (14.5 words) and spread
(standard deviation about 11; 1 to 113 words). The tags are NOT annotations: a capitalised word
after the first is ``B-MISC``, every other word ``O``. Use it for steps per second and evaluation
time, never for F1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from mm.data.fortunes import FORTUNES, TOPICS

WORD = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")  # words and punctuation marks, as CoNLL tokenises them


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=14041)
    parser.add_argument("--val", type=int, default=3250)
    parser.add_argument("--test", type=int, default=3453)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=FORTUNES, help="the fortunes folder")
    args = parser.parse_args(argv)
    missing = [t for t in TOPICS if not (args.source / t).is_file()]
    if missing:
        print(f"error: {args.source}: no fortunes for {missing}; install them with `apt-get install -y fortunes`",
              file=sys.stderr)
        return 2
    words = [w for t in TOPICS for w in WORD.findall((args.source / t).read_text(encoding="utf-8", errors="replace"))]
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    at = 0
    for split, n in (("train", args.train), ("val", args.val), ("test", args.test)):
        lengths = np.clip(np.rint(rng.gamma(1.75, 14.5 / 1.75, n)), 1, 113).astype(int)
        rows = []
        for length in lengths:
            if at + length > len(words):
                at = 0
            tokens = words[at : at + length]
            at += length
            tags = ["B-MISC" if i and w[:1].isupper() else "O" for i, w in enumerate(tokens)]
            rows.append(json.dumps({"tokens": tokens, "tags": tags}))
        (args.out / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
        print(f"{split}: {n} sentences, {int(lengths.sum())} words (mean {lengths.mean():.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
