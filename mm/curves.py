"""Learning curves: train and val error against trainable parameters (capacity) or training set size (data).

A curve file is YAML; its first line is the command that runs it::

    # python scripts/learning_curve.py configs/curves/capacity.yaml
    base: null                   # config file, relative to this file or the repo root; null = defaults
    overrides: [data.task=shape, "data.modalities=[text]"]   # applied to every run
    kind: capacity               # capacity | data
    points:                      # capacity: named override sets, in order; x = measured trainable params
      - {name: linear_probe, overrides: [encoders.text.trainable=linear_probe]}
      - {name: full, overrides: [encoders.text.trainable=full]}
    seeds: [0, 1]
    metric: accuracy             # optional (default accuracy); error = 1 - metric
    name: capacity               # optional, default: the file's stem; the W&B group

A ``data`` curve has ``fractions: [0.01, 0.1, 1.0]`` (``data.train_fraction``) and ``policies:``
(two or more named override sets, drawn side by side) instead of ``points``. A point's or
policy's overrides come after the curve's (and the command line's) overrides.

Train error is measured, not read off the running loss: after training, the best checkpoint is
evaluated (eval mode, the run's own ``train_subset``) on the training examples the run used, and
the metrics are kept in ``runs/<run>/train_eval.json``. ``wall_time_s`` is the training run's own
(``results.json``), this evaluation not included. The output folder holds ``curve.yaml``
(the resolved curve), ``state.json``, ``results.csv`` (one row per run), ``summary.csv`` and
``summary.md`` (mean and sample std over seeds), ``curve.png``, ``runs/`` and the W&B summary run
``summary/``. Runs are W&B runs in group ``name`` with job type ``learning-curve``. Rerunning
resumes as ``mm.ablate`` does: a run is skipped when it is done with the config it has now.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mm.ablate import (
    RESERVED_KEYS,
    Cell,
    State,
    _resolve_base,
    cell_name,
    check_seeds,
    read_spec,
    runner_overrides,
    write_atomic,
)
from mm.config import Config, ConfigError, load_config

CURVE_KEYS = {"base", "overrides", "kind", "points", "fractions", "policies", "seeds", "metric", "name"}
KINDS = {"capacity": "points", "data": "policies"}  # kind -> its list of named override sets
GROUP = {"capacity": "point", "data": "policy"}  # kind -> the column that names the set
TRAIN_EVAL = "train_eval.json"
ERRORS = ("train_error", "val_error", "test_error")


@dataclass
class Point:
    """A named set of overrides: a capacity point or a data curve's policy."""

    name: str
    overrides: list[str]


@dataclass
class Curve:
    """A parsed curve file; ``overrides`` include extra command-line ones."""

    path: Path
    name: str
    kind: str
    base: Path | None
    overrides: list[str]
    points: list[Point]
    fractions: list[float]  # data curves; empty for capacity curves
    seeds: list[int]
    metric: str = "accuracy"


def load_curve(path: str | Path, extra_overrides: list[str] | tuple[str, ...] = (),
               seeds: list[int] | None = None) -> Curve:
    """Reads and checks a curve file (``seeds`` replaces the file's); errors name the file and key.

    Raises:
        ConfigError: unknown key or kind, a malformed point list, fraction or seed list.
    """
    path, raw = read_spec(path, "curve", CURVE_KEYS)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{path}: 'kind' must be one of {sorted(KINDS)}, not {kind!r}")
    for key in ("fractions", "policies") if kind == "capacity" else ("points",):
        if key in raw:
            raise ConfigError(f"{path}: a {kind} curve has no '{key}'")
    points = _points(raw.get(KINDS[kind]), path, KINDS[kind], minimum=2 if kind == "data" else 1)
    fractions = raw.get("fractions") or []
    if kind == "data" and (not isinstance(fractions, list) or not fractions
                           or not all(isinstance(f, int | float) and 0 < f <= 1 for f in fractions)):
        raise ConfigError(f"{path}: 'fractions' must be a non-empty list of numbers in (0, 1]")
    seeds = check_seeds(seeds if seeds is not None else raw.get("seeds", [0]), path)
    overrides = [str(o) for o in raw.get("overrides") or []] + list(extra_overrides)
    reserved = RESERVED_KEYS | ({"data.train_fraction"} if kind == "data" else set())
    for item in [*overrides, *(o for p in points for o in p.overrides)]:
        if (key := item.split("=", 1)[0].strip()) in reserved:
            raise ConfigError(f"{path}: '{key}' is set by the curve runner for each run")
    return Curve(path=path, name=str(raw.get("name") or path.stem), kind=kind,
                 base=_resolve_base(raw.get("base"), path), overrides=overrides, points=points,
                 fractions=[float(f) for f in fractions], seeds=seeds, metric=str(raw.get("metric") or "accuracy"))


