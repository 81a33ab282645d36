"""What every benchmark row shares: where it ran, interleaved repetitions, ratios, one JSON per row.

A row compares contenders measured in the same process, interleaved (A B A B ...; the order is
the same in every repetition), and reports each contender's median and range and the median and
range of the ratios that name the row (``BENCHMARKING.md``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def environment() -> dict[str, Any]:
    """CPU model, cores, threads, library versions and the load average now (BENCHMARKING.md: say where)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version(), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of a contender's (or a ratio's) repetitions."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def interleave(contenders: dict[str, Callable[[int], dict[str, float]]], reps: int,
               log: Callable[[str], None] = print) -> dict[str, list[dict[str, float]]]:
    """Run each contender once per repetition, in order, ``reps`` times: A B C A B C ...

    Args:
        contenders: name -> function of the repetition index returning its measurements.
        reps: repetitions (at least 3 for a reported row).
    """
    results: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for rep in range(reps):
        for name, measure in contenders.items():
            start = time.perf_counter()
            results[name].append(measure(rep))
            log(f"  rep {rep} {name}: {fmt(results[name][-1])} ({time.perf_counter() - start:.1f} s)")
    return results


def ratios(results: dict[str, list[dict[str, float]]], key: str, num: str, den: str) -> list[float]:
    """Per repetition: ``results[num][rep][key] / results[den][rep][key]`` (the same repetition's pair)."""
    return [a[key] / b[key] for a, b in zip(results[num], results[den], strict=True)]


def row(name: str, command: str, results: dict[str, list[dict[str, float]]], ratio_defs: dict[str, list[float]],
        settings: dict[str, Any], notes: str = "", **extra: Any) -> dict[str, Any]:
    """One row: every repetition, each measurement's median and range, the ratios', and where it ran."""
    per = {c: {k: summary([r[k] for r in reps]) for k in reps[0]} for c, reps in results.items()}
    return {"row": name, "command": command, "settings": settings, "repetitions": results, "contenders": per,
            "ratios": {k: {**summary(v), "reps": v} for k, v in ratio_defs.items()}, "notes": notes,
            "env": environment(), **extra}


def write_row(out: Path, data: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{data['row']}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def command_line(argv: list[str]) -> str:
    """The command that reproduces a row: this suite's entry point with the given arguments."""
    return " ".join(["python scripts/bench/run.py", *argv]).strip()


def steady_rate(times: list[float], batch: int, skip: int) -> float:
    """Samples per second over the steps after the first ``skip`` (warm-up), from the times at which
    each step ended (``times[0]`` the start, then one per step)."""
    if len(times) <= skip + 1:
        raise ValueError(f"{len(times) - 1} steps: none left after skipping {skip}")
    return batch * (len(times) - 1 - skip) / (times[-1] - times[skip])


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
