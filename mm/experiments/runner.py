"""Running cells resumably: state files, in-process or ``python -m mm.experiments.cell`` subprocesses.

``run_cells`` is the one loop of grids and learning curves. A cell is skipped when it is
``done``, its ``results.json`` exists and its ``config.yaml`` equals the cell's config now; any
other cell (failed, interrupted, pending, or changed by an edit of the spec) reruns from a
deleted, clean run folder. An exception fails its cell and the others go on; a
KeyboardInterrupt stops the loop and leaves the cell ``running``, to be rerun next time.

Each process that runs cells owns one state file and is its only writer: ``state.json`` for a
whole spec, ``shards/<i>-of-<n>/state.json`` for a shard (``mm.experiments.grids``), so
shards on several machines share an output folder without clashing. A cell done according to
any state file of the folder counts as done for all (``read_states``); every file is written
whole, via a temporary file of its own and ``os.replace``.

Peak memory is ``torch.cuda.max_memory_allocated`` of the cell when it trains in-process on CUDA;
otherwise the peak resident set size (``getrusage``'s ``ru_maxrss``): of the cell's own process
in a subprocess, or of the runner process so far (earlier cells included) in-process. The
``peak_memory_kind`` entry of the cell's state says which.

In W&B every cell of a spec is in the spec's group (``mm.experiments.spec.runner_overrides``) and
is tagged by ``tag_cells``: the spec's name and ``key=value`` of each value that names the cell,
so the runs table filters by them; the overrides themselves are config keys of the run. W&B
tags label a run and change nothing it computes: a cell done with other tags stays done.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mm.config import Config, ConfigError, load_config, to_yaml
from mm.experiments.spec import ROOT, Cell, label_value
from mm.run.options import RunOptions
from mm.run.runtime import pick_device

if TYPE_CHECKING:
    from mm.tracking import Tracker

Describe = Callable[[Cell, Path, float], str]  # (cell, run_dir, seconds) -> the text of its "done" line
_LIVE: set[subprocess.Popen] = set()  # subprocess cells, terminated on an interrupt
STATE = "state.json"
SHARDS = "shards"  # shards/<i>-of-<n>/: a shard's own state file (and partial reports)
MAX_TAG = 64  # W&B refuses longer tags


def write_atomic(path: Path, text: str) -> None:
    """Writes ``path`` via a temporary file and ``os.replace``: never half-written.

    The temporary name is unique, so processes on several machines may write the same file.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def state_files(out_dir: Path) -> list[Path]:
    """The state files of an output folder: ``state.json``, then each shard's, in name order."""
    return [p for p in [out_dir / STATE, *sorted((out_dir / SHARDS).glob(f"*/{STATE}"))] if p.is_file()]


