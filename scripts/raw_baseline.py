#!/usr/bin/env python
"""Raw-input baseline: logistic regression on raw pixels and log-mel statistics of a manifest folder.

    python scripts/raw_baseline.py DATASET_DIR [--modalities image,audio] [--C 0.001 0.01 0.1 1 10]
        [--size 28] [--max-iter 2000] [--out results.json]

For each non-empty subset of the modalities (image, audio, image+audio) it fits standardised
logistic regression for each C, picks C on val accuracy and reports val and test accuracy and
macro-F1 as a Markdown table (stdout) and a JSON file. This is the floor mm's deep models must beat.

Example:
    python scripts/raw_baseline.py /work/digits_speech --out runs/raw_baseline/digits_speech.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mm.data.manifest import ManifestError
from mm.lowdata.raw_baseline import C_GRID, run_raw_baseline
from mm.lowdata.shallow import markdown_table

COLUMNS = ["modalities", "features", "C", "val acc", "test acc", "val macro-F1", "test macro-F1", "wall time (s)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="manifest folder with train/val/test.jsonl")
    parser.add_argument("--modalities", default="image,audio", help="comma-separated subset of image,audio")
    parser.add_argument("--C", type=float, nargs="+", default=list(C_GRID), help="inverse regularisation grid")
    parser.add_argument("--size", type=int, default=28, help="image side after resizing")
    parser.add_argument("--max-iter", type=int, default=2000, help="lbfgs iterations")
    parser.add_argument("--out", type=Path, default=Path("results.json"), help="JSON results file")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        table, _ = run_raw_baseline(args.dataset, [m.strip() for m in args.modalities.split(",") if m.strip()],
                                    grid=args.C, size=args.size, max_iter=args.max_iter)
    except (ManifestError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    print(markdown_table(table, COLUMNS, decimals={"C": 3, "wall time (s)": 1}), end="")
    print(f"\ntotal wall time {wall:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"dataset": str(args.dataset), "grid": args.C, "size": args.size, "max_iter": args.max_iter,
               "rows": table, "wall_time_s": wall}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
