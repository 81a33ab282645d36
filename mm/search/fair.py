"""Fair comparisons: a grid in which every cell trains at its own best learning rate.

A strategy compared at a learning rate chosen for another is handicapped (LoRA adapters at a full
fine-tuning rate, say). ``own_rates`` takes a grid file, runs the range test (``mm.search.lr_find``)
on each of its variants (every combination of its values, seed of the grid's first), and
``fair_grid`` writes a grid file of the same cells in which each variant carries the rates its
range test suggested. The new grid has one bundle,
``variant``, whose labels are the old values joined (``strategy=lora,data.modalities=image``), so it
runs with ``scripts/ablate.py`` and tabulates like any other grid.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mm.config import ConfigError, load_config
from mm.experiments.grids import load_grid
from mm.experiments.spec import Grid, label_value, override_value
from mm.search.lr_find import overrides as lr_overrides
from mm.search.lr_find import range_test


def variants(grid: Grid) -> list[tuple[str, list[str]]]:
    """Each combination of a grid's values: its label (``key=value,...``) and its overrides."""
    axes = []
    for key, values in grid.grid.items():
        if isinstance(values, dict):
            axes.append([(f"{key}={label}", [str(o) for o in bundle]) for label, bundle in values.items()])
        else:
            axes.append([(f"{key}={label_value(v)}", [f"{key}={override_value(v)}"]) for v in values])
    return [(",".join(label for label, _ in combo), [o for _, bundle in combo for o in bundle])
            for combo in itertools.product(*axes)]


def own_rates(grid: Grid, which: str = "steepest", log: Callable[[str], None] = print,
              **sweep: Any) -> dict[str, list[str]]:
    """The range test's suggested rate overrides of each variant (``which``: steepest or min_tenth).

    Raises:
        ConfigError: a variant's model does not learn (no suggestion): a fair rate cannot be named.
    """
    rates = {}
    for label, extra in variants(grid):
        cfg = load_config(grid.base, [*grid.overrides, *extra, f"seed={grid.seeds[0]}"])
        log(f"[fair] range test of {label}")
        curves = range_test(cfg, log=log, **sweep)
        missing = [c for c in curves if c.reason]
        if missing:
            raise ConfigError(f"{grid.path}: variant {label}: no rate for {missing[0].part}: {missing[0].reason}")
        rates[label] = lr_overrides(curves, which)
        log(f"[fair] {label}: {' '.join(rates[label])}")
    return rates


def fair_grid(grid: Grid, rates: dict[str, list[str]], out: Path, command: str) -> Path:
    """Writes the grid with each variant at its own rates; returns the file."""
    bundle = {label: [*extra, *rates[label]] for label, extra in variants(grid)}
    spec = {"base": str(grid.base) if grid.base else None, "overrides": grid.overrides, "grid": {"variant": bundle},
            "seeds": grid.seeds, "name": f"{grid.name}_own_lr"}
    if grid.metric:
        spec["metric"] = grid.metric
    text = (f"# python scripts/ablate.py {out}\n# {grid.name} with each variant at its own learning rates, from: "
            f"{command}\n" + yaml.safe_dump(spec, sort_keys=False, width=200))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    load_grid(out)  # what was written reads back as a grid
    return out
