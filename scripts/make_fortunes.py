#!/usr/bin/env python
"""Build "fortunes": a real, offline text-classification manifest dataset of four topics.

    python scripts/make_fortunes.py OUT_DIR [--per-class 570] [--n-val 80] [--n-test 200] [--seed 0]

Real English sentences that install offline: Debian's ``fortunes`` package (``apt-get install -y
fortunes``) ships its cookies by topic (``/usr/share/games/fortunes/<topic>``). Four topics with
distinct vocabulary make the classes: computers, politics, science and songs-poems. Each cookie
becomes one line of text (whitespace collapsed), kept when it has 2 to 120 words; each class is
capped at ``--per-class`` cookies, then the rows are shuffled and split into test / val / train
(defaults: 200 / 80 / 2,000). Length goes with the label (songs-poems median 36 words, the others
16-19): a trap for length-grouped batching, and a reason to report per-class results. The folder
gets ``{train,val,test}.jsonl`` with ``{"text", "label"}`` rows. Deterministic for a given ``--seed``.
The builder is ``mm.data.fortunes.build_fortunes``, also used by the benchmark suite's text job
(``scripts/bench/run.py``); the real-text shots curve reads the folder (``configs/curves/shots_text.yaml``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mm.data.fortunes import FORTUNES, build_fortunes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=570)
    parser.add_argument("--n-val", type=int, default=80)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=FORTUNES, help="the fortunes folder")
    args = parser.parse_args(argv)
    try:
        out = build_fortunes(args.out, args.per_class, args.n_val, args.n_test, args.seed, args.source)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = {s: sum(1 for _ in (out / f"{s}.jsonl").open()) for s in ("train", "val", "test")}
    print(f"{out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
