"""What a search leaves in its folder: the trials table, the best config as a runnable YAML, and plots.

- ``trials.csv`` / ``trials.md``: one row per trial (number, state, value, each searched key, the
  optimizer steps it trained, seconds, run folder); surplus trials (never run) are left out;
- ``best.yaml``: the best trial's whole config, first line the command that trains it;
- ``history.png`` (optimisation history), ``importance.png`` (parameter importances, two or more
  finished trials and keys) and ``intermediate.png`` (each trial's validation curve, pruned ones
  stopping early), drawn by ``optuna.visualization.matplotlib``.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

from mm.config import load_config, to_yaml
from mm.experiments.runner import write_atomic
from mm.search.spec import Search


def trial_rows(search: Search, study: Any) -> list[dict[str, Any]]:
    """The table's rows, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        row = {"trial": t.number, "state": t.state.name.lower(),
               f"val {search.metric}": "" if t.value is None else round(t.value, 6)}
        row.update({p.key: t.params.get(p.key, "") for p in search.space})
        row.update({"steps": t.user_attrs.get("steps", ""), "seconds": t.user_attrs.get("seconds", ""),
                    "run_dir": t.user_attrs.get("run_dir", "")})
        rows.append(row)
    return rows


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """``trials.csv`` and ``trials.md``."""
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out_dir / "trials.csv", buf.getvalue())
    cols = [c for c in rows[0] if c != "run_dir"]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    write_atomic(out_dir / "trials.md", "\n".join(lines) + "\n")


def write_best(search: Search, study: Any, out_dir: Path) -> Path | None:
    """``best.yaml``: the base config with the spec's overrides and the best trial's values."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial yet
        return None
    path = out_dir / "best.yaml"
    cfg = load_config(search.base, [*search.overrides, *search.trial_overrides(best.params), f"seed={search.seed}",
                                     f"name={search.name}-best"])
    head = (f"# python scripts/train.py --config {path}\n"
            f"# best of search {search.name} ({search.path}): trial {best.number}, val {search.metric} "
            f"{best.value:.4g}; {' '.join(search.trial_overrides(best.params))}\n")
    write_atomic(path, head + to_yaml(cfg))
    return path


def write_plots(study: Any, out_dir: Path) -> list[Path]:
    """The history, importance and intermediate-value plots that the finished trials allow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    written = []
    plots = [("history.png", ovm.plot_optimization_history, 1), ("intermediate.png", ovm.plot_intermediate_values, 1)]
    if len({k for t in done for k in t.params}) >= 1 and len(done) >= 2:
        plots.append(("importance.png", ovm.plot_param_importances, 2))
    for name, draw, need in plots:
        if len(done) < need:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            ax = draw(study)
        fig = ax.figure if hasattr(ax, "figure") else plt.gcf()
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def write_report(search: Search, study: Any, out_dir: Path) -> dict[str, Any]:
    """Every output above; returns the rows and the best trial's summary."""
    rows = trial_rows(search, study)
    write_table(rows, out_dir)
    best = write_best(search, study, out_dir)
    plots = write_plots(study, out_dir)
    return {"rows": rows, "best_yaml": best, "plots": plots}