def _points(raw: Any, path: Path, key: str, minimum: int) -> list[Point]:
    if not isinstance(raw, list) or len(raw) < minimum:
        raise ConfigError(f"{path}: '{key}' must be a list of at least {minimum} {{name, overrides}} entries")
    points = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) - {"name", "overrides"} or not entry.get("name"):
            raise ConfigError(f"{path}: each of '{key}' is {{name: ..., overrides: [...]}}, not {entry!r}")
        points.append(Point(str(entry["name"]), [str(o) for o in entry.get("overrides") or []]))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: '{key}' names repeat: {names}")
    return points


def expand(curve: Curve, out_dir: Path) -> list[Cell]:
    """The runs of a curve, point (or policy) by fraction by seed, each config checked before any runs.

    Raises:
        ConfigError: a run's config is invalid; the message names the curve file and the run.
    """
    cells = []
    for point in curve.points:
        for fraction in curve.fractions or [None]:
            values: dict[str, Any] = {GROUP[curve.kind]: point.name}
            if fraction is not None:
                values["fraction"] = fraction
            for seed in curve.seeds:
                name = cell_name(values, seed)
                overrides = [*curve.overrides, *point.overrides,
                             *([f"data.train_fraction={fraction}"] if fraction is not None else []),
                             *runner_overrides(name, seed, out_dir, curve.name, "learning-curve")]
                try:
                    cfg = load_config(curve.base, overrides)
                except ConfigError as err:
                    raise ConfigError(f"{curve.path}: run {name}: {err}") from None
                cells.append(Cell(name, values, seed, cfg))
    return cells


def curve_dict(curve: Curve) -> dict[str, Any]:
    """The resolved curve, as written to ``curve.yaml`` (a curve file that reruns the same runs)."""
    spec: dict[str, Any] = {"name": curve.name, "kind": curve.kind, "base": str(curve.base) if curve.base else None,
                            "overrides": curve.overrides, KINDS[curve.kind]: [asdict(p) for p in curve.points]}
    if curve.kind == "data":
        spec["fractions"] = curve.fractions
    return {**spec, "seeds": curve.seeds, "metric": curve.metric}


