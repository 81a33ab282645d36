#!/usr/bin/env python
"""Draw what the W&B workspace of a grid (and a learning curve) shows, from their offline run files.

    python scripts/plot_wandb_workspace.py GRID_OUT [--curve CURVE_OUT] [--out docs/wandb_workspace.png]

No W&B server or viewer with custom charts runs here (``wandb server start`` needs Docker and the
``wandb/local`` image), so this draws with matplotlib the panels of the workspace layout proposed
for the README, from the offline files that ``wandb sync`` would upload (decoded by wandb-core, as
the tests read them: ``mm.wandb_offline``):

- the grid's runs (job type ``ablation``, its W&B group): ``val/<metric>`` and ``train/loss``
  against ``global_step``, grouped by the grid's first key (mean line, min-max band);
- the custom charts: ``grid/val/<metric>`` and ``grid/test/<metric>`` (bars, ``wandb/bar/v0``) of
  the grid's summary run, ``curve/error`` (lines, ``wandb/line/v0``) of the curve's summary run,
  and ``robustness/test/noise`` of every run that ``scripts/evaluate.py`` evaluated, overlaid;
- the runs table filtered to the group and job type and grouped by the grid's keys: per group
  the number of runs and the mean over seeds of ``best/val/<metric>`` and ``test/<metric>``,
  the W&B view of ``summary.md``.

The demo in docs/wandb_workspace.png comes from /work/notes/wandb_demo/run_demo.sh: the shipped
modalities_fusion grid (``wandb.mode=offline train.epochs=2 data.synthetic.n_train=400``), its
text+image seed-0 runs evaluated, and the shipped capacity curve (``train.max_steps=40``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from mm.experiments.spec import label_value
from mm.wandb_offline import read_offline_run  # wandb 0.31 has no Python reader of offline runs

ROOT = Path(__file__).resolve().parents[1]


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys, as the W&B runs table names its columns."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def value_of(run: dict[str, Any], key: str) -> str:
    """A grid key's value for a run: its config column, or for a bundle (no dot) its ``key=...`` tag."""
    if "." in key:
        return label_value(run["config"][key])
    return next(tag.split("=", 1)[1] for tag in run["tags"] if tag.startswith(f"{key}="))


def load_runs(out_dir: Path) -> list[dict[str, Any]]:
    """Each run of a grid's output folder: name, group, tags, job type, flat config, and all it logged (``offline``)."""
    runs = []
    for run_dir in sorted(p for p in (out_dir / "runs").iterdir() if (p / "wandb").is_dir()):
        offline = read_offline_run(run_dir)
        first = offline["runs"][0]
        runs.append({"name": first["display_name"], "group": first["run_group"], "tags": first.get("tags", []),
                     "job_type": first["job_type"], "config": flat(first["config"]["update"]), "offline": offline})
    return runs


def chart_spec(offline: dict[str, Any], key: str) -> dict[str, str]:
    """The field settings (x, y, stroke / label, value) of the custom chart logged under ``key``."""
    return offline["config"][f"_wandb.visualize.{key}"]["panel_config"]["fieldSettings"]


