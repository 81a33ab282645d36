"""Ablation grids: expand a grid file into cells, run them resumably, tabulate mean ± std over seeds.

A grid file is YAML; its first line is the command that runs it::

    # python scripts/ablate.py configs/ablations/modalities_fusion.yaml
    base: null                  # config file, relative to the repo root or to this file; null = defaults
    overrides: [data.task=color_animal, train.epochs=2]     # applied to every cell
    grid:                       # dotted key -> values; the last key varies fastest, then the seeds
      data.modalities: [[text], [image], [text, image]]
      fusion.name: [concat, late]
    seeds: [0, 1]
    name: modalities_fusion     # optional, default: the file's stem; the W&B group
    metric: accuracy            # optional, default: the base config's train.metric
    ceilings: true              # optional; synthetic tasks: the Bayes ceiling beside the numbers

A grid key may instead name a bundle of overrides that vary together (a key without a dot, its
value a mapping from each label to its overrides)::

    grid:
      strategy:
        frozen: [encoders.image.trainable=frozen, encoders.audio.trainable=frozen]
        full: [encoders.image.trainable=full, encoders.audio.trainable=full]

Each cell's name is its overrides, ``data.modalities=text+image__fusion.name=late__seed=0``; it
names the run folder ``<out>/runs/<cell>`` and the W&B run. Every cell's W&B run is in group
``name`` with job type ``ablation`` and tagged with ``name`` and ``key=value`` per value of the cell
(``mm.experiments.runner.tag_cells``); the W&B summary run ``<name>-summary`` carries the summary
table, summary.png and the bar charts ``grid/val/<metric>`` and ``grid/test/<metric>``. The
output folder holds ``grid.yaml`` (the resolved grid, itself a grid file), ``state.json`` (per
cell: status, run_dir, error, peak memory), ``results.csv``, ``summary.md``, ``summary.png``, and
``configs/`` and ``logs/`` of subprocess cells. Rerunning the same command resumes (``mm.experiments.runner``); the
``peak_memory_kind`` column says how a cell's peak memory was measured.

A grid spreads over machines in shards: shard ``i`` of ``n`` runs the cells whose 0-based
position modulo ``n`` is ``i`` (``Shard``). Shards run at the same time into the same output
folder: each records its cells in ``shards/<i>-of-<n>/state.json`` and writes its partial
results.csv, summary.md and summary.png there, never the grid's own. ``report_grid`` (``--report``)
then builds the grid's results.csv, summary.md and summary.png from every state file of the
folder and names the cells that have no result yet. A whole-grid run also counts the cells that
shards finished as done, and shards count the whole-grid run's.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mm.config import Config, ConfigError
from mm.experiments import summaries
from mm.experiments.runner import (
    SHARDS,
    STATE,
    is_done,
    read_states,
    run_cells,
    summary_charts,
    summary_config,
    tag_cells,
    write_atomic,
)
from mm.experiments.spec import (
    RESERVED_KEYS,
    ROOT,
    Cell,
    Grid,
    Variant,
    check_seeds,
    expand_cells,
    label_value,
    override_keys,
    override_value,
    read_spec,
    resolve_base,
)

if TYPE_CHECKING:
    from mm.tracking import Tracker

GRID_KEYS = {"base", "overrides", "grid", "seeds", "name", "metric", "ceilings", "plots"}


def load_grid(path: str | Path, extra_overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """Reads and checks a grid file; errors name the file and the offending key.

    Raises:
        ConfigError: unknown top-level key, a missing base file, a malformed grid or seed list.
    """
    path, raw = read_spec(path, "grid", GRID_KEYS)
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{path}: 'grid' must map dotted keys to lists of values")
    overrides = [str(o) for o in raw.get("overrides") or []] + list(extra_overrides)
    set_keys = override_keys(overrides)
    for key in [*grid, *set_keys]:
        if key in RESERVED_KEYS:
            hint = " (use 'seeds:')" if key == "seed" else ""
            raise ConfigError(f"{path}: '{key}' is set by the runner for each cell{hint}")
    for key, values in grid.items():
        if isinstance(values, dict):  # a bundle: label -> the overrides it stands for
            if "." in key or not values or not all(isinstance(v, list) for v in values.values()):
                raise ConfigError(f"{path}: grid bundle '{key}' must be a key without a dot mapping each "
                                  "label to a list of key=value overrides")
            for label, bundle in values.items():
                bad = [o for o in bundle if "=" not in str(o) or override_keys([str(o)])[0] in RESERVED_KEYS]
                if bad:
                    raise ConfigError(f"{path}: grid bundle '{key}.{label}': not a settable override: {bad}")
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid key '{key}' needs a non-empty list of values")
        if key in set_keys:
            raise ConfigError(f"{path}: grid key '{key}' is also an override")
    seeds = check_seeds(raw.get("seeds", [0]), path)
    return Grid(path=path, name=str(raw.get("name") or path.stem), base=resolve_base(raw.get("base"), path, "grid"),
                overrides=overrides, grid=grid, seeds=seeds, metric=raw.get("metric"),
                ceilings=bool(raw.get("ceilings", False)), plots=bool(raw.get("plots", True)))


def expand(grid: Grid, out_dir: Path) -> list[Cell]:
    """The cells of a grid, in order, each config loaded and checked before anything runs.

    Raises:
        ConfigError: a cell's config is invalid; the message names the grid file and the cell.
    """
    def options(key: str, values: Any) -> list[tuple[Any, list[str]]]:
        if isinstance(values, dict):  # a bundle: its label names the cell, its overrides configure it
            return [(label, [str(o) for o in bundle]) for label, bundle in values.items()]
        return [(v, [f"{key}={override_value(v)}"]) for v in values]

    axes = [options(k, v) for k, v in grid.grid.items()]
    variants = [Variant(dict(zip(grid.grid, (label for label, _ in combo), strict=True)),
                        [o for _, bundle in combo for o in bundle])
                for combo in itertools.product(*axes)]
    return tag_cells(expand_cells(grid.path, grid.base, grid.overrides, variants, grid.seeds, out_dir,
                                  group=grid.name, job_type="ablation", ceilings=grid.ceilings, plots=grid.plots),
                     grid.name)


def grid_dict(grid: Grid, metric: str) -> dict[str, Any]:
    """The resolved grid, as written to ``grid.yaml`` (a grid file that reruns the same cells)."""
    return {"name": grid.name, "base": str(grid.base) if grid.base else None, "overrides": grid.overrides,
            "grid": grid.grid, "seeds": grid.seeds, "metric": metric, "ceilings": grid.ceilings}


def sweep_config(grid: Grid, metric: str, mode: str, project: str | None = None,
                 entity: str | None = None) -> dict[str, Any]:
    """The grid as a W&B sweep: ``wandb agent`` passes ``key=value`` args that scripts/train.py reads.

    ``wandb agent`` runs ``command`` from its working folder (the repo root), with ``python``
    from its PATH, the values as ``key=value`` (``${args_no_hyphens}``; a list as
    ``data.modalities=['text', 'image']``, which the config reads as YAML) and ``WANDB_RUN_ID``
    set: ``wandb.init`` then ignores the run id, project and entity it is given, so ``project``
    and ``entity`` (the cells' ``wandb.project`` and ``wandb.entity``) go into the sweep itself.
    """
    bundles = [k for k, v in grid.grid.items() if isinstance(v, dict)]
    if bundles:
        raise ConfigError(f"{grid.path}: a W&B sweep varies single keys; bundles {bundles} cannot be exported")
    parameters = {key: {"values": values} for key, values in grid.grid.items()}
    parameters["seed"] = {"values": grid.seeds}
    base = []
    if grid.base is not None:
        rel = grid.base.relative_to(ROOT) if grid.base.is_relative_to(ROOT) else grid.base
        base = ["--config", str(rel)]
    fixed = [*grid.overrides, f"wandb.group={grid.name}", "wandb.job_type=ablation"]
    where = {key: value for key, value in (("project", project), ("entity", entity)) if value}
    return {"name": grid.name, **where, "program": "scripts/train.py", "method": "grid",
            "metric": {"name": f"best/val/{metric}", "goal": "maximize" if mode == "max" else "minimize"},
            "parameters": parameters,
            "command": ["${env}", "python", "${program}", *base, *fixed, "${args_no_hyphens}"]}


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: the cells whose position modulo ``count`` is ``index``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``I/N`` as on the command line, e.g. ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``.

        Raises:
            ValueError: not two integers with ``0 <= I < N``; the message says why.
        """
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"--shard wants I/N with integers 0 <= I < N (e.g. 0/4), not {text!r}")
        shard = cls(int(index), int(count))
        if shard.count < 1 or shard.index >= shard.count:
            raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N (shards are numbered 0 to N-1)")
        return shard

    def select(self, cells: list[Cell]) -> list[Cell]:
        """This shard's cells, in grid order."""
        return cells[self.index::self.count]

    def folder(self, out_dir: Path) -> Path:
        """Where this shard's state file and partial reports go."""
        return out_dir / SHARDS / f"{self.index}-of-{self.count}"


