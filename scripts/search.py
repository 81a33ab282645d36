#!/usr/bin/env python
"""Hyper-parameter search with Optuna: each trial an mm run, bad trials pruned early, resumable.

    python scripts/search.py SEARCH.yaml [--out DIR] [--n-trials N] [--pruner NAME] [--storage URL] [--worker K] [--report] [--dry-run] [key=value ...]

Examples:
    python scripts/search.py configs/search/lr_synthetic.yaml
    python scripts/search.py configs/search/lr_synthetic.yaml --out runs/search/a &   # two processes,
    python scripts/search.py configs/search/lr_synthetic.yaml --out runs/search/a --worker 1   # one study
    python scripts/search.py configs/search/lr_synthetic.yaml --report   # tables and plots of what ran

The search file format is described in ``mm/search/spec.py``. Trials train as subprocess cells
(``python -m mm.experiments.cell``) into ``<out>/runs/trial=<n>__seed=<s>``; the study is in
``<out>/study.db`` (SQLite) unless the file (or ``--storage``) names an RDB URL, which lets
processes on several machines share it (``scripts/slurm/search_workers.sbatch``). Rerunning the same command after a kill continues the study: finished
trials are kept, a killed one is retried. At the end (and with ``--report``) the folder gets
``trials.csv``, ``trials.md``, ``best.yaml`` (first line: the command that trains it),
``history.png``, ``intermediate.png`` and ``importance.png``. ``--worker K`` offsets the sampler's
seed, so processes sharing a study draw different values.
Exit status: 0 when the study has its n_trials; 1 when trials kept failing; 2 on an invalid file.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from mm.cli import fail
from mm.config import ConfigError
from mm.search.spec import PRUNERS, read_search


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops the search like Ctrl-C: the running trial is terminated too


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/search.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("search", help="search YAML file, e.g. configs/search/lr_synthetic.yaml")
    parser.add_argument("--out", type=Path, help="search folder (default: runs/search/<name>)")
    parser.add_argument("--storage", help="an RDB URL (postgresql://...) shared by several machines; overrides the file's")
    parser.add_argument("--n-trials", type=int, help="the study's number of trials (overrides the file's)")
    parser.add_argument("--pruner", choices=sorted(PRUNERS), help="the pruner (overrides the file's, without its arguments)")
    parser.add_argument("--worker", type=int, default=0, help="this process's index among those sharing the study")
    parser.add_argument("--report", action="store_true", help="run nothing: write the tables and plots")
    parser.add_argument("--dry-run", action="store_true", help="check the file and print the space, run nothing")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every trial, e.g. train.max_steps=50")
    args = parser.parse_intermixed_args(argv)
    try:
        search = read_search(args.search, args.overrides)
        if args.storage is not None:
            if "://" not in args.storage:
                raise ConfigError(f"--storage must be an RDB URL such as postgresql://user:password@host/db, "
                                  f"got {args.storage!r}")
            search.storage = args.storage
        if args.n_trials is not None:
            if args.n_trials < 1:
                raise ConfigError(f"--n-trials must be >= 1, got {args.n_trials}")
            search.n_trials = args.n_trials
        if args.pruner is not None:
            search.pruner = {"name": args.pruner}
        if args.worker < 0:
            raise ConfigError("--worker must be >= 0")
    except ConfigError as err:
        return fail(err)
    out = args.out or Path("runs") / "search" / search.name
    if args.dry_run:
        print(f"search {search.name}: {search.n_trials} trials, {search.direction} val/{search.metric}, "
              f"pruner {search.pruner['name']}, sampler {search.sampler['name']}, out {out}")
        for p in search.space:
            print(f"  {p.key}: {p.type} {p.choices if p.type == 'categorical' else [p.low, p.high]}")
        return 0

    from mm.search.report import write_report
    from mm.search.study import open_study, run_search

    signal.signal(signal.SIGTERM, _interrupt)
    status = 0
    if args.report:
        study = open_study(search, out, args.worker)
    else:
        try:
            study = run_search(search, out, args.worker, log=lambda s: print(s, flush=True))
        except RuntimeError as err:
            status = fail(err, 1)
            study = open_study(search, out, args.worker), 1
    report = write_report(search, study, out)
    if report["best_yaml"] is not None:
        best = study.best_trial
        print(f"best: trial {best.number}, val/{search.metric} {best.value:.4g}, "
              f"{' '.join(search.trial_overrides(best.params))}")
        print(f"wrote {out / 'trials.md'}, {report['best_yaml']} and {len(report['plots'])} plots")
    return status


if __name__ == "__main__":
    sys.exit(main())
