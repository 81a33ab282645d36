#!/usr/bin/env python
"""Shallow baseline: logistic regression on frozen pooled features, optionally against neural heads.

    python scripts/shallow_baseline.py [CONFIG.yaml | --config CONFIG.yaml] [key=value ...] [--modalities text,image]
        [--C 0.01 0.1 1 10] [--max-iter 1000] [--neural] [--out DIR]

Extracts the train/val/test features once with every encoder frozen, fits standardised logistic
regression for each C (chosen on val) and reports val/test accuracy and macro-F1. With
``--neural`` it also trains, on the same config and frozen encoders, the neural linear probe
(``encoders.*.trainable=linear_probe``) and MLP heads (``fusion.num_layers=1`` and ``2``), and
prints one comparison table. Tables go to DIR/shallow_baseline.{md,json} (default
runs/shallow_baseline); the neural runs to DIR/runs/. The last stdout line is a JSON summary.

Example:
    python scripts/shallow_baseline.py data.task=shape data.modalities=[text] --neural
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mm.cli import add_config_arguments, config_and_overrides, fail
from mm.config import ConfigError, load_config

COLUMNS = ["method", "trainable params", "val acc", "test acc", "val macro-F1", "test macro-F1", "wall time (s)"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--C", type=float, nargs="+", default=None, help="inverse regularisation grid")
    parser.add_argument("--max-iter", type=int, default=1000, help="lbfgs iterations")
    parser.add_argument("--neural", action="store_true", help="also train linear-probe and MLP heads")
    parser.add_argument("--out", type=Path, default=Path("runs/shallow_baseline"))
    return parser.parse_intermixed_args(argv)


def neural_variants(modalities: list[str]) -> dict[str, tuple[str, list[str]]]:
    """Neural heads on the same frozen features: run name -> (method, extra overrides)."""
    frozen = [f"encoders.{m}.trainable=frozen" for m in modalities]
    return {
        "linear_probe": ("neural linear probe", [f"encoders.{m}.trainable=linear_probe" for m in modalities]),
        "mlp1": ("MLP head, 1 hidden layer", [*frozen, "fusion.num_layers=1"]),
        "mlp2": ("MLP head, 2 hidden layers", [*frozen, "fusion.num_layers=2"]),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config, overrides = config_and_overrides(args)
        cfg = load_config(config, overrides)
    except (ConfigError, ValueError) as err:
        return fail(err)

    from mm.lowdata.shallow import C_GRID, extract_splits, fit_logistic, markdown_table
    from mm.run.runtime import pick_device
    from mm.train import RunOptions, train

    # Features once, then the C grid on them.
    t0 = time.perf_counter()
    features, classes = extract_splits(cfg, pick_device(cfg.train.device))
    extract_s = time.perf_counter() - t0
    result = fit_logistic(features, len(classes), tuple(args.C or C_GRID), args.max_iter)
    print(f"features: {', '.join(f'{s} {f.x.shape}' for s, f in features.items())} in {extract_s:.1f}s; "
          f"val accuracy by C: {result.val_accuracy_by_C}", file=sys.stderr)
    rows = [{"method": f"logistic regression (C={result.C:g})", "trainable params": result.trainable_params,
             "val acc": result.val["accuracy"], "test acc": result.test["accuracy"],
             "val macro-F1": result.val["macro_f1"], "test macro-F1": result.test["macro_f1"],
             "wall time (s)": extract_s + result.fit_time_s}]

    # The neural heads, trained by the one training loop on the same config.
    if args.neural:
        for name, (method, extra) in neural_variants(list(cfg.data.modalities)).items():
            run_cfg = load_config(config, [*overrides, *extra, f"name={name}"])
            res = train(run_cfg, RunOptions(out_dir=str(args.out / "runs")))
            rows.append({"method": method, "trainable params": res["params"]["params/trainable"],
                         "val acc": res["val"]["accuracy"], "test acc": res["test"]["accuracy"],
                         "val macro-F1": res["val"]["macro_f1"], "test macro-F1": res["test"]["macro_f1"],
                         "wall time (s)": res["wall_time_s"]})

    table = markdown_table(rows, COLUMNS, {"wall time (s)": 1}) + (
        f"\nlogistic regression wall time: feature extraction {extract_s:.1f}s + {len(result.val_accuracy_by_C)} "
        f"fits {result.fit_time_s:.1f}s; neural rows: whole training runs (mm.train.train).\n")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shallow_baseline.md").write_text(table)
    (args.out / "shallow_baseline.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(json.dumps({"out": str(args.out), "C": result.C, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