def train_eval(run_dir: Path) -> dict[str, float]:
    """The best checkpoint's metrics on the training examples the run used (cached in ``train_eval.json``)."""
    path = run_dir / TRAIN_EVAL
    if path.is_file():
        return json.loads(path.read_text())
    from torch.utils.data import DataLoader, Subset

    from mm.data import build_splits
    from mm.data.collate import Collator
    from mm.evaluation import load_run
    from mm.features import use_feature_cache
    from mm.train import evaluate, pick_device, train_subset

    cfg, model, classes = load_run(run_dir, "best")
    device = pick_device(cfg.train.device)
    model.to(device)
    splits, _ = build_splits(cfg.data, dict(model.encoders), classes, head=cfg.head.name)
    collate = Collator(cfg.data.modalities, dict(model.encoders), head=cfg.head.name)
    # Frozen encoders' train features come from the cache the run itself filled.
    splits, collate, _ = use_feature_cache(cfg, model, {"train": splits["train"]}, collate, device)
    used = train_subset(len(splits["train"]), cfg.data.train_fraction, cfg.seed)  # as train() drew it
    loader = DataLoader(Subset(splits["train"], used), batch_size=cfg.train.eval_batch_size, collate_fn=collate)
    metrics = {"n": len(used), **evaluate(model, loader, device, cfg.train.precision)}
    write_atomic(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_curve(curve: Curve, cells: list[Cell], out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains the runs not yet done (then measures their train error) and writes the reports.

    An exception fails its run and the curve goes on; a KeyboardInterrupt stops the curve and
    leaves the run ``running``, to be rerun from a clean folder next time.

    Returns:
        ``{"rows", "summary", "markdown", "trained", "failed"}``.
    """
    import mm.train as mm_train

    out_dir.mkdir(parents=True, exist_ok=True)
    header = f"# python scripts/learning_curve.py {out_dir / 'curve.yaml'} --out {out_dir}\n"
    write_atomic(out_dir / "curve.yaml", header + yaml.safe_dump(curve_dict(curve), sort_keys=False))
    state = State(out_dir / "state.json", cells)
    t0, trained = time.perf_counter(), []
    for i, cell in enumerate(cells, 1):
        prefix = f"[curve {i}/{len(cells)} {time.perf_counter() - t0:7.1f}s]"
        if state.is_done(cell):
            log(f"{prefix} skip  {cell.name} (done)")
            continue
        run_dir = out_dir / "runs" / cell.name
        shutil.rmtree(run_dir, ignore_errors=True)  # a partial run would make train() pick name-2
        state.update(cell.name, status="running", run_dir=str(run_dir), error=None)
        try:
            mm_train.train(copy.deepcopy(cell.cfg))
            train_eval(run_dir)
        except Exception as err:
            error = traceback.format_exception_only(err)[-1].strip()
            state.update(cell.name, status="failed", error=error)
            log(f"{prefix} FAILED {cell.name}: {error}")
            continue
        state.update(cell.name, status="done")
        trained.append(cell.name)
        row = run_row(cell, run_dir, curve)
        log(f"{prefix} done  {cell.name}  params={row['params_trainable']:,}  "
            + "  ".join(f"{k}={row[k]:.4f}" for k in ERRORS) + f"  ({row['wall_time_s']:.1f}s)")
    rows = [run_row(c, Path(state.cells[c.name]["run_dir"]), curve) for c in cells
            if state.cells[c.name]["status"] == "done"]
    summary, markdown = write_reports(curve, rows, out_dir, cells[0].cfg)
    failed = [name for name, entry in state.cells.items() if entry["status"] == "failed"]
    return {"rows": rows, "summary": summary, "markdown": markdown, "trained": trained, "failed": failed}


def run_row(cell: Cell, run_dir: Path, curve: Curve) -> dict[str, Any]:
    """One results.csv row: the run's point, fraction, seed, size, measured params and errors."""
    res = json.loads((run_dir / "results.json").read_text())
    train = train_eval(run_dir)
    if curve.metric not in res["val"]:
        raise KeyError(f"metric {curve.metric!r} is not in the results; have {sorted(res['val'])}")
    return {"run": cell.name, GROUP[curve.kind]: cell.values[GROUP[curve.kind]],
            "fraction": cell.cfg.data.train_fraction, "seed": cell.seed, "n_train": train["n"],
            "params_trainable": res["params"]["params/trainable"], "params_total": res["params"]["params/total"],
            "train_error": 1 - train[curve.metric], "val_error": 1 - res["val"][curve.metric],
            "test_error": 1 - res["test"][curve.metric], "best_step": res["best_step"], "steps": res["steps"],
            "wall_time_s": res["wall_time_s"]}


def summarize(curve: Curve, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (point, fraction), in run order: n seeds, trainable params, mean and sample std of each error."""
    group = GROUP[curve.kind]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row[group], row["fraction"]), []).append(row)
    table = []
    for (name, fraction), found in groups.items():
        entry: dict[str, Any] = {group: name, "fraction": fraction, "n": len(found), "n_train": found[0]["n_train"],
                                 "params_trainable": found[0]["params_trainable"]}
        for col in ERRORS:
            values = [r[col] for r in found]
            entry[col] = statistics.fmean(values)
            entry[col + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["wall_time_s"] = statistics.fmean(r["wall_time_s"] for r in found)
        table.append(entry)
    return table


def summary_markdown(curve: Curve, table: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, errors as ``mean ± std``."""
    group = GROUP[curve.kind]
    lines = [f"## {curve.name}: error = 1 - {curve.metric}, mean ± std over seeds {curve.seeds}\n",
             f"| {group} | fraction | n_train | trainable params | n | train error | val error | test error | wall s |",
             "|" + "---|" * 9]
    for g in table:
        errors = " | ".join(f"{g[c]:.4f} ± {g[c + '_std']:.4f}" for c in ERRORS)
        lines.append(f"| {g[group]} | {g['fraction']:g} | {g['n_train']} | {g['params_trainable']:,} | {g['n']} "
                     f"| {errors} | {g['wall_time_s']:.1f} |")
    return "\n".join(lines) + "\n\nstd: sample standard deviation (n - 1) over the seeds that finished.\n"


def plot_curve(curve: Curve, table: list[dict[str, Any]], path: Path) -> Path:
    """Capacity: error vs trainable params, train and val with std bands, points named. Data: val error vs
    fraction, one line per policy with a std band, train error dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))

    def line(xs: list[float], gs: list[dict], col: str, **style: Any) -> None:
        mean, std = [g[col] for g in gs], [g[col + "_std"] for g in gs]
        (drawn,) = ax.plot(xs, mean, **{"marker": "o", **style})
        ax.fill_between(xs, [max(m - s, 0.0) for m, s in zip(mean, std, strict=True)],  # errors stay >= 0
                        [m + s for m, s in zip(mean, std, strict=True)], color=drawn.get_color(), alpha=0.15)

    if curve.kind == "capacity":
        gs = sorted(table, key=lambda g: g["params_trainable"])
        xs = [g["params_trainable"] for g in gs]
        line(xs, gs, "train_error", label="train error")
        line(xs, gs, "val_error", label="val error")
        for g in gs:
            ax.annotate(g["point"], (g["params_trainable"], g["val_error"]), textcoords="offset points",
                        xytext=(4, 6), fontsize=8, rotation=20)
        ax.set_xlabel("trainable parameters (measured)")
    else:
        for k, name in enumerate(dict.fromkeys(g["policy"] for g in table)):
            gs = sorted((g for g in table if g["policy"] == name), key=lambda g: g["fraction"])
            xs = [g["fraction"] for g in gs]
            line(xs, gs, "val_error", color=f"C{k}", label=f"{name} val")
            line(xs, gs, "train_error", color=f"C{k}", linestyle="--", marker="x", label=f"{name} train")
        ax.set_xlabel("fraction of the training set (data.train_fraction), n = training examples")
    ax.set_xscale("log")
    if curve.kind == "data":
        ticks = {g["fraction"]: g["n_train"] for g in table}
        ax.set_xticks(list(ticks), [f"{f:g}\nn={n}" for f, n in ticks.items()], minor=False)
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


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def write_reports(curve: Curve, rows: list[dict[str, Any]], out_dir: Path,
                  cfg: Config) -> tuple[list[dict[str, Any]], str]:
    """Writes results.csv, summary.csv, summary.md and curve.png; logs them to a W&B summary run."""
    from mm.tracking import Tracker

    write_csv(out_dir / "results.csv", rows)
    if not rows:
        return [], ""
    table = summarize(curve, rows)
    write_csv(out_dir / "summary.csv", table)
    markdown = summary_markdown(curve, table)
    write_atomic(out_dir / "summary.md", markdown)
    plot = plot_curve(curve, table, out_dir / "curve.png")
    with Tracker(out_dir / "summary", curve_dict(curve), mode=cfg.wandb.mode, project=cfg.wandb.project,
                 entity=cfg.wandb.entity, group=curve.name, name=f"{curve.name}-summary", tags=cfg.wandb.tags,
                 job_type="learning-curve-summary") as tracker:
        tracker.log_table("runs", list(rows[0]), [list(r.values()) for r in rows])
        tracker.log_table("summary", list(table[0]), [list(g.values()) for g in table])
        tracker.log_image("curve", plot)
    return table, markdown
