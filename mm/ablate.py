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

Each cell's name is its overrides, ``data.modalities=text+image__fusion.name=late__seed=0``; it
names the run folder ``<out>/runs/<cell>`` and the W&B run. The output folder holds ``grid.yaml``
(the resolved grid, itself a grid file), ``state.json`` (per cell: status, run_dir, error),
``results.csv``, ``summary.md``, ``summary.png``, and ``configs/`` and ``logs/`` of subprocess cells.

Rerunning the same command resumes: a cell is skipped when it is ``done``, its ``results.json``
exists and its ``config.yaml`` equals the cell's config now; any other cell (failed, interrupted,
pending, or changed by an edit of the grid) reruns from a deleted, clean run folder.

Peak memory is ``torch.cuda.max_memory_allocated`` of the cell when it trains in-process on CUDA;
otherwise the peak resident set size (``getrusage``'s ``ru_maxrss``): of the cell's own process
with ``--subprocess``, or of the runner process so far (earlier cells included) in-process. The
``peak_memory_kind`` column says which.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mm.config import Config, ConfigError, load_config, to_yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "scripts" / "train.py"
GRID_KEYS = {"base", "overrides", "grid", "seeds", "name", "metric", "ceilings"}
RESERVED_KEYS = {"seed", "name", "train.out_dir", "train.progress", "wandb.group", "wandb.job_type"}
MAX_NAME = 120  # longer cell names keep a prefix and a hash
TIMING_COLUMNS = ("wall_time_s", "throughput_samples_per_s", "peak_memory_mb", "peak_memory_kind")


@dataclass
class Grid:
    """A parsed grid file; ``overrides`` include extra command-line ones."""

    path: Path
    name: str
    base: Path | None
    overrides: list[str]
    grid: dict[str, list[Any]]
    seeds: list[int]
    metric: str | None = None
    ceilings: bool = False


@dataclass
class Cell:
    """One run of a grid: the grid's values, a seed, and its validated config."""

    name: str
    values: dict[str, Any]
    seed: int
    cfg: Config = field(repr=False)


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


def runner_overrides(name: str, seed: int, out_dir: Path, group: str, job_type: str) -> list[str]:
    """What the runners set for every run: exactly the keys of ``RESERVED_KEYS``."""
    return [f"seed={seed}", f"name={name}", f"train.out_dir={out_dir / 'runs'}", "train.progress=false",
            f"wandb.group={group}", f"wandb.job_type={job_type}"]


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
    set_keys = [o.split("=", 1)[0].strip() for o in overrides]
    for key in [*grid, *set_keys]:
        if key in RESERVED_KEYS:
            hint = " (use 'seeds:')" if key == "seed" else ""
            raise ConfigError(f"{path}: '{key}' is set by the runner for each cell{hint}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid key '{key}' needs a non-empty list of values")
        if key in set_keys:
            raise ConfigError(f"{path}: grid key '{key}' is also an override")
    seeds = check_seeds(raw.get("seeds", [0]), path)
    return Grid(path=path, name=str(raw.get("name") or path.stem), base=_resolve_base(raw.get("base"), path),
                overrides=overrides, grid=grid, seeds=seeds, metric=raw.get("metric"),
                ceilings=bool(raw.get("ceilings", False)))


def _resolve_base(base: str | None, grid_path: Path) -> Path | None:
    """The base config: absolute, or relative to the grid file, else to the repo root."""
    if base is None:
        return None
    for candidate in (grid_path.parent / base, ROOT / base):  # an absolute base stays itself
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{grid_path}: base config '{base}' not found (relative to the grid file or {ROOT})")


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


def expand(grid: Grid, out_dir: Path) -> list[Cell]:
    """The cells of a grid, in order, each config loaded and checked before anything runs.

    Raises:
        ConfigError: a cell's config is invalid; the message names the grid file and the cell.
    """
    cells = []
    for combo in itertools.product(*grid.grid.values()):
        values = dict(zip(grid.grid, combo, strict=True))
        for seed in grid.seeds:
            name = cell_name(values, seed)
            overrides = [*grid.overrides, *(f"{k}={override_value(v)}" for k, v in values.items()),
                         *runner_overrides(name, seed, out_dir, grid.name, "ablation")]
            try:
                cfg = load_config(grid.base, overrides)
                _check_cell(cfg, grid)
            except ConfigError as err:
                raise ConfigError(f"{grid.path}: cell {name}: {err}") from None
            cells.append(Cell(name, values, seed, cfg))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError(f"{grid.path}: cells share names (duplicate grid values?): {names}")
    return cells


def _check_cell(cfg: Config, grid: Grid) -> None:
    """What ``load_config`` leaves to model building: registry names, the synthetic task."""
    from mm.data.synthetic_tasks import TASKS
    from mm.fusion import FUSIONS

    if cfg.fusion.name not in FUSIONS:
        raise ConfigError(f"invalid value for 'fusion.name': {cfg.fusion.name!r}; valid: {sorted(FUSIONS)}")
    if cfg.data.dataset == "synthetic" and cfg.data.task not in TASKS:
        raise ConfigError(f"invalid value for 'data.task': {cfg.data.task!r}; valid: {sorted(TASKS)}")
    if grid.ceilings and cfg.data.dataset != "synthetic":
        raise ConfigError("'ceilings: true' needs data.dataset=synthetic")


def grid_dict(grid: Grid, metric: str) -> dict[str, Any]:
    """The resolved grid, as written to ``grid.yaml`` (a grid file that reruns the same cells)."""
    return {"name": grid.name, "base": str(grid.base) if grid.base else None, "overrides": grid.overrides,
            "grid": grid.grid, "seeds": grid.seeds, "metric": metric, "ceilings": grid.ceilings}


def sweep_config(grid: Grid, metric: str, mode: str) -> dict[str, Any]:
    """The grid as a W&B sweep: ``wandb agent`` passes ``key=value`` args that scripts/train.py reads."""
    parameters = {key: {"values": values} for key, values in grid.grid.items()}
    parameters["seed"] = {"values": grid.seeds}
    base = []
    if grid.base is not None:
        rel = grid.base.relative_to(ROOT) if grid.base.is_relative_to(ROOT) else grid.base
        base = ["--config", str(rel)]
    fixed = [*grid.overrides, f"wandb.group={grid.name}", "wandb.job_type=ablation"]
    return {"name": grid.name, "program": "scripts/train.py", "method": "grid",
            "metric": {"name": f"best/val/{metric}", "goal": "maximize" if mode == "max" else "minimize"},
            "parameters": parameters,
            "command": ["${env}", "python", "${program}", *base, *fixed, "${args_no_hyphens}"]}


def write_atomic(path: Path, text: str) -> None:
    """Writes ``path`` via a temporary file and ``os.replace``: never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class State:
    """``state.json``: each cell's status (pending, running, done, failed), run_dir and error."""

    def __init__(self, path: Path, cells: list[Cell]) -> None:
        self.path = path
        old = json.loads(path.read_text())["cells"] if path.exists() else {}
        self.cells = {c.name: old.get(c.name, {"status": "pending", "run_dir": None, "error": None})
                      for c in cells}
        self._lock = threading.Lock()
        self.save()

    def update(self, name: str, **values: Any) -> None:
        with self._lock:
            self.cells[name].update(values)
            self.save()

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"cells": self.cells}, indent=2) + "\n")

    def is_done(self, cell: Cell) -> bool:
        """Done, with its results.json, and trained with the config the cell has now."""
        entry = self.cells[cell.name]
        run_dir = Path(entry["run_dir"] or "")
        if entry["status"] != "done" or not (run_dir / "results.json").is_file():
            return False
        try:
            return load_config(run_dir / "config.yaml") == cell.cfg
        except ConfigError:
            return False


