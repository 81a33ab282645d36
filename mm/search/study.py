"""Running a search: an Optuna study whose trials are mm runs started by the experiment cell runner.

Each trial draws its values (``Search.space``), becomes a cell (``mm.experiments.spec.expand_cells``:
name ``trial=<n>__seed=<s>``, run folder ``<out>/runs/<name>``, the search's W&B group, tags) and
trains in its own interpreter (``mm.experiments.runner.cell_command``: ``python -m
mm.experiments.cell``). The search process follows the run's ``metrics.jsonl``: every validation row
is reported to Optuna (``trial.report(value, step)``); when the pruner says so, the run gets SIGTERM,
checkpoints and exits 143 (``mm.run.preemption``), and the trial is pruned. A finished run's value
is its ``results.json`` validation metric (the best checkpoint's). Nothing inside the loop knows.

The study lives in SQLite in the search folder (``study.db``) or in an RDB named by ``storage``;
several processes, on one machine or several, work on one study: each asks Optuna for the next
trial, and a trial numbered past ``n_trials`` live or finished ones is given up unrun ("surplus"),
so together they run exactly ``n_trials``. A process records a heartbeat while its trial runs; a
trial whose heartbeat stops for ``heartbeat.grace`` seconds (its process was killed) is failed and
enqueued again with the same values (``RetryHeartbeatStaleTrialCallback``). Finished trials are never redone:
restarting a killed search continues where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mm.experiments.runner import cell_command, tag_cells, write_atomic
from mm.experiments.spec import ROOT, Variant, expand_cells
from mm.search.spec import Search, build

POLL_S = 0.5
MAX_FAILED = 3  # trials failing in a row in one process before it gives up


def storage_url(search: Search, out_dir: Path) -> str:
    """The study's storage: the spec's RDB URL, else SQLite ``<out_dir>/study.db``."""
    return search.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"


def open_study(search: Search, out_dir: Path, worker: int = 0) -> Any:
    """Creates or loads the study (``load_if_exists``), with heartbeats and retries of killed trials."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    out_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and retries are marked experimental, and Optuna expects them under Study.optimize;
    # the search's own loop records the heartbeats (``heartbeat``), so its warnings say nothing here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    url = storage_url(search, out_dir)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=search.heartbeat["interval"],
                         grace_period=search.heartbeat["grace"],
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    study = optuna.create_study(study_name=search.name, storage=storage, direction=search.direction,
                                pruner=build("pruner", search.pruner), load_if_exists=True)
    # A seeded sampler in a resumed (or a second) process must not draw the first values again: its
    # seed is offset by the worker and by the trials the study already has.
    study.sampler = build("sampler", search.sampler, seed_offset=1000 * worker + len(study.trials))
    return study


def heartbeat(study: Any, trial: Any) -> None:
    """Records that this process still runs ``trial`` (Optuna's own loop does it from a thread; the
    search's loop does it between polls). Trial ids are Optuna's storage keys (``_trial_id``)."""
    study._storage.record_heartbeat(trial._trial_id)


def run_search(search: Search, out_dir: Path, worker: int = 0, log: Callable[[str], None] = print) -> Any:
    """Runs trials until the study has ``n_trials`` complete or pruned ones; returns the study."""
    import optuna
    from optuna.trial import TrialState

    study = open_study(search, out_dir, worker)
    failed_in_row = 0
    while True:
        optuna.storages.fail_stale_trials(study)  # killed processes' trials: failed, then enqueued again
        trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if len(finished) >= search.n_trials:
            break
        if len(finished) + len(running) + len(waiting) >= search.n_trials and not waiting:
            time.sleep(POLL_S * 4)  # the rest run elsewhere (or are stale, to be retried once their grace ends)
            continue
        trial = study.ask()
        heartbeat(study, trial)
        ahead = [t for t in study.get_trials(deepcopy=False)
                 if t.number < trial.number and t.state != TrialState.FAIL]
        if len(ahead) >= search.n_trials:  # another process took the last place first
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        state = run_trial(search, study, trial, out_dir, log)
        failed_in_row = failed_in_row + 1 if state == TrialState.FAIL else 0
        if failed_in_row >= MAX_FAILED:
            raise RuntimeError(f"{MAX_FAILED} trials failed in a row; see {out_dir / 'logs'}")
    return study


