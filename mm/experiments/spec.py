"""Spec files of grids and learning curves: what they hold, reading them, naming and expanding cells.

A spec file is YAML: a ``base`` config, fixed ``overrides``, what varies, and ``seeds``. Grids and
curves are read by ``read_spec`` into a ``Grid`` or ``Curve`` and become ``Cell``s through
``expand_cells``, so a cell's name, run folder and W&B fields, and the checks made before anything
runs, are the same for both. ``KINDS`` lists the kinds of learning curve. The file formats are
described in ``mm.experiments.grids`` and ``mm.experiments.curves``, which load them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mm.config import Config, ConfigError, load_config
from mm.run.options import RunOptions

ROOT = Path(__file__).resolve().parents[2]
RESERVED_KEYS = {"seed", "name", "wandb.group", "wandb.job_type"}
MAX_NAME = 120  # longer cell names keep a prefix and a hash


@dataclass
class Cell:
    """One run of a grid or curve: the values that name it, a seed, its validated config, and how it runs
    (its folder ``options.out_dir/name``, no progress bar)."""

    name: str
    values: dict[str, Any]
    seed: int
    cfg: Config = field(repr=False)
    options: RunOptions = field(default_factory=RunOptions, repr=False)


@dataclass
class Grid:
    """A parsed grid file; ``overrides`` include extra command-line ones."""

    path: Path
    name: str
    base: Path | None
    overrides: list[str]
    grid: dict[str, list[Any]]  # dotted key -> its values; the last key varies fastest
    seeds: list[int]
    metric: str | None = None
    ceilings: bool = False
    plots: bool = True  # each cell's confusion-matrix picture (a run option, not config)


@dataclass
class Point:
    """A named set of overrides: a capacity curve's point or a data curve's policy."""

    name: str
    overrides: list[str]


@dataclass(frozen=True)
class Sweep:
    """A config value that a kind of curve sweeps for every named set of overrides, drawn as the x axis."""

    key: str  # the curve file's list of values, e.g. "fractions"
    override: str  # the config key each value sets, e.g. "data.train_fraction"
    column: str  # the column of the value in the tables
    cast: Callable[[Any], Any]
    valid: Callable[[Any], bool]
    valid_text: str  # what ``valid`` accepts, for the error message
    xlabel: str


@dataclass(frozen=True)
class CurveKind:
    """A kind of learning curve: its named sets of overrides and what, if anything, it sweeps.

    Without a sweep, the x axis is the measured number of trainable parameters of each set.
    """

    sets: str  # the curve file's key of the named sets, e.g. "points"
    column: str  # the column that names a set, e.g. "point"
    min_sets: int
    sweep: Sweep | None = None
    extras: tuple[str, ...] = ()  # other top-level keys of the kind's curve files, kept in ``Curve.extras``

    @property
    def keys(self) -> list[str]:
        """The columns that identify a summary row: the set, the fraction, the swept value."""
        extra = [self.sweep.column] if self.sweep and self.sweep.column != "fraction" else []
        return [self.column, "fraction", *extra]


KINDS = {
    "capacity": CurveKind("points", "point", min_sets=1),
    "data": CurveKind("policies", "policy", min_sets=2, sweep=Sweep(
        "fractions", "data.train_fraction", "fraction", float,
        lambda f: isinstance(f, int | float) and 0 < f <= 1, "numbers in (0, 1]",
        "fraction of the training set (data.train_fraction), n = training examples")),
    # k labelled examples per class: each run trains on an episode (mm.lowdata.fewshot), the whole training split
    # of its own dataset folder, so data.train_fraction is the runner's (1) and never a method's.
    "shots": CurveKind("methods", "method", min_sets=1, sweep=Sweep(
        "shots", "data.train_fraction", "k", int,
        lambda k: isinstance(k, int) and not isinstance(k, bool) and k >= 1, "integers >= 1",
        "labelled examples per class (k)"), extras=("frozen", "zero_shot")),
}


@dataclass
class Curve:
    """A parsed curve file; ``overrides`` include extra command-line ones."""

    path: Path
    name: str
    kind: str  # a key of KINDS
    base: Path | None
    overrides: list[str]
    points: list[Point]  # the kind's named sets of overrides, in order
    values: list[Any]  # the kind's swept values; empty when it sweeps nothing
    seeds: list[int]
    metric: str = "accuracy"
    extras: dict[str, Any] = field(default_factory=dict)  # the kind's other keys, as the file has them

    @property
    def fractions(self) -> list[float]:
        """A data curve's ``data.train_fraction`` values; empty for other kinds."""
        sweep = KINDS[self.kind].sweep
        return self.values if sweep and sweep.key == "fractions" else []


