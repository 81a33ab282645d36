#!/usr/bin/env python
"""Has new data drifted from a run's data? Whether fine-tuning again is warranted, in one line.

    python scripts/drift.py RUN_DIR NEW_DATA [--split train] [--max-samples 500] [--permutations 1000]
                            [--alpha 0.05] [--out DIR]

NEW_DATA is a JSONL manifest (media paths relative to its folder) or a dataset folder (its
``--split``). Per modality: an MMD permutation test on the run's own pooled encoder features; for
labels (when the new rows carry them): a chi-square test on the class counts. Prints a table and
the verdict; ``--out DIR`` also writes ``drift.json`` and ``drift.md`` there. Exit 0 whatever the
verdict (``retrain`` in drift.json says it), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mm.artifacts import run_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=run_argument, help="run folder or artifact:[entity/]project/name:alias")
    parser.add_argument("new_data", type=Path, help="JSONL manifest or dataset folder of the new data")
    parser.add_argument("--split", default="train", help="split of a dataset folder to test (default: train)")
    parser.add_argument("--reference-split", default="val",
                        help="split of the run's own data to compare with (default: val; the train split's features "
                             "are fitted by a fine-tuned encoder and sit apart from any fresh data)")
    parser.add_argument("--max-samples", type=int, default=500, help="rows drawn from each side (default: 500)")
    parser.add_argument("--permutations", type=int, default=1000, help="permutations per MMD test (default: 1000)")
    parser.add_argument("--alpha", type=float, default=0.05, help="family-wise level (default: 0.05)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder to write drift.json and drift.md into")
    args = parser.parse_args(argv)
    if args.max_samples < 2 or args.permutations < 1 or not 0 < args.alpha < 1:
        parser.error("--max-samples >= 2, --permutations >= 1 and 0 < --alpha < 1")
    if not args.new_data.exists():
        parser.error(f"new data {args.new_data}: no such file or folder")

    from mm.data.errors import ManifestError
    from mm.serve.drift import check_drift

    try:
        report = check_drift(args.run_dir, args.new_data, args.split, args.max_samples, args.permutations,
                             args.alpha, args.seed, reference_split=args.reference_split)
    except (FileNotFoundError, ManifestError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "drift.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        (args.out / "drift.md").write_text(report.table() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