def trial_cell(search: Search, number: int, params: dict[str, Any], out_dir: Path) -> Any:
    """The cell of a trial: the base config, the spec's overrides and the drawn values."""
    variant = Variant({"trial": number}, search.trial_overrides(params))
    cells = expand_cells(search.path, search.base, search.overrides, [variant], [search.seed], out_dir,
                         group=search.name, job_type="search", what="trial", plots=False)
    return tag_cells(cells, search.name)[0]


def run_trial(search: Search, study: Any, trial: Any, out_dir: Path, log: Callable[[str], None]) -> Any:
    """Trains one trial as a subprocess cell, reporting its validations; returns its final state."""
    import optuna
    from optuna.trial import TrialState

    from mm.config import to_yaml

    params = {p.key: p.suggest(trial) for p in search.space}
    cell = trial_cell(search, trial.number, params, out_dir)
    run_dir = Path(cell.options.out_dir) / cell.name
    config, log_file = out_dir / "configs" / f"{cell.name}.yaml", out_dir / "logs" / f"{cell.name}.log"
    for folder in (config.parent, log_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    write_atomic(config, to_yaml(cell.cfg))
    trial.set_user_attr("run_dir", str(run_dir))
    shown = " ".join(search.trial_overrides(params))
    log(f"[{search.name}] trial {trial.number} start: {shown}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    metric_key, reported, steps, pruned = f"val/{search.metric}", set(), 0, False
    beat, t0 = time.monotonic(), time.monotonic()
    with log_file.open("w") as out:
        proc = subprocess.Popen(cell_command(config, cell.options), stdout=out, stderr=subprocess.STDOUT, env=env)
        follower = MetricsFollower(run_dir / "metrics.jsonl")
        try:
            while True:
                done = proc.poll() is not None
                for row in follower.new_rows():
                    steps = max(steps, int(row.get("step", 0)))
                    if metric_key in row and row["step"] not in reported and not pruned:
                        reported.add(row["step"])
                        trial.report(float(row[metric_key]), int(row["step"]))
                        if trial.should_prune():
                            pruned = True
                            log(f"[{search.name}] trial {trial.number} pruned at step {row['step']} "
                                f"({metric_key} {row[metric_key]:.4g})")
                            proc.send_signal(signal.SIGTERM)  # checkpoints, then exits 143
                if done:
                    break
                if time.monotonic() - beat > search.heartbeat["interval"]:
                    heartbeat(study, trial)
                    beat = time.monotonic()
                time.sleep(POLL_S)
        except BaseException:
            proc.terminate()  # this process is stopping (Ctrl-C): so does the run
            proc.wait()
            raise
    # A pruned run trains on until it reads the signal; its own last words give the step it stopped at.
    stopped = re.findall(r"stopped by SIGTERM at step (\d+)", log_file.read_text()) if pruned else []
    steps = int(stopped[-1]) if stopped else steps
    trial.set_user_attr("steps", steps)
    trial.set_user_attr("seconds", round(time.monotonic() - t0, 1))
    if pruned:  # stopped because the pruner said so, whatever status the stop gave it
        trial.set_user_attr("exit_code", proc.returncode)
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    results = run_dir / "results.json"
    if proc.returncode != 0 or not results.is_file():
        lines = [line for line in log_file.read_text().splitlines() if line.strip()]
        error = lines[-1] if lines else f"exit code {proc.returncode}"
        trial.set_user_attr("error", error[:500])
        study.tell(trial, state=TrialState.FAIL)
        log(f"[{search.name}] trial {trial.number} FAILED: {error}")
        return TrialState.FAIL
    value = json.loads(results.read_text())["val"].get(search.metric)
    if value is None:
        raise optuna.exceptions.OptunaError(f"{results}: no val metric {search.metric!r}")
    study.tell(trial, float(value))
    log(f"[{search.name}] trial {trial.number} done: val/{search.metric} {value:.4g} after {steps} steps")
    return TrialState.COMPLETE


class MetricsFollower:
    """Reads the complete lines a run appended to its ``metrics.jsonl`` since the last call.

    A run that resumes rewrites the file; a file shorter than what was read starts over.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def new_rows(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        if len(data) < self.offset:
            self.offset = 0
        end = data.rfind(b"\n", self.offset) + 1
        chunk, self.offset = data[self.offset:end], max(self.offset, end)
        return [json.loads(line) for line in chunk.decode().splitlines() if line.strip()]