@dataclass
class GridRun:
    """What ``run_grid`` or ``report_grid`` did: the cells, their state, the result rows and the summary."""

    cells: list[Cell]
    state: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    summary: str
    trained: list[str]

    @property
    def failed(self) -> list[str]:
        return [name for name, entry in self.state.items() if entry["status"] == "failed"]

    @property
    def missing(self) -> list[str]:
        """The cells without a result, in grid order."""
        done = {row["cell"] for row in self.rows}
        return [cell.name for cell in self.cells if cell.name not in done]


def run_grid(grid: Grid, cells: list[Cell], out_dir: Path, *, workers: int = 1, use_subprocess: bool = False,
             shard: Shard | None = None, log: Callable[[str], None] = print) -> GridRun:
    """Runs the cells not yet done, then writes results.csv, summary.md and summary.png.

    Finished cells are skipped; failed, interrupted (still ``running``) and pending cells are run
    from a clean run folder. An exception fails its cell and the grid goes on; a
    KeyboardInterrupt stops the grid and leaves the cell ``running``, to be rerun next time.

    Args:
        grid: The grid.
        cells: All its cells (``expand``).
        out_dir: The output folder.
        workers: Cells trained at once.
        use_subprocess: Train each cell in its own interpreter.
        shard: Run only this shard's cells, keep their state in the shard's folder and write the
            reports of those cells there (no W&B summary run); None (or one shard of one) runs all.
        log: Where progress lines go.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = grid.metric or cells[0].cfg.train.metric
    shard = shard if shard and shard.count > 1 else None
    if shard:
        cells, reports_dir = shard.select(cells), shard.folder(out_dir)
    else:
        reports_dir = out_dir
    header = f"# python scripts/ablate.py {out_dir / 'grid.yaml'} --out {out_dir}\n"
    write_atomic(out_dir / "grid.yaml", header + yaml.safe_dump(grid_dict(grid, metric), sort_keys=False))

    def describe(cell: Cell, run_dir: Path, seconds: float) -> str:
        res = json.loads((run_dir / "results.json").read_text())
        return (f"val/{metric}={res['val'].get(metric, math.nan):.4f} "
                f"test/{metric}={res['test'].get(metric, math.nan):.4f} ({seconds:.1f}s)")

    state, trained = run_cells(cells, out_dir, label="ablate", describe=describe, workers=workers,
                               use_subprocess=use_subprocess, state_file=reports_dir / STATE, log=log)
    rows, summary = write_reports(grid, cells, state.cells, reports_dir, metric, summary_run=shard is None)
    return GridRun(cells, state.cells, rows, summary, trained)


def grid_state(cells: list[Cell], out_dir: Path) -> dict[str, dict[str, Any]]:
    """Each cell's entry as recorded by any run or shard in ``out_dir``.

    A ``done`` entry whose run no longer matches the cell (results.json gone, or trained with
    another config) has status ``stale``; a cell nobody recorded is ``pending``.
    """
    recorded = read_states(out_dir)
    state = {}
    for cell in cells:
        entry = dict(recorded.get(cell.name, {"status": "pending", "run_dir": None, "error": None}))
        if entry["status"] == "done" and not is_done(entry, cell):
            entry["status"] = "stale"
        state[cell.name] = entry
    return state


def report_grid(grid: Grid, cells: list[Cell], out_dir: Path) -> GridRun:
    """Writes results.csv, summary.md and summary.png of everything every shard recorded; trains nothing.

    The rows are the cells done with the config they have now; ``GridRun.missing`` names the others.
    """
    metric = grid.metric or cells[0].cfg.train.metric
    state = grid_state(cells, out_dir)
    rows, summary = write_reports(grid, cells, state, out_dir, metric)
    return GridRun(cells, state, rows, summary, trained=[])


def result_rows(cells: list[Cell], state: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished cell, in cell order: values, seed, every val/test metric, cost."""
    rows = []
    for cell in cells:
        entry = state[cell.name]
        run_dir = Path(entry["run_dir"] or "")
        if entry["status"] != "done" or not (run_dir / "results.json").is_file():
            continue
        res = json.loads((run_dir / "results.json").read_text())
        row: dict[str, Any] = {"cell": cell.name, **{k: label_value(v) for k, v in cell.values.items()},
                               "seed": cell.seed}
        row.update({f"{split}/{k}": v for split in ("val", "test") for k, v in res[split].items()})
        row.update({"best_step": res["best_step"], "steps": res["steps"], "params/total": res["params"]["params/total"],
                    "params/trainable": res["params"]["params/trainable"], "wall_time_s": res["wall_time_s"],
                    "throughput_samples_per_s": _throughput(cell.cfg, run_dir, res),
                    "peak_memory_mb": round(entry.get("peak_memory_mb", math.nan), 1),
                    "peak_memory_kind": entry.get("peak_memory_kind")})
        rows.append(row)
    return rows


