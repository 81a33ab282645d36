#!/usr/bin/env python
"""Compare two runs, or two cells of a grid, on the same test examples.

    python scripts/compare.py RUN_OR_CELL_A RUN_OR_CELL_B [--metric accuracy] [--resamples 1000] [--seed 0]

A run is a run folder (its ``report/test_predictions.npz``, written at the end of training). A cell
is the runs of one config across seeds in a grid folder: its run folders' path without the
``__seed=N`` suffix, e.g. ``out/grid/runs/fusion.name=late`` (or ``out/grid/fusion.name=late``).
Two cells pair their runs by seed; a run pairs with a run.

Prints each side's metric with its 95 % bootstrap interval over the test examples, the difference
A - B with its interval and the paired bootstrap p-value, and for accuracy McNemar's exact test
(per pair of runs). For cells, a side's metric is the mean over its seeds, and every bootstrap
resample draws the same test examples for all seeds (``mm.analysis.stats``). The last stdout line is a
JSON summary. Two runs are paired only when they were tested on the same examples: the same
count, labels and example fingerprints (each test example's id and a digest of its text and media
files, saved with the predictions: ``mm.analysis.fingerprints``); otherwise the first differing
example is named. Exit status: 0, or 2 when the two cannot be compared (not found, tested on
different examples, a metric without a per-example form).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mm.analysis.stats import PREDICTIONS, RESAMPLES, Interval, Predictions, compare, format_p


def find_runs(path: Path) -> dict[int | None, Path]:
    """The run folders ``path`` names: itself (seed None), or a cell's runs by seed.

    Raises:
        FileNotFoundError: neither a finished run nor a cell; the message says what is missing.
    """
    if (path / "results.json").is_file():
        if not (path / PREDICTIONS).is_file():
            raise FileNotFoundError(f"{path}: no {PREDICTIONS} (the run finished before mm saved test predictions)")
        return {None: path}
    runs = {}
    for folder in (path.parent, path.parent / "runs"):
        for run in folder.glob(f"{path.name}__seed=*"):
            seed = re.fullmatch(r".*__seed=(\d+)", run.name)
            if seed and (run / PREDICTIONS).is_file():
                runs[int(seed.group(1))] = run
    if not runs:
        raise FileNotFoundError(f"{path}: neither a finished run folder with {PREDICTIONS} nor a grid cell "
                                f"(no run folders {path.name}__seed=N with test predictions beside it or in runs/)")
    return dict(sorted(runs.items()))


def pair(a: dict[int | None, Path], b: dict[int | None, Path]) -> list[tuple[int | None, Path, Path]]:
    """Run with run; otherwise the runs of the seeds both sides have.

    Raises:
        ValueError: no seed in common.
    """
    if list(a) == [None] and list(b) == [None]:
        return [(None, a[None], b[None])]
    seeds = sorted(set(a) & set(b) - {None})
    if not seeds:
        raise ValueError(f"no seed in common: A has seeds {sorted(s for s in a if s is not None)}, "
                         f"B has {sorted(s for s in b if s is not None)} (a single run pairs only with a single run)")
    return [(s, a[s], b[s]) for s in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="run folder or grid cell A")
    parser.add_argument("b", type=Path, help="run folder or grid cell B")
    parser.add_argument("--metric", default=None, help="default: A's train.metric")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws")
    args = parser.parse_args(argv)

    try:
        pairs = pair(find_runs(args.a), find_runs(args.b))
        metric = args.metric
        if metric is None:
            from mm.config import load_config

            metric = load_config(pairs[0][1] / "config.yaml").train.metric
        side_a = [Predictions.load(a / PREDICTIONS) for _, a, _ in pairs]
        side_b = [Predictions.load(b / PREDICTIONS) for _, _, b in pairs]
        unchecked = [str(run / PREDICTIONS) for (_, a, b), pa, pb in zip(pairs, side_a, side_b, strict=True)
                     for run, p in ((a, pa), (b, pb)) if p.fingerprints is None]
        if unchecked:
            print(f"warning: {', '.join(unchecked)} saved no example fingerprints (written before mm stored them): "
                  "the examples are matched by count and labels only", file=sys.stderr)
        result = compare(side_a, side_b, metric, args.resamples, args.seed)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2

    p, seeds = result.paired, [s for s, _, _ in pairs]
    what = "1 pair of runs" if seeds == [None] else f"seeds {seeds} (each side: mean over seeds)"
    print(f"{metric} on {p.n} test examples, {what}; {p.resamples} paired bootstrap resamples, 95 % intervals")
    width = max(len(str(args.a)), len(str(args.b)), 5)
    print(f"A      {str(args.a):<{width}}  {p.a.format()}")
    print(f"B      {str(args.b):<{width}}  {p.b.format()}")
    print(f"A - B  {'':<{width}}  {p.diff.value:+.4f} [{p.diff.low:+.4f}, {p.diff.high:+.4f}]  "
          f"paired bootstrap p {format_p(p.p, p.resamples, relation=True)}")
    for seed, test in zip(seeds, result.mcnemar, strict=False):
        where = "" if seed is None else f" (seed {seed})"
        print(f"McNemar{where}: A right & B wrong {test.a_only}, A wrong & B right {test.b_only}, exact p = {test.p:.3g}")

    print(json.dumps({
        "metric": metric, "n": p.n, "seeds": seeds, "resamples": p.resamples,
        "a": {"path": str(args.a), "runs": [str(a) for _, a, _ in pairs], **interval(p.a)},
        "b": {"path": str(args.b), "runs": [str(b) for _, _, b in pairs], **interval(p.b)},
        "diff": interval(p.diff), "p": p.p,
        "mcnemar": [{"seed": s, "a_only": t.a_only, "b_only": t.b_only, "p": t.p}
                    for s, t in zip(seeds, result.mcnemar, strict=False)],
    }))
    return 0


def interval(i: Interval) -> dict[str, float]:
    return {"value": i.value, "low": i.low, "high": i.high}


if __name__ == "__main__":
    sys.exit(main())