def panel(ax: Any, title: str, note: str = "") -> None:
    """W&B's panel look: a title top left, light frame and grid."""
    ax.set_title(title, loc="left", fontsize=9, fontweight="bold")
    if note:
        ax.text(1.0, 1.02, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.45")
    for side in ax.spines.values():
        side.set_color("0.8")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def history_panel(ax: Any, runs: list[dict[str, Any]], key: str, metric: str, colors: dict[str, Any]) -> None:
    """``metric`` against global_step, runs grouped by the grid's first key: mean line, min-max band."""
    groups: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        steps = groups.setdefault(value_of(run, key), {})
        for row in run["offline"]["history"]:
            if metric in row:
                steps.setdefault(row["global_step"], []).append(row[metric])
    for name, steps in groups.items():
        xs = sorted(steps)
        ax.plot(xs, [statistics.fmean(steps[x]) for x in xs], color=colors[name], label=f"{key}={name}", lw=1.5)
        ax.fill_between(xs, [min(steps[x]) for x in xs], [max(steps[x]) for x in xs], color=colors[name], alpha=0.15)
    panel(ax, metric, f"{len(runs)} runs by {key}")
    ax.set_xlabel("global_step", fontsize=7)
    ax.legend(fontsize=7)


def bar_panel(ax: Any, summary: dict[str, Any], key: str) -> None:
    """A ``wandb/bar/v0`` chart: one bar of the value column per label, from the chart's table."""
    spec, table = chart_spec(summary, key), summary["tables"][f"{key}_table"]
    label, value = table["columns"].index(spec["label"]), table["columns"].index(spec["value"])
    ax.barh([row[label] for row in table["data"]], [row[value] for row in table["data"]], color="#3b7dd8")
    ax.invert_yaxis()
    panel(ax, key, "wandb/bar/v0, summary run")
    ax.set_xlabel(spec["value"], fontsize=7)
    ax.tick_params(axis="y", labelsize=6)


def line_panel(ax: Any, tables: list[tuple[str, dict[str, Any]]], spec: dict[str, str], key: str, note: str,
               log_x: bool = False) -> None:
    """A ``wandb/line/v0`` chart over one or more runs' tables: y against x, one line per stroke (and run).

    One table: a colour per stroke value; several: a colour per run, a line style per stroke value.
    """
    for i, (run, table) in enumerate(tables):
        cols = table["columns"]
        x, y, stroke = cols.index(spec["x"]), cols.index(spec["y"]), cols.index(spec["stroke"])
        for j, series in enumerate(dict.fromkeys(row[stroke] for row in table["data"])):
            rows = sorted((row for row in table["data"] if row[stroke] == series), key=lambda row: row[x])
            style = {"color": f"C{i}", "linestyle": ("-", "--", ":")[j % 3]} if len(tables) > 1 else {"color": f"C{j}"}
            ax.plot([row[x] for row in rows], [row[y] for row in rows], marker="o", ms=3, lw=1.2,
                    label=f"{run} {series}".strip(), **style)
    if log_x:
        ax.set_xscale("log")
    panel(ax, key, note)
    ax.set_xlabel(spec["x"], fontsize=7)
    ax.set_ylabel(spec["y"], fontsize=7)
    ax.legend(fontsize=6, ncol=2)


def runs_table(ax: Any, runs: list[dict[str, Any]], grid: dict[str, Any], metric: str) -> None:
    """The runs table grouped by the grid's keys (in the grid's order): runs and the mean over seeds of the summary metrics."""
    keys, columns = list(grid), [f"best/val/{metric}", f"test/{metric}"]
    order = [[label_value(v) for v in values] for values in grid.values()]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for run in sorted(runs, key=lambda r: [order[i].index(value_of(r, k)) for i, k in enumerate(keys)]):
        groups.setdefault(tuple(value_of(run, k) for k in keys), []).append(run)
    cells = [[*key, str(len(group)), *(f"{statistics.fmean(r['offline']['summary'][c] for r in group):.4f}"
                                       for c in columns)]
             for key, group in groups.items()]
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=[*keys, "runs", *(f"{c} (mean)" for c in columns)], loc="upper center",
                     cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    table.scale(1, 1.15)
    for (row, _), cell in table.get_celld().items():
        cell.set_edgecolor("0.85")
        if row == 0:
            cell.set_facecolor("#eef1f5")
    ax.set_title(f"Runs table: group = {runs[0]['group']}, job type = {runs[0]['job_type']}, grouped by "
                 f"{', '.join(keys)} ({len(runs)} runs)", loc="left", fontsize=9, fontweight="bold")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("grid_out", type=Path, help="output folder of scripts/ablate.py (wandb.mode=offline)")
    parser.add_argument("--curve", type=Path, help="output folder of scripts/learning_curve.py (wandb.mode=offline)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "wandb_workspace.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = yaml.safe_load((args.grid_out / "grid.yaml").read_text())
    keys, metric = list(spec["grid"]), spec["metric"]
    runs = load_runs(args.grid_out)
    summary = read_offline_run(args.grid_out / "summary")
    noise = "robustness/test/noise"
    evaluated = [r for r in runs if f"{noise}_table" in r["offline"]["tables"]]
    colors = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(value_of(r, keys[0]) for r in runs))}

    fig = plt.figure(figsize=(17, 15))
    grid = fig.add_gridspec(3, 3, height_ratios=[1, 1.3, 1.5], hspace=0.3, wspace=0.3, top=0.95, bottom=0.02)
    fig.suptitle(f"W&B workspace, drawn from the offline run files: project {summary['runs'][0]['project']}, "
                 f"group {spec['name']}", x=0.12, y=0.985, ha="left", fontsize=12, fontweight="bold")
    history_panel(fig.add_subplot(grid[0, 0]), runs, keys[0], f"val/{metric}", colors)
    history_panel(fig.add_subplot(grid[0, 1]), runs, keys[0], "train/loss", colors)
    if evaluated:
        tables = [(" / ".join(value_of(r, k) for k in keys[1:]), r["offline"]["tables"][f"{noise}_table"])
                  for r in evaluated]
        line_panel(fig.add_subplot(grid[0, 2]), tables, chart_spec(evaluated[0]["offline"], noise), noise,
                   f"wandb/line/v0, {len(evaluated)} runs")
    bar_panel(fig.add_subplot(grid[1, 0]), summary, f"grid/val/{metric}")
    bar_panel(fig.add_subplot(grid[1, 1]), summary, f"grid/test/{metric}")
    if args.curve:
        curve = read_offline_run(args.curve / "summary")
        line_panel(fig.add_subplot(grid[1, 2]), [("", curve["tables"]["curve/error_table"])],
                   chart_spec(curve, "curve/error"), "curve/error",
                   f"wandb/line/v0, group {curve['runs'][0]['run_group']}, log x", log_x=True)
    runs_table(fig.add_subplot(grid[2, :]), runs, spec["grid"], metric)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
