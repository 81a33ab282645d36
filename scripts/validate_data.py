#!/usr/bin/env python
"""Check a dataset folder before training: every problem of every split, all at once.

    python scripts/validate_data.py DIR [--modalities text,image,audio] [--label-key label]
        [--head classification] [--allow-outside-paths] [--cheap] [--strict]

Reads ``train/val/test.jsonl`` of DIR, decodes every media file fully and prints every problem
(``file:line: modality path: reason``) and the warnings (unusual sample rates and channel counts,
16-bit and palette images, duplicate rows, val/test rows also in train, classes with few samples)
grouped by kind. The checks are ``mm.data.validate.validate_dir``; ``--cheap`` opens no media file
(what training runs before building models). A WAV file whose header declares more audio than the
file holds (a truncated download) is a warning naming the file and both lengths; ``--strict`` makes
it a problem. At most 50 problems are listed, then counted.

Exit status: 0 without problems (warnings allowed), 1 with problems, 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mm.data.validate import validate_dir
from mm.labels import CODECS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="the dataset folder")
    parser.add_argument("--modalities", help="comma-separated, e.g. text,image,audio (default: those the rows have)")
    parser.add_argument("--label-key", default="label", help="dotted key of the label (default: label)")
    parser.add_argument("--head", default="classification", choices=sorted(CODECS), help="what a label must be")
    parser.add_argument("--allow-outside-paths", action="store_true", help="accept media paths outside DIR")
    parser.add_argument("--cheap", action="store_true", help="check paths and rows only, decode no file")
    parser.add_argument("--strict", action="store_true",
                        help="a damaged file that still decodes (a WAV holding less audio than its header declares) "
                             "is a problem, not a warning")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"{args.dir} is not a folder")
    modalities = None
    if args.modalities is not None:
        modalities = args.modalities.split(",")
        if not all(m.strip() for m in modalities):
            parser.error(f"--modalities {args.modalities!r}: an empty name")
        modalities = [m.strip() for m in modalities]
    report = validate_dir(args.dir, modalities, args.label_key, args.head, args.allow_outside_paths,
                          deep=not args.cheap)
    if args.strict:
        report.strict()
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