def read_spec(path: str | Path, what: str, keys: set[str]) -> tuple[Path, dict[str, Any]]:
    """A grid or curve file (``what``) as a mapping with only ``keys`` at the top; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} file is a mapping of {sorted(keys)}")
    for key in raw:
        if key not in keys:
            raise ConfigError(f"{path}: unknown top-level key '{key}'; valid: {sorted(keys)}")
    return path, raw


def check_seeds(seeds: Any, path: Path) -> list[int]:
    """``seeds`` if it is a non-empty list of integers, else a ``ConfigError`` naming ``path``."""
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: 'seeds' must be a non-empty list of integers")
    return seeds


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The dotted keys of ``key=value`` overrides."""
    return [o.split("=", 1)[0].strip() for o in overrides]


def runner_overrides(name: str, seed: int, out_dir: Path, group: str, job_type: str) -> list[str]:
    """What the runner sets for every cell: exactly the keys of ``RESERVED_KEYS``."""
    return [f"seed={seed}", f"name={name}", f"wandb.group={group}", f"wandb.job_type={job_type}"]


def resolve_base(base: str | None, spec_path: Path, what: str) -> Path | None:
    """The base config: absolute, or relative to the ``what`` (grid, curve) file, else to the repo root.

    Raises:
        ConfigError: the file is in neither place.
    """
    if base is None:
        return None
    for candidate in (spec_path.parent / base, ROOT / base):  # an absolute base stays itself
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{spec_path}: base config '{base}' not found (relative to the {what} file or {ROOT})")


def override_value(value: Any) -> str:
    """A value in dotted-override syntax: ``[text,image]``, ``true``, ``null``, ``0.001``."""
    if isinstance(value, list | tuple):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def label_value(value: Any) -> str:
    """A value as it appears in cell names and tables: lists joined with ``+``."""
    if isinstance(value, list | tuple):
        return "+".join(label_value(v) for v in value)
    return override_value(value)


def cell_name(values: dict[str, Any], seed: int) -> str:
    """``key=value`` pairs joined by ``__``, filesystem-safe; a too long prefix becomes a hash."""
    prefix = "__".join(f"{k}={label_value(v)}" for k, v in values.items())
    prefix = re.sub(r"[^A-Za-z0-9._+=-]", "-", prefix)
    if len(prefix) > MAX_NAME:
        prefix = f"{prefix[:MAX_NAME - 10]}__{hashlib.sha1(prefix.encode()).hexdigest()[:8]}"
    return f"{prefix}__seed={seed}"


@dataclass
class Variant:
    """One combination of what a spec varies: the values that name it and the overrides they stand for."""

    values: dict[str, Any]
    overrides: list[str]


def expand_cells(path: Path, base: Path | None, overrides: list[str], variants: Iterable[Variant],
                 seeds: list[int], out_dir: Path, *, group: str, job_type: str, what: str = "cell",
                 ceilings: bool = False, plots: bool = True) -> list[Cell]:
    """The cells of a spec, variant by seed, each config loaded and checked before anything runs.

    Args:
        path: The spec file, named in errors.
        base: The base config file, or None for the defaults.
        overrides: Applied to every cell, before the variant's own.
        variants: What varies, in order; the seeds vary fastest.
        seeds: The seeds of every variant.
        out_dir: The output folder; runs go to ``out_dir/runs/<cell name>``.
        group: The W&B group of every cell.
        job_type: The W&B job type of every cell.
        what: How errors call a cell (``cell``, ``run``).
        ceilings: Whether the spec asks for Bayes ceilings (synthetic data only).
        plots: Whether each cell draws its confusion-matrix picture (``--no-plots``).

    Raises:
        ConfigError: a cell's config is invalid (the message names the file and the cell), or
            two cells share a name.
    """
    cells = []
    for variant in variants:
        for seed in seeds:
            name = cell_name(variant.values, seed)
            cell_overrides = [*overrides, *variant.overrides, *runner_overrides(name, seed, out_dir, group, job_type)]
            try:
                cfg = load_config(base, cell_overrides)
                check_cell(cfg, ceilings)
            except ConfigError as err:
                raise ConfigError(f"{path}: {what} {name}: {err}") from None
            options = RunOptions(out_dir=str(out_dir / "runs"), progress=False, plots=plots)
            cells.append(Cell(name, variant.values, seed, cfg, options))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: {what}s share names (duplicate values?): {names}")
    return cells


def check_cell(cfg: Config, ceilings: bool) -> None:
    """What ``load_config`` leaves to model building: registry names, the synthetic task."""
    from mm.data.synthetic_tasks import TASKS
    from mm.fusion import FUSIONS

    if cfg.fusion.name not in FUSIONS:
        raise ConfigError(f"invalid value for 'fusion.name': {cfg.fusion.name!r}; valid: {sorted(FUSIONS)}")
    if cfg.data.dataset == "synthetic" and cfg.data.task not in TASKS:
        raise ConfigError(f"invalid value for 'data.task': {cfg.data.task!r}; valid: {sorted(TASKS)}")
    if ceilings and cfg.data.dataset != "synthetic":
        raise ConfigError("'ceilings: true' needs data.dataset=synthetic")
