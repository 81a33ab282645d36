#!/usr/bin/env python
"""Learning-rate range test (Smith, 2017): which learning rate to use for a config.

    python scripts/lr_find.py [CONFIG.yaml] [--modalities image] [--parts new backbone] [--steps 100]
        [--start-lr 1e-7] [--end-lr 10] [--beta 0.9] [--out runs/lr_find/NAME] [key=value ...]

CONFIG is a YAML experiment file (without one, the built-in defaults). For each parameter part
with trainable parameters (``new``: fusion and head, ``optim.lr``; ``backbone``: the encoders,
``optim.backbone_lr``) a fresh model trains for ``--steps`` steps while that part's rate rises
exponentially (the other part stays at rate 0), until the smoothed loss diverges. It prints
the suggested rates as overrides to paste, and writes ``lr_find.png`` (the curves) and
``lr_find.json`` (every step) into ``--out``. It is its own short run: it writes no run folder and
no checkpoint. When the loss never falls at any rate it says so and suggests nothing.

With ``--grid GRID.yaml`` it runs the range test of every variant of a grid (each combination of
its values; the config and overrides then come from the grid) and writes ``--write FILE``: the same
grid with each variant at its own suggested rates (``mm.search.fair``), for comparing strategies
each at its own best learning rate:

    python scripts/lr_find.py --grid configs/ablations/real_transfer_policies.yaml --write runs/fair/policies.yaml

Exit status: 0 with a suggestion for every part; 1 when some part got none (does not learn, or
diverged at once); 2 on an invalid config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mm.cli import add_config_arguments, config_and_overrides, fail, load_config_args
from mm.config import ConfigError
from mm.search.lr_find import LR_KEYS, PARTS, overrides, plot, range_test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lr_find.py", description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--parts", nargs="+", choices=PARTS, help="parts to sweep (default: each trainable one)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per sweep")
    parser.add_argument("--start-lr", type=float, default=1e-7)
    parser.add_argument("--end-lr", type=float, default=10.0)
    parser.add_argument("--beta", type=float, default=0.9, help="smoothing of the loss (moving average weight)")
    parser.add_argument("--min-drop", type=float, default=0.1, help="least relative fall of the loss that counts as learning")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/lr_find/<config stem>)")
    parser.add_argument("--grid", type=Path, help="range-test every variant of this grid file instead")
    parser.add_argument("--write", type=Path, help="with --grid: the grid file to write, each variant at its own rates")
    parser.add_argument("--which", choices=("steepest", "min_tenth"), default="steepest",
                        help="with --grid: which suggestion the written grid uses")
    args = parser.parse_intermixed_args(argv)
    sweep = {"start_lr": args.start_lr, "end_lr": args.end_lr, "steps": args.steps, "beta": args.beta,
             "min_drop": args.min_drop}
    if args.grid is not None:
        return fair(args, sweep)
    try:
        cfg = load_config_args(args)
        config, extra = config_and_overrides(args)
        if args.steps < 10 or not 0 < args.start_lr < args.end_lr:
            raise ConfigError(f"need --steps >= 10 and 0 < --start-lr < --end-lr; got {args.steps}, "
                              f"{args.start_lr}, {args.end_lr}")
    except ConfigError as err:
        return fail(err)
    out = args.out or Path("runs/lr_find") / (Path(config).stem if config else "default")
    curves = range_test(cfg, tuple(args.parts) if args.parts else None, start_lr=args.start_lr, end_lr=args.end_lr,
                        steps=args.steps, beta=args.beta, min_drop=args.min_drop,
                        log=lambda s: print(s, file=sys.stderr))
    out.mkdir(parents=True, exist_ok=True)
    plot(curves, out / "lr_find.png", title=f"range test: {config or 'defaults'} {' '.join(extra)}"[:120])
    result = {"config": config, "overrides": extra, "curves": [c.as_dict() for c in curves],
              "suggest_steepest": overrides(curves, "steepest"), "suggest_min_tenth": overrides(curves, "min_tenth")}
    (out / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
    for c in curves:
        key = LR_KEYS[c.part]
        if c.reason:
            print(f"{c.part}: no suggestion for {key}: {c.reason}")
        else:
            print(f"{c.part}: steepest descent at {key}={c.steepest:.3g}; minimum/10 {key}={c.min_tenth:.3g}"
                  f"{' (diverged after)' if c.diverged else ''}")
    if result["suggest_steepest"]:
        print("paste (steepest):  " + " ".join(result["suggest_steepest"]))
        print("paste (minimum/10): " + " ".join(result["suggest_min_tenth"]))
    print(f"wrote {out / 'lr_find.png'} and {out / 'lr_find.json'}")
    return 1 if any(c.reason for c in curves) else 0


def fair(args: argparse.Namespace, sweep: dict) -> int:
    """``--grid``: the range test of each variant of a grid, written as a grid at its own rates."""
    from mm.experiments.grids import load_grid
    from mm.search.fair import fair_grid, own_rates

    if args.write is None:
        return fail("--grid needs --write FILE (the grid to write)")
    try:
        grid = load_grid(args.grid, list(args.overrides))
        rates = own_rates(grid, args.which, log=lambda s: print(s, file=sys.stderr), **sweep)
    except ConfigError as err:
        return fail(err, 1 if "no rate for" in str(err) else 2)
    command = f"python scripts/lr_find.py --grid {args.grid} --write {args.write} --which {args.which}"
    out = fair_grid(grid, rates, args.write, command)
    for label, extra in rates.items():
        print(f"{label}: {' '.join(extra)}")
    print(f"wrote {out}; run it with: python scripts/ablate.py {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
