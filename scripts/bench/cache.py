#!/usr/bin/env python
"""Benchmark the frozen-feature cache on a 12-cell frozen-backbone grid, uncached vs cached.

    python scripts/bench/cache.py [--n-train 600] [--n-eval 120] [--epochs 4] [--threads 1] [--out runs/bench]
                                  [--fusions concat late ...] [--seeds 0 1] [--reps 1]

``--reps N`` repeats the pair (cached from an empty
cache, then uncached) N times, interleaved, and reports the median and range of the speedup; the
benchmark suite (``scripts/bench/run.py``) runs a smaller grid that way.

The grid is fusion in {concat, late, gated, attention, tensor, lowrank} x seeds {0, 1} on the
synthetic color_animal task, with frozen MiniLM for text and the frozen tiny-vit for images, run
in-process through ``mm.experiments.grids`` twice in this one process: with ``data.cache_features=auto``
starting from an empty feature cache (so its time includes building the cache), then with
``data.cache_features=off``. Both run after the same warm-up (data generated, imports and weights
loaded), the cached grid first, so the uncached one finds the image files in the page cache. It
reports both wall times, their ratio, and whether each cell's metrics are identical, as a Markdown
table printed and written, with the raw numbers, to ``<out>/bench_cache.{md,json}``. Cells run with
``plots=False`` (no confusion-matrix PNG, about 1 s of matplotlib per cell on this CPU) in both
grids, as a grid that wants no per-cell pictures would.

What the ratio depends on: without the cache every cell runs both backbones over the training set
every epoch (and over val and test); with it, the backbones run once per split for the whole grid
and each cell trains only its fusion and head. So the speedup grows with epochs and cells, and is
smallest for the attention fusion, a transformer over all tokens that costs per sample about what
the tiny backbones do.

The feature cache, the synthetic data and the tiny backbones live in ``<out>/cache`` (``MM_CACHE``),
so emptying the feature cache touches no one else's. ``--threads`` sets torch's intra-op threads for
both grids: on a 2-core machine shared with other jobs, 2 threads made both paths 3-6x slower than
1 (each small op waits for the second thread to be scheduled).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

FUSIONS = ["concat", "late", "gated", "attention", "tensor", "lowrank"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=600, help="synthetic training samples")
    parser.add_argument("--n-eval", type=int, default=120, help="synthetic validation and test samples, each")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per cell (the shipped grids use 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both grids)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--fusions", nargs="+", default=FUSIONS, help="the grid's fusions")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="the grid's seeds")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of the pair (cached, uncached)")
    return parser.parse_args(argv)


def run(mode: str, overrides: list[str], out: Path, fusions: list[str] = FUSIONS,
        seeds: list[int] = (0, 1)) -> tuple[float, dict[str, dict[str, Any]]]:
    """Run the grid with ``data.cache_features=<mode>``; return its wall time and each cell's results."""
    from mm.experiments.grids import expand, run_grid
    from mm.experiments.spec import Grid

    grid = Grid(path=Path("bench_cache"), name=f"bench_cache_{mode}", base=None,
                overrides=[*overrides, f"data.cache_features={mode}"], grid={"fusion.name": list(fusions)},
                seeds=list(seeds), plots=False)
    shutil.rmtree(out / mode, ignore_errors=True)
    cells = expand(grid, out / mode)
    start = time.perf_counter()
    done = run_grid(grid, cells, out / mode, log=lambda line: print(f"[{mode}] {line}", flush=True))
    wall = time.perf_counter() - start
    if done.failed:
        raise SystemExit(f"{mode}: cells failed: {done.failed}")
    results = {c.name: json.loads((out / mode / "runs" / c.name / "results.json").read_text()) for c in cells}
    return wall, results


def compare(cached: dict[str, dict], plain: dict[str, dict]) -> list[dict[str, Any]]:
    """Per cell: both wall times, val/test accuracy, bitwise equality of all metrics, largest difference."""
    rows = []
    for cell in plain:
        a, b = cached[cell], plain[cell]
        diffs = [abs(a[s][k] - b[s][k]) for s in ("val", "test") for k in b[s]]
        rows.append({"cell": cell, "cached_s": a["wall_time_s"], "uncached_s": b["wall_time_s"],
                     "ratio": b["wall_time_s"] / a["wall_time_s"],
                     "val_accuracy": b["val"]["accuracy"], "test_accuracy": b["test"]["accuracy"],
                     "identical": a["val"] == b["val"] and a["test"] == b["test"],
                     "accuracy_identical": all(a[s][k] == b[s][k] for s in ("val", "test") for k in b[s] if k != "loss"),
                     "max_abs_diff": max(diffs)})
    return rows


def markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    s, n = summary, summary["cells"]
    by_kind = " / ".join("-" if s[k] is None else f"{s[k]:.1f}x" for k in ("speedup_no_attention", "speedup_attention"))
    lines = [
        f"## Frozen-feature cache: {n}-cell grid ({len(s['fusions'])} fusions x {len(s['seeds'])} seeds), "
        f"n_train={s['n_train']}, "
        f"n_val=n_test={s['n_eval']}, epochs={s['epochs']}, torch threads={s['threads']}\n",
        "| run | wall time (s) | per cell (s) |", "|---|---|---|",
        f"| cache off | {s['uncached_s']:.1f} | {s['uncached_s'] / n:.1f} |",
        f"| cache on, cold (includes building it) | {s['cached_s']:.1f} | {s['cached_s'] / n:.1f} |",
        f"\n**speedup: {s['speedup']:.1f}x** (last repetition; median of {s['reps']}: {s['speedup_median']:.1f}x, "
        f"range {min(s['speedups']):.1f}-{max(s['speedups']):.1f}x); cells with bitwise identical metrics: "
        f"{s['identical_cells']}/{n}; identical accuracy / F1 / top-k: {s['accuracy_identical_cells']}/{n}; largest "
        f"metric difference: {s['max_abs_diff']:.2e}; speedup of the cells' own wall times without / with attention "
        f"fusion: {by_kind} (the first cached cell builds the cache)\n",
        "| cell | uncached (s) | cached (s) | ratio | val accuracy | test accuracy | identical | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['uncached_s']:.1f} | {r['cached_s']:.1f} | {r['ratio']:.1f} | "
                     f"{r['val_accuracy']:.4f} | "
                     f"{r['test_accuracy']:.4f} | {'yes' if r['identical'] else 'no'} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["MM_CACHE"] = str((args.out / "cache").resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    overrides = [
        "data.task=color_animal", f"data.synthetic.n_train={args.n_train}", f"data.synthetic.n_val={args.n_eval}",
        f"data.synthetic.n_test={args.n_eval}", f"train.epochs={args.epochs}", "train.batch_size=32",
        "encoders.text.source=minilm", "encoders.text.trainable=frozen",
        "encoders.image.source=tiny-vit", "encoders.image.trainable=frozen", "wandb.mode=disabled",
    ]
    print(f"bench_cache: {len(args.fusions) * len(args.seeds)} cells, n_train={args.n_train}, n_val=n_test={args.n_eval}, epochs={args.epochs}, "
          f"torch threads={torch.get_num_threads()}", flush=True)

    # Warm-up outside the timings: the data, the backbones, and the imports the first cell would pay.
    import matplotlib.pyplot  # noqa: F401  (the classification report's)

    from mm.config import load_config
    from mm.data import resolve_dataset
    from mm.encoders import ImageEncoder, TextEncoder
    from mm.paths import cache_dir

    resolve_dataset(load_config(None, overrides).data)
    TextEncoder("minilm")
    ImageEncoder("tiny-vit")

    speedups, cells = [], len(args.fusions) * len(args.seeds)
    for rep in range(args.reps):  # interleaved pairs; each cached grid starts from an empty cache
        shutil.rmtree(cache_dir() / "features", ignore_errors=True)
        cached_s, cached = run("auto", overrides, args.out, args.fusions, args.seeds)
        uncached_s, plain = run("off", overrides, args.out, args.fusions, args.seeds)
        speedups.append(uncached_s / cached_s)
        print(f"rep {rep}: cached {cached_s:.1f} s, uncached {uncached_s:.1f} s, speedup {speedups[-1]:.2f}x", flush=True)
    rows = compare(cached, plain)

    def ratio(attention: bool) -> float | None:
        picked = [r for r in rows if ("attention" in r["cell"]) == attention]
        return sum(r["uncached_s"] for r in picked) / sum(r["cached_s"] for r in picked) if picked else None

    summary = {"n_train": args.n_train, "n_eval": args.n_eval, "epochs": args.epochs, "threads": args.threads,
               "cells": cells, "fusions": args.fusions, "seeds": args.seeds, "reps": args.reps,
               "cached_s": cached_s, "uncached_s": uncached_s, "speedup": uncached_s / cached_s,
               "speedups": speedups, "speedup_median": statistics.median(speedups),
               "identical_cells": sum(r["identical"] for r in rows),
               "accuracy_identical_cells": sum(r["accuracy_identical"] for r in rows),
               "max_abs_diff": max(r["max_abs_diff"] for r in rows), "speedup_no_attention": ratio(False),
               "speedup_attention": ratio(True), "load_avg": os.getloadavg()}
    text = markdown(summary, rows)
    print("\n" + text)
    (args.out / "bench_cache.md").write_text(text)
    (args.out / "bench_cache.json").write_text(json.dumps({"summary": summary, "cells": rows}, indent=2) + "\n")
    print(f"wrote {args.out / 'bench_cache.md'} and {args.out / 'bench_cache.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