@dataclass
class GridRun:
    """What ``run_grid`` did: the cells, their final state, the result rows and the summary."""

    cells: list[Cell]
    state: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    summary: str
    trained: list[str]

    @property
    def failed(self) -> list[str]:
        return [name for name, entry in self.state.items() if entry["status"] == "failed"]


def run_grid(grid: Grid, cells: list[Cell], out_dir: Path, *, workers: int = 1, use_subprocess: bool = False,
             log: Callable[[str], None] = print) -> GridRun:
    """Runs the cells not yet done, then writes results.csv, summary.md and summary.png.

    Finished cells are skipped; failed, interrupted (still ``running``) and pending cells are run
    from a clean run folder. In-process, an exception fails its cell and the grid goes on; a
    KeyboardInterrupt stops the grid and leaves the cell ``running``, to be rerun next time.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    metric = grid.metric or cells[0].cfg.train.metric
    header = f"# python scripts/ablate.py {out_dir / 'grid.yaml'} --out {out_dir}\n"
    write_atomic(out_dir / "grid.yaml", header + yaml.safe_dump(grid_dict(grid, metric), sort_keys=False))
    state = State(out_dir / "state.json", cells)
    t0, total, trained = time.perf_counter(), len(cells), []
    lock, stopping = threading.Lock(), threading.Event()

    def say(i: int, text: str) -> None:
        with lock:
            log(f"[ablate {i}/{total} {time.perf_counter() - t0:7.1f}s] {text}")

    todo = []
    for i, cell in enumerate(cells, 1):
        if state.is_done(cell):
            say(i, f"skip  {cell.name} (done)")
            continue
        if state.cells[cell.name]["status"] == "running":
            say(i, f"rerun {cell.name} (interrupted)")
        todo.append((i, cell))

    def run_one(i: int, cell: Cell) -> None:
        if stopping.is_set():
            return
        run_dir = out_dir / "runs" / cell.name
        shutil.rmtree(run_dir, ignore_errors=True)  # a partial run would make train() pick name-2
        state.update(cell.name, status="running", run_dir=str(run_dir), error=None)
        say(i, f"start {cell.name}")
        started = time.perf_counter()
        try:
            memory = _run_subprocess(cell, out_dir) if use_subprocess else _run_in_process(cell)
        except Exception as err:
            if stopping.is_set():
                return  # terminated by an interrupt: stays "running", rerun next time
            error = traceback.format_exception_only(err)[-1].strip()
            state.update(cell.name, status="failed", error=error)
            say(i, f"FAILED {cell.name}: {error}")
            return
        state.update(cell.name, status="done", **memory)
        trained.append(cell.name)
        res = json.loads((run_dir / "results.json").read_text())
        say(i, f"done  {cell.name}  val/{metric}={res['val'].get(metric, float('nan')):.4f} "
               f"test/{metric}={res['test'].get(metric, float('nan')):.4f} ({time.perf_counter() - started:.1f}s)")

    if use_subprocess or workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_one, i, cell) for i, cell in todo]
            try:
                for future in as_completed(futures):
                    future.result()
            except KeyboardInterrupt:
                stopping.set()
                for proc in list(_LIVE):
                    proc.terminate()
                pool.shutdown(cancel_futures=True)
                raise
    else:
        for i, cell in todo:
            run_one(i, cell)

    rows, summary = write_reports(grid, cells, state.cells, out_dir, metric)
    return GridRun(cells, state.cells, rows, summary, trained)


def _run_in_process(cell: Cell) -> dict[str, Any]:
    """Trains one cell with ``mm.train.train``; returns its peak memory."""
    import resource

    import torch

    import mm.train as mm_train

    cuda = mm_train.pick_device(cell.cfg.train.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    mm_train.train(copy.deepcopy(cell.cfg))
    if cuda:
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_memory_kind": "cuda_max_allocated"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_mb": rss_kb / 1024, "peak_memory_kind": "runner_peak_rss"}


_LIVE: set[subprocess.Popen] = set()


def _run_subprocess(cell: Cell, out_dir: Path) -> dict[str, Any]:
    """Trains one cell as ``python scripts/train.py --config <cell yaml>``; returns its peak RSS.

    Raises:
        RuntimeError: the process failed; the message is the last line of its output.
    """
    config = out_dir / "configs" / f"{cell.name}.yaml"
    log_file = out_dir / "logs" / f"{cell.name}.log"
    config.parent.mkdir(exist_ok=True)
    log_file.parent.mkdir(exist_ok=True)
    write_atomic(config, to_yaml(cell.cfg))
    with log_file.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(TRAIN_SCRIPT), "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT)
        _LIVE.add(proc)
        try:
            # wait4 gives this child's own resource usage, unlike RUSAGE_CHILDREN.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            _LIVE.discard(proc)
    if proc.returncode != 0:
        lines = [line for line in log_file.read_text().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit code {proc.returncode}")
    return {"peak_memory_mb": usage.ru_maxrss / 1024, "peak_memory_kind": "process_peak_rss"}


# ---- Reports: results.csv, summary.md, summary.png and the W&B summary run ----


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
                    "peak_memory_mb": round(entry.get("peak_memory_mb", float("nan")), 1),
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


def summary_table(grid: Grid, cells: list[Cell], rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per cell-without-seed: the grid's values, n seeds, mean and sample std of val/test ``metric``.

    With ``ceilings``, also ``ceiling``: ``mm.data.synthetic.ceiling`` of the cell's task and
    modalities, in the task's ``CEILING_METRIC`` (accuracy for classification).
    """
    from mm.data.synthetic import ceiling

    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for cell in cells:
        key = tuple(label_value(v) for v in cell.values.values())
        group = groups.setdefault(key, {**dict(zip(grid.grid, key, strict=True)), "_rows": []})
        if grid.ceilings:
            group["ceiling"] = ceiling(cell.cfg.data.task, cell.cfg.data.modalities)
    by_cell = {row["cell"]: row for row in rows}
    for cell in cells:
        if cell.name in by_cell:
            groups[tuple(label_value(v) for v in cell.values.values())]["_rows"].append(by_cell[cell.name])
    table = []
    for group in groups.values():
        found = group.pop("_rows")
        group["n"] = len(found)
        for col in (f"val/{metric}", f"test/{metric}"):
            if found and col not in found[0]:
                raise KeyError(f"metric {col!r} is not in the results; have {sorted(found[0])}")
            values = [row[col] for row in found]
            group[col] = statistics.fmean(values) if values else float("nan")
            group[col + " std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(group)
    return table


def summary_markdown(grid: Grid, table: list[dict[str, Any]], metric: str, mode: str) -> str:
    """The summary as a Markdown table: ``mean ± std`` per metric, the best mean in bold."""
    cols = [f"val/{metric}", f"test/{metric}"]
    pick = max if mode == "max" else min
    best = {c: pick((g[c] for g in table if g["n"]), default=None) for c in cols}
    header = [*grid.grid, "n", *cols] + (["ceiling"] if grid.ceilings else [])
    lines = [f"## {grid.name}: {metric}, mean ± std over seeds {grid.seeds}\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in table:
        cells = [str(g[k]) for k in grid.grid] + [str(g["n"])]
        for c in cols:
            text = f"{g[c]:.4f}" + (f" ± {g[c + ' std']:.4f}" if g["n"] > 1 else "")
            cells.append(f"**{text}**" if g["n"] and g[c] == best[c] else text)
        if grid.ceilings:
            cells.append(f"{g['ceiling']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    note = "\nmean ± sample standard deviation (n - 1) over the seeds that finished; best per column in bold."
    return "\n".join(lines) + "\n" + note + (" ceiling: the Bayes-optimal score." if grid.ceilings else "") + "\n"


def summary_plot(grid: Grid, table: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Bars of the val and test mean with std error bars per cell; ceilings as black markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["\n".join(str(g[k]) for k in grid.grid) for g in table]
    xs = list(range(len(table)))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(table)), 4.5))
    for offset, split in ((-0.2, "val"), (0.2, "test")):
        col = f"{split}/{metric}"
        ax.bar([x + offset for x in xs], [g[col] for g in table], width=0.4, yerr=[g[col + " std"] for g in table],
               capsize=3, label=col)
    if grid.ceilings:
        ax.scatter(xs, [g["ceiling"] for g in table], marker="_", s=900, color="black", zorder=3, label="ceiling")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_xlabel(" / ".join(grid.grid))
    ax.set_ylabel(metric)
    ax.set_title(f"{grid.name} (mean ± std over seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=0.3)  # beside, not on, the bars
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_reports(grid: Grid, cells: list[Cell], state: dict[str, dict[str, Any]], out_dir: Path,
                  metric: str) -> tuple[list[dict[str, Any]], str]:
    """Writes results.csv, summary.md and summary.png, and logs them to a W&B summary run."""
    from mm.tracking import Tracker

    rows = result_rows(cells, state)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    if not rows:
        return rows, ""
    cfg = cells[0].cfg
    table = summary_table(grid, cells, rows, metric)
    summary = summary_markdown(grid, table, metric, cfg.train.metric_mode)
    write_atomic(out_dir / "summary.md", summary)
    plot = summary_plot(grid, table, metric, out_dir / "summary.png")

    # The summary run sits in the grid's W&B group, beside the cells' runs.
    keys = list(table[0])
    with Tracker(out_dir / "summary", grid_dict(grid, metric), mode=cfg.wandb.mode, project=cfg.wandb.project,
                 entity=cfg.wandb.entity, group=grid.name, name=f"{grid.name}-summary", tags=cfg.wandb.tags,
                 job_type="ablation-summary") as tracker:
        tracker.log_table("summary", keys, [[g[k] for k in keys] for g in table])
        tracker.log_image("summary_plot", plot)
    return rows, summary