def read_states(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every cell entry recorded in ``out_dir``'s state files; a ``done`` entry wins over the others."""
    merged: dict[str, dict[str, Any]] = {}
    for path in state_files(out_dir):
        for name, entry in json.loads(path.read_text())["cells"].items():
            done_before = name in merged and merged[name]["status"] == "done"
            if name not in merged or (entry["status"] == "done" and not done_before):
                merged[name] = entry
    return merged


def is_done(entry: dict[str, Any], cell: Cell) -> bool:
    """Whether a state entry is done, with its results.json, and trained with the config the cell has now.

    W&B tags aside: they label the run and change nothing it computes.
    """
    run_dir = Path(entry["run_dir"] or "")
    if entry["status"] != "done" or not (run_dir / "results.json").is_file():
        return False
    try:
        return _untagged(load_config(run_dir / "config.yaml")) == _untagged(cell.cfg)
    except ConfigError:
        return False


def _untagged(cfg: Config) -> Config:
    cfg = copy.deepcopy(cfg)
    cfg.wandb.tags = []
    return cfg


def cell_tags(spec_name: str, values: dict[str, Any]) -> list[str]:
    """The W&B tags of a cell besides the config's own: the spec's name, ``key=value`` per value that
    names the cell (``strategy=frozen``, ``point=linear_probe``, ``fraction=0.1``); one longer than
    W&B's 64 characters keeps a prefix and a hash."""
    tags = [spec_name, *(f"{key}={label_value(value)}" for key, value in values.items())]
    return [t if len(t) <= MAX_TAG else f"{t[:MAX_TAG - 9]}~{hashlib.sha1(t.encode()).hexdigest()[:8]}" for t in tags]


def tag_cells(cells: list[Cell], spec_name: str) -> list[Cell]:
    """Appends ``cell_tags`` to each cell's ``wandb.tags``; returns the cells."""
    for cell in cells:
        cell.cfg.wandb.tags = [*cell.cfg.wandb.tags, *cell_tags(spec_name, cell.values)]
    return cells


def summary_config(cell: Cell, spec_name: str) -> Config:
    """A copy of a tagged cell's config for the spec's W&B summary run: the spec's tags, not the cell's."""
    cfg = copy.deepcopy(cell.cfg)
    own = len(cell_tags(spec_name, cell.values))  # appended last by tag_cells
    cfg.wandb.tags = [*cfg.wandb.tags[:len(cfg.wandb.tags) - own], spec_name]
    return cfg


def summary_charts(out_dir: Path, cfg: Config, group: str, job_type: str) -> Tracker:
    """The spec's W&B summary run (``reports.log_summary_run``, in ``out_dir/summary``), continued to log charts.

    A second segment of the same W&B run (its id is in ``out_dir/summary/wandb_id.txt``), as a
    resumed run's: offline, a second ``offline-run-*`` folder with the same id.
    """
    from mm.tracking import Tracker

    return Tracker(out_dir / "summary", {}, mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
                   group=group, name=f"{group}-summary", tags=cfg.wandb.tags, job_type=job_type, resume_step=0)


class State:
    """A state file: each cell's status (pending, running, done, failed), run_dir and error.

    Args:
        path: The file, written by this process only.
        cells: The cells it records.
        recorded: Entries of other state files (``read_states``): a cell that is not done in
            ``path`` but done there starts from that entry.
    """

    def __init__(self, path: Path, cells: list[Cell], recorded: dict[str, dict[str, Any]] | None = None) -> None:
        self.path = path
        own = json.loads(path.read_text())["cells"] if path.exists() else {}
        recorded = recorded or {}
        self.cells = {}
        for c in cells:
            entry = own.get(c.name, {"status": "pending", "run_dir": None, "error": None})
            if entry["status"] != "done" and recorded.get(c.name, {}).get("status") == "done":
                entry = recorded[c.name]
            self.cells[c.name] = dict(entry)
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    def update(self, name: str, **values: Any) -> None:
        """Sets entries of one cell's state and saves the file."""
        with self._lock:
            self.cells[name].update(values)
            self.save()

    def save(self) -> None:
        write_atomic(self.path, json.dumps({"cells": self.cells}, indent=2) + "\n")

    def is_done(self, cell: Cell) -> bool:
        """Done, with its results.json, and trained with the config the cell has now."""
        return is_done(self.cells[cell.name], cell)

    @property
    def failed(self) -> list[str]:
        return [name for name, entry in self.cells.items() if entry["status"] == "failed"]


def run_cells(cells: list[Cell], out_dir: Path, *, label: str, describe: Describe,
              measure: Callable[[Cell, Path], Any] | None = None, workers: int = 1, use_subprocess: bool = False,
              announce: bool = True, state_file: Path | None = None,
              log: Callable[[str], None] = print) -> tuple[State, list[str]]:
    """Trains the cells not yet done, in order; returns the final state and the names trained now.

    Args:
        cells: The cells to run (all of a spec, or a shard's); finished ones are skipped.
        out_dir: The output folder: state files, ``runs/``, and ``configs/`` and ``logs/`` of
            subprocess cells.
        label: The log prefix, ``[<label> i/n seconds]``.
        describe: The text after a finished cell's name in its ``done`` line.
        measure: Runs after a cell trained, in this process (e.g. the train error); an exception
            fails the cell.
        workers: Cells trained at once, each from its own thread.
        use_subprocess: Train each cell as ``python -m mm.experiments.cell`` (else ``mm.train.train``).
        announce: Also log each cell's start and the rerun of an interrupted one.
        state_file: This process's state file; default ``out_dir/state.json``.
        log: Where progress lines go.
    """
    state = State(state_file or out_dir / STATE, cells, read_states(out_dir))
    t0, total, trained = time.perf_counter(), len(cells), []
    lock, stopping = threading.Lock(), threading.Event()

    def say(i: int, text: str) -> None:
        with lock:
            log(f"[{label} {i}/{total} {time.perf_counter() - t0:7.1f}s] {text}")

    def run_one(i: int, cell: Cell) -> None:
        if stopping.is_set():
            return
        if state.is_done(cell):
            say(i, f"skip  {cell.name} (done)")
            return
        if announce and state.cells[cell.name]["status"] == "running":
            say(i, f"rerun {cell.name} (interrupted)")
        run_dir = out_dir / "runs" / cell.name
        shutil.rmtree(run_dir, ignore_errors=True)  # a partial run would make train() pick name-2
        state.update(cell.name, status="running", run_dir=str(run_dir), error=None)
        if announce:
            say(i, f"start {cell.name}")
        started = time.perf_counter()
        try:
            memory = run_subprocess(cell, out_dir) if use_subprocess else run_in_process(cell)
            if measure is not None:
                measure(cell, run_dir)
        except Exception as err:
            if stopping.is_set():
                return  # terminated by an interrupt: stays "running", rerun next time
            error = traceback.format_exception_only(err)[-1].strip()
            state.update(cell.name, status="failed", error=error)
            say(i, f"FAILED {cell.name}: {error}")
            return
        state.update(cell.name, status="done", **memory)
        trained.append(cell.name)
        say(i, f"done  {cell.name}  {describe(cell, run_dir, time.perf_counter() - started)}")

    if use_subprocess or workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(run_one, i, cell) for i, cell in enumerate(cells, 1)]
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
        for i, cell in enumerate(cells, 1):
            run_one(i, cell)
    return state, trained


