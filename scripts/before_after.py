#!/usr/bin/env python
"""Before and after continued fine-tuning: what the new model gained on new data and forgot of the old.

    python scripts/before_after.py OLD_RUN NEW_RUN [--old-data DIR] [--new-data DIR] [--split test]
                                   [--metric accuracy] [--resamples 1000] [--out DIR]

Scores both runs on the old run's test set and on the new run's (by default each run's own
``data.dataset``), in the new run's class space, with paired bootstrap intervals, a paired p-value
and McNemar's exact test (``mm.analysis.before_after``). Prints a table and a JSON line; ``--out``
also writes ``before_after.md`` and ``before_after.json``. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from mm.artifacts import run_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old_run", type=run_argument, help="the run before (folder or artifact:...)")
    parser.add_argument("new_run", type=run_argument, help="the run after, e.g. trained with train.init_from=OLD_RUN")
    parser.add_argument("--old-data", type=Path, help="dataset folder of the old data (default: the old run's)")
    parser.add_argument("--new-data", type=Path, help="dataset folder of the new data (default: the new run's)")
    parser.add_argument("--split", default="test", help="split scored in each folder (default: test)")
    parser.add_argument("--metric", default=None, help="per-example metric (default: the new run's train.metric)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder to write before_after.md and .json into")
    args = parser.parse_args(argv)

    from mm.analysis.before_after import before_after, summary, table
    from mm.data.errors import ManifestError

    try:
        metric, sides = before_after(args.old_run, args.new_run, args.old_data, args.new_data, args.split,
                                     args.metric, args.resamples, args.seed)
    except (FileNotFoundError, ManifestError, ValueError, KeyError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    text, data = table(metric, sides), summary(metric, sides)
    print(text)
    print(json.dumps(data))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "before_after.md").write_text(text + "\n")
        (args.out / "before_after.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
