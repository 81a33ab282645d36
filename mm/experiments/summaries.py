"""Tables and plots of grids and learning curves, and the W&B summary run that carries them.

Grids: ``results.csv`` (one row per cell), ``summary.md`` (the metric's mean over seeds with its 95 %
t-interval, the best test mean in bold only when a paired test says it beats the runner-up, Bayes
ceilings beside) and ``summary.png`` (bars with the intervals). Curves: ``results.csv`` (one row
per run), ``summary.csv`` and ``summary.md`` (mean ± std of each error over seeds) and
``curve.png``. Every std is the sample one (n - 1) over the seeds that finished; 0 for one seed.
Intervals and tests are ``mm.analysis.stats``'s.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

from mm.analysis import stats
from mm.config import Config
from mm.experiments.spec import KINDS, Cell, Curve, Grid, label_value

ALPHA = 0.05  # a best cell is marked when its paired test against the runner-up has p < ALPHA
ERRORS = ("train_error", "val_error", "test_error")  # the columns a curve summarizes


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV; the columns are every row's keys, in order of appearance."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean (NaN when empty) and the sample standard deviation (0 for fewer than two values)."""
    mean = statistics.fmean(values) if values else math.nan
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- Grids ----


def grid_summary(grid: Grid, cells: list[Cell], rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per cell-without-seed: the grid's values, n seeds, and for val/test ``metric`` the mean, the
    sample std (``<col> std``) and the 95 % t-interval over seeds (``<col> low``, ``<col> high``,
    NaN for one seed); then ``test/<metric> p vs best``: the paired bootstrap p-value of the cell
    against the cell with the best test mean, over the test examples of the seeds both have (NaN
    for the best itself, and where the runs saved no test predictions or the metric has no
    per-example form).

    With ``ceilings``, also ``ceiling``: ``mm.data.synthetic.ceiling`` of the cell's task and
    modalities, in the task's ``CEILING_METRIC`` (accuracy for classification).

    Raises:
        KeyError: ``metric`` is not among the results' metrics.
    """
    from mm.data.synthetic import ceiling

    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for cell in cells:
        key = tuple(label_value(v) for v in cell.values.values())
        group = groups.setdefault(key, {**dict(zip(grid.grid, key, strict=True)), "_rows": []})
        if grid.ceilings:
            group["ceiling"] = ceiling(cell.cfg.data.task, cell.cfg.data.modalities)
    by_cell = {row["cell"]: row for row in rows}
    runs: dict[tuple[str, ...], dict[int, Path]] = {key: {} for key in groups}  # seed -> run folder
    for cell in cells:
        if cell.name in by_cell:
            key = tuple(label_value(v) for v in cell.values.values())
            groups[key]["_rows"].append(by_cell[cell.name])
            runs[key][cell.seed] = Path(cell.options.out_dir) / cell.cfg.name
    table = []
    for group in groups.values():
        found = group.pop("_rows")
        group["n"] = len(found)
        for col in (f"val/{metric}", f"test/{metric}"):
            if found and col not in found[0]:
                raise KeyError(f"metric {col!r} is not in the results; have {sorted(found[0])}")
            values = [row[col] for row in found]
            group[col], group[col + " std"] = mean_std(values)
            interval = stats.seed_interval(values)
            group[col + " low"], group[col + " high"] = interval.low, interval.high
        table.append(group)
    # Each cell against the best test mean (grid_markdown marks the best when the runner-up's p < ALPHA).
    ranked = rank(table, f"test/{metric}", cells[0].cfg.train.metric_mode if cells else "max")
    best = next((key for key, group in groups.items() if ranked and group is ranked[0]), None)
    for key, group in groups.items():
        group[f"test/{metric} p vs best"] = (paired_p(runs[best], runs[key], metric)
                                             if group["n"] and best is not None and key != best else math.nan)
    return table


def rank(table: list[dict[str, Any]], col: str, mode: str) -> list[dict[str, Any]]:
    """The cells with results, best ``col`` first."""
    return sorted((g for g in table if g["n"]), key=lambda g: g[col], reverse=mode == "max")


def paired_p(a: dict[int, Path], b: dict[int, Path], metric: str) -> float:
    """The paired bootstrap p-value of two cells' runs (seed -> run folder) over the test examples of
    their common seeds (``mm.analysis.stats.compare``); NaN when it cannot be computed (no common seed, test
    predictions missing, a metric without a per-example form, different test examples)."""
    seeds = sorted(set(a) & set(b))
    if not seeds or not all((run / stats.PREDICTIONS).is_file() for s in seeds for run in (a[s], b[s])):
        return math.nan
    try:
        return stats.compare([stats.Predictions.load(a[s] / stats.PREDICTIONS) for s in seeds],
                             [stats.Predictions.load(b[s] / stats.PREDICTIONS) for s in seeds], metric).paired.p
    except (KeyError, ValueError):
        return math.nan


def grid_markdown(grid: Grid, table: list[dict[str, Any]], metric: str, mode: str) -> str:
    """The grid summary as a Markdown table: ``mean [low, high]`` per metric and each cell's p-value
    against the best; the best test mean in bold only when its paired test against the runner-up
    has p < ``ALPHA``, which a footnote says (or that there is no significant difference)."""
    cols, test = [f"val/{metric}", f"test/{metric}"], f"test/{metric}"
    ranked = rank(table, test, mode)
    runner_p = ranked[1][test + " p vs best"] if len(ranked) > 1 else math.nan
    marked = ranked[0] if runner_p < ALPHA else None
    header = [*grid.grid, "n", *cols, "p vs best"] + (["ceiling"] if grid.ceilings else [])
    lines = [f"## {grid.name}: {metric}, mean [95 % interval] over seeds {grid.seeds}\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in table:
        cells = [str(g[k]) for k in grid.grid] + [str(g["n"])]
        for c in cols:
            text = stats.Interval(g[c], g[c + " low"], g[c + " high"]).format()
            cells.append(f"**{text}**" if c == test and g is marked else text)
        p = g[test + " p vs best"]
        cells.append("best" if ranked and g is ranked[0] else "" if math.isnan(p) else stats.format_p(p))
        if grid.ceilings:
            cells.append(f"{g['ceiling']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    note = ("\nmean [95 % Student-t interval] over the seeds that finished (no interval for one seed). "
            "p vs best: paired bootstrap p-value of the cell against the best test mean over the test examples "
            "of their common seeds (scripts/compare.py).")
    if len(ranked) > 1:
        name = ", ".join(f"{k}={ranked[0][k]}" for k in grid.grid)
        runner = ", ".join(f"{k}={ranked[1][k]}" for k in grid.grid)
        if marked is not None:
            note += (f" **Bold**: the best test mean ({name}) is significantly better than the runner-up ({runner}):"
                     f" p {stats.format_p(runner_p, relation=True)} < {ALPHA}.")
        elif math.isnan(runner_p):
            note += (f" The best test mean ({name}) is not marked: no paired test (test predictions missing, or a"
                     " metric without a per-example form).")
        else:
            note += (f" No significant difference between the best test mean ({name}) and the runner-up ({runner}):"
                     f" p = {runner_p:.3f} >= {ALPHA}; nothing in bold.")
    return "\n".join(lines) + "\n" + note + (" ceiling: the Bayes-optimal score." if grid.ceilings else "") + "\n"


def grid_plot(grid: Grid, table: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """Bars of the val and test mean with their 95 % intervals over seeds per cell; ceilings as black markers."""
    plt = _pyplot()
    labels = ["\n".join(str(g[k]) for k in grid.grid) for g in table]
    xs = list(range(len(table)))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(table)), 4.5))
    for offset, split in ((-0.2, "val"), (0.2, "test")):
        col = f"{split}/{metric}"
        half = [0.0 if math.isnan(g[col + " low"]) else g[col] - g[col + " low"] for g in table]
        ax.bar([x + offset for x in xs], [g[col] for g in table], width=0.4, yerr=half, capsize=3, label=col)
    if grid.ceilings:
        ax.scatter(xs, [g["ceiling"] for g in table], marker="_", s=900, color="black", zorder=3, label="ceiling")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_xlabel(" / ".join(grid.grid))
    ax.set_ylabel(metric)
    ax.set_title(f"{grid.name} (mean and 95 % interval over seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=0.3)  # beside, not on, the bars
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- Learning curves ----


def curve_summary(curve: Curve, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per named set and swept value, in run order: n seeds, trainable params, mean and std of each error."""
    keys = KINDS[curve.kind].keys
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    table = []
    for key, found in groups.items():
        entry: dict[str, Any] = {**dict(zip(keys, key, strict=True)), "n": len(found),
                                 "n_train": found[0]["n_train"], "params_trainable": found[0]["params_trainable"]}
        for col in ERRORS:
            entry[col], entry[col + "_std"] = mean_std([r[col] for r in found])
        entry["wall_time_s"] = statistics.fmean(r["wall_time_s"] for r in found)
        table.append(entry)
    return table


def curve_markdown(curve: Curve, table: list[dict[str, Any]]) -> str:
    """The curve summary as a Markdown table, errors as ``mean ± std``."""
    keys = KINDS[curve.kind].keys
    header = [*keys, "n_train", "trainable params", "n", "train error", "val error", "test error", "wall s"]
    lines = [f"## {curve.name}: error = 1 - {curve.metric}, mean ± std over seeds {curve.seeds}\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in table:
        named = " | ".join(f"{g[k]:g}" if isinstance(g[k], float) else str(g[k]) for k in keys)
        errors = " | ".join(f"{g[c]:.4f} ± {g[c + '_std']:.4f}" for c in ERRORS)
        lines.append(f"| {named} | {g['n_train']} | {g['params_trainable']:,} | {g['n']} "
                     f"| {errors} | {g['wall_time_s']:.1f} |")
    return "\n".join(lines) + "\n\nstd: sample standard deviation (n - 1) over the seeds that finished.\n"


def curve_plot(curve: Curve, table: list[dict[str, Any]], path: Path) -> Path:
    """Error against the kind's x axis, mean with a std band, train and val.

    Without a sweep (capacity): against trainable parameters, the points named. With one (data):
    val error against the swept value, one line per set, its train error dashed.
    """
    kind, plt = KINDS[curve.kind], _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))

    def line(xs: list[float], gs: list[dict], col: str, **style: Any) -> None:
        mean, std = [g[col] for g in gs], [g[col + "_std"] for g in gs]
        (drawn,) = ax.plot(xs, mean, **{"marker": "o", **style})
        ax.fill_between(xs, [max(m - s, 0.0) for m, s in zip(mean, std, strict=True)],  # errors stay >= 0
                        [m + s for m, s in zip(mean, std, strict=True)], color=drawn.get_color(), alpha=0.15)

    if kind.sweep is None:
        gs = sorted(table, key=lambda g: g["params_trainable"])
        xs = [g["params_trainable"] for g in gs]
        line(xs, gs, "train_error", label="train error")
        line(xs, gs, "val_error", label="val error")
        for g in gs:
            ax.annotate(g[kind.column], (g["params_trainable"], g["val_error"]), textcoords="offset points",
                        xytext=(4, 6), fontsize=8, rotation=20)
        ax.set_xlabel("trainable parameters (measured)")
    else:
        x = kind.sweep.column
        for k, name in enumerate(dict.fromkeys(g[kind.column] for g in table)):
            gs = sorted((g for g in table if g[kind.column] == name), key=lambda g: g[x])
            xs = [g[x] for g in gs]
            line(xs, gs, "val_error", color=f"C{k}", label=f"{name} val")
            line(xs, gs, "train_error", color=f"C{k}", linestyle="--", marker="x", label=f"{name} train")
        ax.set_xlabel(kind.sweep.xlabel)
    ax.set_xscale("log")
    if kind.sweep is not None:
        ticks = {g[kind.sweep.column]: g["n_train"] for g in table}
        ax.set_xticks(list(ticks), [f"{v:g}\nn={n}" for v, n in ticks.items()], minor=False)
        ax.minorticks_off()
    ax.margins(x=0.08, y=0.12)  # room for the point names
    ax.set_ylabel(f"error (1 - {curve.metric})")
    ax.set_title(f"{curve.name} (mean ± std over seeds {curve.seeds})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- The W&B summary run ----


def log_summary_run(out_dir: Path, spec: dict[str, Any], cfg: Config, *, group: str, job_type: str,
                    tables: dict[str, list[dict[str, Any]]], images: dict[str, Path]) -> None:
    """Logs tables and images to ``<group>-summary``, a run in the cells' W&B group, kept in ``out_dir/summary``.

    Args:
        out_dir: The output folder of the grid or curve.
        spec: The resolved spec, sent as the run's config.
        cfg: A cell's config: its W&B mode, project, entity and tags are the summary run's.
        group: The W&B group (the spec's name).
        job_type: The W&B job type.
        tables: Name -> rows with the same keys.
        images: Name -> PNG file.
    """
    from mm.tracking import Tracker

    with Tracker(out_dir / "summary", spec, mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                 group=group, name=f"{group}-summary", tags=cfg.wandb.tags, job_type=job_type) as tracker:
        for name, rows in tables.items():
            columns = list(rows[0])
            tracker.log_table(name, columns, [[row[c] for c in columns] for row in rows])
        for name, image in images.items():
            tracker.log_image(name, image)