def run_in_process(cell: Cell) -> dict[str, Any]:
    """Trains one cell with ``mm.train.train``, looked up when called; returns its peak memory."""
    import resource

    import torch

    import mm.train as mm_train

    cuda = pick_device(cell.cfg.train.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    mm_train.train(copy.deepcopy(cell.cfg), cell.options)
    if cuda:
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_memory_kind": "cuda_max_allocated"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_mb": rss_kb / 1024, "peak_memory_kind": "runner_peak_rss"}


def cell_command(config: Path, options: RunOptions) -> list[str]:
    """The command that trains one cell's config file in a fresh interpreter, with the cell's run options."""
    flags = [f"--out-dir={options.out_dir}", *(["--no-progress"] if not options.progress else []),
             *(["--no-plots"] if not options.plots else [])]
    return [sys.executable, "-m", "mm.experiments.cell", "--config", str(config), *flags]


def run_subprocess(cell: Cell, out_dir: Path) -> dict[str, Any]:
    """Trains one cell as ``python -m mm.experiments.cell --config <cell yaml>``; returns its peak RSS.

    The cell's config goes to ``out_dir/configs/<cell>.yaml`` and its output to ``out_dir/logs/<cell>.log``.

    Raises:
        RuntimeError: the process failed; the message is the last line of its output.
    """
    config = out_dir / "configs" / f"{cell.name}.yaml"
    log_file = out_dir / "logs" / f"{cell.name}.log"
    config.parent.mkdir(exist_ok=True)
    log_file.parent.mkdir(exist_ok=True)
    write_atomic(config, to_yaml(cell.cfg))
    # This checkout's mm first on the path, wherever the runner was started from.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    with log_file.open("w") as log:
        proc = subprocess.Popen(cell_command(config, cell.options), stdout=log, stderr=subprocess.STDOUT, env=env)
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