def _throughput(cfg: Config, run_dir: Path, res: dict[str, Any]) -> float:
    """Train samples/s: the mean of the loop's ``train/samples_per_s``, else steps x batch / wall time."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    rates = [row["train/samples_per_s"] for row in map(json.loads, lines) if "train/samples_per_s" in row]
    if rates:
        return round(statistics.fmean(rates), 2)
    samples = res["steps"] * cfg.train.batch_size * cfg.optim.grad_accum_steps
    return round(samples / max(res["wall_time_s"], 1e-9), 2)


def write_reports(grid: Grid, cells: list[Cell], state: dict[str, dict[str, Any]], out_dir: Path,
                  metric: str, summary_run: bool = True) -> tuple[list[dict[str, Any]], str]:
    """Writes results.csv, summary.md and summary.png, and logs them to a W&B summary run if ``summary_run``."""
    rows = result_rows(cells, state)
    summaries.write_csv(out_dir / "results.csv", rows)
    if not rows:
        return rows, ""
    cfg = cells[0].cfg
    table = summaries.grid_summary(grid, cells, rows, metric)
    summary = summaries.grid_markdown(grid, table, metric, cfg.train.metric_mode)
    write_atomic(out_dir / "summary.md", summary)
    plot = summaries.grid_plot(grid, table, metric, out_dir / "summary.png")
    if summary_run:
        summary_cfg = summary_config(cells[0], grid.name)
        summaries.log_summary_run(out_dir, grid_dict(grid, metric), summary_cfg, group=grid.name,
                                job_type="ablation-summary",
                                tables={"summary": table}, images={"summary_plot": plot})
        with summary_charts(out_dir, summary_cfg, grid.name, "ablation-summary") as tracker:
            log_charts(tracker, grid, table, metric)
    return rows, summary


def log_charts(tracker: Tracker, grid: Grid, table: list[dict[str, Any]], metric: str) -> None:
    """The grid summary as native W&B bar charts, ``grid/val/<metric>`` and ``grid/test/<metric>``.

    One bar per cell-without-seed (its values joined by `` / ``): the mean over seeds, with the
    sample std and the number of seeds in the chart's table.
    """
    for split in ("val", "test"):
        col = f"{split}/{metric}"
        rows = [[" / ".join(str(g[k]) for k in grid.grid), g[col], g[col + " std"], g["n"]] for g in table if g["n"]]
        tracker.log_bar(f"grid/{col}", ["cell", metric, "std", "n"], rows, "cell", metric,
                        title=f"{grid.name}: {split} {metric}, mean over seeds")
