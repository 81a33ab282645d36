"""Running cells resumably: ``state.json``, in-process or ``python -m mm.experiments.cell`` subprocesses.

``run_cells`` is the one loop of grids and learning curves. A cell is skipped when it is
``done``, its ``results.json`` exists and its ``config.yaml`` equals the cell's config now; any
other cell (failed, interrupted, pending, or changed by an edit of the spec) reruns from a
deleted, clean run folder. An exception fails its cell and the others go on; a
KeyboardInterrupt stops the loop and leaves the cell ``running``, to be rerun next time.

Peak memory is ``torch.cuda.max_memory_allocated`` of the cell when it trains in-process on CUDA;
otherwise the peak resident set size (``getrusage``'s ``ru_maxrss``): of the cell's own process
in a subprocess, or of the runner process so far (earlier cells included) in-process. The
``peak_memory_kind`` entry of the cell's state says which.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from mm.config import ConfigError, load_config, to_yaml
from mm.experiments.spec import ROOT, Cell
from mm.runtime import pick_device

Describe = Callable[[Cell, Path, float], str]  # (cell, run_dir, seconds) -> the text of its "done" line
_LIVE: set[subprocess.Popen] = set()  # subprocess cells, terminated on an interrupt


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
        """Sets entries of one cell's state and saves the file."""
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

    @property
    def failed(self) -> list[str]:
        return [name for name, entry in self.cells.items() if entry["status"] == "failed"]


def run_cells(cells: list[Cell], out_dir: Path, *, label: str, describe: Describe,
              measure: Callable[[Cell, Path], Any] | None = None, workers: int = 1, use_subprocess: bool = False,
              announce: bool = True, log: Callable[[str], None] = print) -> tuple[State, list[str]]:
    """Trains the cells not yet done, in order; returns the final state and the names trained now.

    Args:
        cells: All cells of the spec; finished ones are skipped.
        out_dir: The output folder: ``state.json``, ``runs/``, and ``configs/`` and ``logs/`` of
            subprocess cells.
        label: The log prefix, ``[<label> i/n seconds]``.
        describe: The text after a finished cell's name in its ``done`` line.
        measure: Runs after a cell trained, in this process (e.g. the train error); an exception
            fails the cell.
        workers: Cells trained at once, each from its own thread.
        use_subprocess: Train each cell as ``python -m mm.experiments.cell`` (else ``mm.train.train``).
        announce: Also log each cell's start and the rerun of an interrupted one.
        log: Where progress lines go.
    """
    state = State(out_dir / "state.json", cells)
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
    mm_train.train(copy.deepcopy(cell.cfg))
    if cuda:
        return {"peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20, "peak_memory_kind": "cuda_max_allocated"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_mb": rss_kb / 1024, "peak_memory_kind": "runner_peak_rss"}


def cell_command(config: Path) -> list[str]:
    """The command that trains one cell's config file in a fresh interpreter."""
    return [sys.executable, "-m", "mm.experiments.cell", "--config", str(config)]


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
        proc = subprocess.Popen(cell_command(config), stdout=log, stderr=subprocess.STDOUT, env=env)
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
