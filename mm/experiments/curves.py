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
(two or more named override sets, drawn side by side) instead of ``points``. A ``shots`` curve
(the low-data end, ``mm.lowdata.fewshot``) has ``shots: [1, 5, 20]`` (labelled examples per class) and
``methods:`` (named override sets trained by the loop, one or more), and optionally ``frozen:``
(classifiers on frozen features: ``[prototype, logistic]`` by default, or ``{name, classifier,
overrides}`` entries, e.g. a transferred encoder's features) and ``zero_shot:`` (``true`` or
``{templates, names}``: the text k = 0 point, ``mm.lowdata.zero_shot``); its seeds are the episodes. Each
(k, seed) episode is a dataset folder under ``episodes/`` whose training split is the nested k-shot
set of that seed; trained runs train on it, the frozen classifiers fit on its rows of features
extracted once. Its summary is the test metric's mean and 95 % interval over episodes per method
and k (``mm.lowdata.fewshot.summarize``). A point's or
policy's overrides come after the curve's (and the command line's) overrides. The kinds are
``mm.experiments.spec.KINDS``: a new kind that sweeps another config value for each policy is one
entry there.

Train error is measured, not read off the running loss: after training, the best checkpoint is
evaluated (eval mode, the run's own ``train_subset``) on the training examples the run used, and
the metrics are kept in ``runs/<run>/train_eval.json``. ``wall_time_s`` is the training run's own
(``results.json``), this evaluation not included. The output folder holds ``curve.yaml``
(the resolved curve), ``state.json``, ``results.csv`` (one row per run), ``summary.csv`` and
``summary.md`` (mean and sample std over seeds), ``curve.png``, ``runs/`` and the W&B summary run
``summary/``. Runs are W&B runs in group ``name`` with job type ``learning-curve``, tagged with
``name`` and ``key=value`` per value of the run (``point=full``, ``policy=frozen``, ``fraction=0.1``);
the summary run also draws the curve as a native W&B line chart, ``curve/error``. Rerunning
resumes as grids do (``mm.experiments.runner``): a run is skipped when it is done with the config
it has now.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mm.config import Config, ConfigError, load_config
from mm.experiments import summaries
from mm.experiments.runner import run_cells, summary_charts, summary_config, tag_cells, write_atomic
from mm.experiments.spec import (
    KINDS,
    RESERVED_KEYS,
    Cell,
    Curve,
    Point,
    Variant,
    check_seeds,
    expand_cells,
    override_keys,
    read_spec,
    resolve_base,
)
from mm.experiments.summaries import ERRORS
from mm.lowdata import fewshot, zero_shot

if TYPE_CHECKING:
    from mm.tracking import Tracker

SPEC_KEYS = {"base", "overrides", "kind", "seeds", "metric", "name"}  # besides each kind's own
TRAIN_EVAL = "train_eval.json"


def load_curve(path: str | Path, extra_overrides: list[str] | tuple[str, ...] = (),
               seeds: list[int] | None = None, only: list[str] | None = None) -> Curve:
    """Reads and checks a curve file (``seeds`` replaces the file's; ``only`` keeps the named points,
    a shots curve's trained methods); errors name the file and key.

    Raises:
        ConfigError: unknown key or kind, a malformed point list, swept value or seed list, a name in
            ``only`` that is not a point of the file.
    """
    kind_keys = {name: {k.sets, *([k.sweep.key] if k.sweep else []), *k.extras} for name, k in KINDS.items()}
    path, raw = read_spec(path, "curve", SPEC_KEYS.union(*kind_keys.values()))
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{path}: 'kind' must be one of {sorted(KINDS)}, not {kind!r}")
    spec = KINDS[kind]
    for key in sorted(set().union(*kind_keys.values()) - kind_keys[kind]):
        if key in raw:
            raise ConfigError(f"{path}: a {kind} curve has no '{key}'")
    points = _points(raw.get(spec.sets), path, spec.sets, spec.min_sets)
    if only:
        unknown = sorted(set(only) - {p.name for p in points})
        if unknown:
            raise ConfigError(f"{path}: no '{spec.sets}' entry named {unknown}; "
                              f"the file has {[p.name for p in points]}")
        points = [p for p in points if p.name in only]
    values, reserved = [], set(RESERVED_KEYS)
    if spec.sweep is not None:
        values = raw.get(spec.sweep.key)
        if not isinstance(values, list) or not values or not all(spec.sweep.valid(v) for v in values):
            raise ConfigError(f"{path}: '{spec.sweep.key}' must be a non-empty list of {spec.sweep.valid_text}")
        values = [spec.sweep.cast(v) for v in values]
        reserved.add(spec.sweep.override)
    seeds = check_seeds(seeds if seeds is not None else raw.get("seeds", [0]), path)
    overrides = [str(o) for o in raw.get("overrides") or []] + list(extra_overrides)
    for key in override_keys([*overrides, *(o for p in points for o in p.overrides)]):
        if key in reserved:
            raise ConfigError(f"{path}: '{key}' is set by the curve runner for each run")
    curve = Curve(path=path, name=str(raw.get("name") or path.stem), kind=kind,
                  base=resolve_base(raw.get("base"), path, "curve"), overrides=overrides, points=points,
                  values=values, seeds=seeds, metric=str(raw.get("metric") or "accuracy"),
                  extras={key: raw[key] for key in spec.extras if key in raw})
    if kind == "shots":
        shots_methods(curve)  # checks the frozen and zero-shot entries
    return curve


def _points(raw: Any, path: Path, key: str, minimum: int) -> list[Point]:
    """The named override sets under ``key``: at least ``minimum``, names unique."""
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
    """The runs of a curve, point (or policy) by swept value by seed, each config checked before any runs.

    Raises:
        ConfigError: a run's config is invalid; the message names the curve file and the run.
    """
    kind = KINDS[curve.kind]
    if curve.kind == "shots":
        return tag_cells(shots_cells(curve, out_dir), curve.name)
    variants = []
    for point in curve.points:
        if kind.sweep is None:
            variants.append(Variant({kind.column: point.name}, point.overrides))
            continue
        for value in curve.values:
            variants.append(Variant({kind.column: point.name, kind.sweep.column: value},
                                    [*point.overrides, f"{kind.sweep.override}={value}"]))
    return tag_cells(expand_cells(curve.path, curve.base, curve.overrides, variants, curve.seeds, out_dir,
                                  group=curve.name, job_type="learning-curve", what="run"), curve.name)


def curve_dict(curve: Curve) -> dict[str, Any]:
    """The resolved curve, as written to ``curve.yaml`` (a curve file that reruns the same runs)."""
    kind = KINDS[curve.kind]
    spec: dict[str, Any] = {"name": curve.name, "kind": curve.kind, "base": str(curve.base) if curve.base else None,
                            "overrides": curve.overrides, kind.sets: [asdict(p) for p in curve.points]}
    if kind.sweep is not None:
        spec[kind.sweep.key] = curve.values
    return {**spec, **curve.extras, "seeds": curve.seeds, "metric": curve.metric}


def train_eval(run_dir: Path) -> dict[str, float]:
    """The best checkpoint's metrics on the training examples the run used (cached in ``train_eval.json``)."""
    path = run_dir / TRAIN_EVAL
    if path.is_file():
        return json.loads(path.read_text())
    from torch.utils.data import Subset

    from mm.analysis.evaluation import evaluate, load_run
    from mm.prepare import prepare
    from mm.run.runtime import train_subset

    cfg, model, classes = load_run(run_dir, "best")
    # The training examples as they are, not augmented; frozen encoders' features come from the
    # cache the run itself filled.
    job = prepare(cfg, classes, model, augment=False)
    used = train_subset(len(job.splits["train"]), cfg.data.train_fraction, cfg.seed)  # as train() drew it
    loader = job.loader("train", dataset=Subset(job.splits["train"], used))
    metrics = {"n": len(used), **evaluate(model, loader, job.device, cfg.train.precision)}
    write_atomic(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def run_curve(curve: Curve, cells: list[Cell], out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Trains the runs not yet done (then measures their train error) and writes the summary.

    An exception fails its run and the curve goes on; a KeyboardInterrupt stops the curve and
    leaves the run ``running``, to be rerun from a clean folder next time.

    Returns:
        ``{"rows", "frozen_rows", "summary", "markdown", "trained", "failed"}``: ``rows`` of the runs
        trained, ``frozen_rows`` of a shots curve's zero-shot and frozen-feature methods.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    header = f"# python scripts/learning_curve.py {out_dir / 'curve.yaml'} --out {out_dir}\n"
    write_atomic(out_dir / "curve.yaml", header + yaml.safe_dump(curve_dict(curve), sort_keys=False))

    def describe(cell: Cell, run_dir: Path, seconds: float) -> str:
        row = run_row(cell, run_dir, curve)
        return (f"params={row['params_trainable']:,}  " + "  ".join(f"{k}={row[k]:.4f}" for k in ERRORS)
                + f"  ({row['wall_time_s']:.1f}s)")

    # A shots curve: its episode folders first, then its zero-shot and frozen-feature rows (no training).
    frozen = shots_rows(curve, shots_methods(curve), out_dir, log) if curve.kind == "shots" else []
    state, trained = run_cells(cells, out_dir, label="curve", describe=describe,
                               measure=lambda cell, run_dir: train_eval(run_dir), announce=False, log=log)
    rows = [run_row(c, Path(state.cells[c.name]["run_dir"]), curve) for c in cells
            if state.cells[c.name]["status"] == "done"]
    summary, markdown = write_reports(curve, frozen + rows, out_dir, summary_config(cells[0], curve.name))
    return {"rows": rows, "frozen_rows": frozen, "summary": summary, "markdown": markdown, "trained": trained,
            "failed": state.failed}


def run_row(cell: Cell, run_dir: Path, curve: Curve) -> dict[str, Any]:
    """One results.csv row: the run's set, fraction (and swept value), seed, size, measured params and errors.

    Raises:
        KeyError: the curve's metric is not among the run's metrics.
    """
    kind = KINDS[curve.kind]
    res = json.loads((run_dir / "results.json").read_text())
    train = train_eval(run_dir)
    if curve.metric not in res["val"]:
        raise KeyError(f"metric {curve.metric!r} is not in the results; have {sorted(res['val'])}")
    named = {k: cell.values[k] for k in kind.keys if k != "fraction"}
    shots = {"kind": "trained"} if curve.kind == "shots" else {}
    return {"run": cell.name, **named, "fraction": cell.cfg.data.train_fraction, "seed": cell.seed, **shots,
            "n_train": train["n"], "params_trainable": res["params"]["params/trainable"],
            "params_total": res["params"]["params/total"], "train_error": 1 - train[curve.metric],
            "val_error": 1 - res["val"][curve.metric], "test_error": 1 - res["test"][curve.metric],
            "best_step": res["best_step"], "steps": res["steps"], "wall_time_s": res["wall_time_s"]}


def write_reports(curve: Curve, rows: list[dict[str, Any]], out_dir: Path,
                  cfg: Config) -> tuple[list[dict[str, Any]], str]:
    """Writes results.csv, summary.csv, summary.md and curve.png; logs them to a W&B summary run."""
    summaries.write_csv(out_dir / "results.csv", rows)
    if not rows:
        return [], ""
    if curve.kind == "shots":
        table = fewshot.summarize(rows, curve.metric)
        markdown = fewshot.shots_markdown(curve.name, table, curve.metric, curve.seeds)
        plot = fewshot.shots_plot(curve.name, table, curve.metric, out_dir / "curve.png")
    else:
        table = summaries.curve_summary(curve, rows)
        markdown = summaries.curve_markdown(curve, table)
        plot = summaries.curve_plot(curve, table, out_dir / "curve.png")
    summaries.write_csv(out_dir / "summary.csv", table)
    write_atomic(out_dir / "summary.md", markdown)
    summaries.log_summary_run(out_dir, curve_dict(curve), cfg, group=curve.name, job_type="learning-curve-summary",
                            tables={"runs": rows, "summary": table}, images={"curve": plot})
    with summary_charts(out_dir, cfg, curve.name, "learning-curve-summary") as tracker:
        log_charts(tracker, curve, table)
    return table, markdown


def log_charts(tracker: Tracker, curve: Curve, table: list[dict[str, Any]]) -> None:
    """The curve as a native W&B line chart, ``curve/error``: what curve.png draws, the std bands aside.

    Error (mean over seeds) against the kind's x (``params_trainable``, or the swept value such as
    ``fraction``), one line per ``series``: ``train`` and ``val`` (capacity), or ``<policy> train``
    and ``<policy> val`` (data). The chart's table also has the std and the named set.
    """
    kind = KINDS[curve.kind]
    x = kind.sweep.column if kind.sweep else "params_trainable"
    rows = []
    for g in table:
        for split in ("train", "val"):
            if math.isnan(g[f"{split}_error"]):  # a shots curve's zero-shot has no training examples
                continue
            series = f"{g[kind.column]} {split}" if kind.sweep else split
            rows.append([g[x], g[f"{split}_error"], g[f"{split}_error_std"], series, g[kind.column]])
    tracker.log_line("curve/error", [x, "error", "std", "series", kind.column], rows, x, "error", stroke="series",
                     title=f"{curve.name}: error = 1 - {curve.metric}, mean over seeds {curve.seeds}")


# ---- Shots curves: the low-data end (mm.lowdata.fewshot) ----


def shots_methods(curve: Curve) -> tuple[list[fewshot.FrozenMethod], zero_shot.ZeroShotMethod | None]:
    """A shots curve's frozen-feature classifiers and zero-shot entry; method names must not repeat.

    Raises:
        ConfigError: a malformed entry or a repeated name.
    """
    frozen = fewshot.parse_frozen(curve.extras.get("frozen"), curve.path)
    zero = zero_shot.parse_zero_shot(curve.extras.get("zero_shot"), curve.path)
    names = [p.name for p in curve.points] + [m.name for m in frozen] + ([zero.name] if zero else [])
    if len(set(names)) != len(names):
        raise ConfigError(f"{curve.path}: the names of methods, frozen classifiers and zero_shot repeat: {names}")
    return frozen, zero


def shots_cells(curve: Curve, out_dir: Path) -> list[Cell]:
    """The trained runs of a shots curve, method by k by episode, each on its episode's dataset folder."""
    data = load_config(curve.base, curve.overrides).data  # where the episodes are drawn from
    cells = []
    for seed in curve.seeds:
        variants = [Variant({"method": point.name, "k": k},
                            [*point.overrides, *fewshot.episode_overrides(out_dir, data, k, seed)])
                    for point in curve.points for k in curve.values]
        cells += expand_cells(curve.path, curve.base, curve.overrides, variants, [seed], out_dir,
                              group=curve.name, job_type="learning-curve", what="run")
    return cells


def shots_rows(curve: Curve, methods: tuple[list[fewshot.FrozenMethod], zero_shot.ZeroShotMethod | None],
               out_dir: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Writes a shots curve's episode folders; returns the rows of its zero-shot and frozen-feature methods."""
    frozen, zero = methods
    group = [f"wandb.group={curve.name}"]
    data = load_config(curve.base, curve.overrides).data
    labels = fewshot.write_episodes(out_dir, data, curve.values, curve.seeds)
    rows = []
    if zero is not None:
        cfg = load_config(curve.base, [*curve.overrides, *zero.overrides, *group, f"name={zero.name}"])
        rows.append(zero_shot.zero_shot_row(cfg, zero, curve.metric, out_dir / "runs" / zero.name))
        log(f"[shots] {zero.name}: test {curve.metric} {1 - rows[-1]['test_error']:.4f}")
    by_features: dict[tuple[str, ...], list[fewshot.FrozenMethod]] = {}  # methods on the same features
    for method in frozen:
        by_features.setdefault(tuple(method.overrides), []).append(method)
    for overrides, methods in by_features.items():
        cfg = load_config(curve.base, [*curve.overrides, *overrides, *group])
        rows += fewshot.frozen_rows(cfg, methods, curve.values, curve.seeds, curve.metric, labels, log)
    return rows
