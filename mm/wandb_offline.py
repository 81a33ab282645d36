"""Reading back what W&B wrote offline: no server here, so the run files are the record.

The ``.wandb`` transaction logs are decoded by wandb's own reader (``wandb-core leet inspect
--json``; wandb 0.31 has no Python reader left). The tests read what a run logged with it, and
``scripts/plot_wandb_workspace.py`` draws a workspace from it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from mm.tracking import ID_FILE

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_HEADER_BYTES = 7  # what wandb-core writes first: a log no larger has no records yet


def read_offline_history(run_dir: Path) -> list[dict]:
    """Reads back the history rows W&B wrote offline under ``run_dir/wandb``.

    Runs are read in the order they started, keeping only the run id in ``run_dir/wandb_id.txt``
    when that file exists. A resumed run reads back everything each segment logged, also the
    steps that the resumed ``metrics.jsonl`` dropped.

    Returns:
        One dict per W&B history row with the logged keys (W&B's own ``_step``, ``_runtime``
        and ``_timestamp`` left out). wandb-core lists nested values, such as the dict W&B keeps
        for an image or a table, under dotted keys (``plot._type``). The strings ``"NaN"``,
        ``"Infinity"`` and ``"-Infinity"`` come back as floats, as that is how wandb-core
        writes non-finite values.
    """
    return read_offline_run(run_dir)["history"]


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """Everything W&B wrote offline for the run that ``read_offline_history`` reads, segments merged.

    Returns:
        ``{"runs", "history", "config", "summary", "artifacts", "tables"}``: the run record of each
        segment (group, tags, job type, display name, config at start), in the order they started;
        the history rows (as ``read_offline_history`` gives them); the config and summary updates
        logged later, merged (wandb-core names nested keys with dots, e.g.
        ``_wandb.visualize.<chart key>``, a custom chart's spec); the artifact records; and each
        table logged, by its history key, read from the segment's files as ``{"columns", "data"}``
        (the last one logged under a key wins).
    """
    out: dict[str, Any] = {"runs": [], "history": [], "config": {}, "summary": {}, "artifacts": [], "tables": {}}
    for folder, records in _segments(run_dir):
        for record in records:
            kind = record["type"]
            if kind == "run":
                out["runs"].append(record["run"])
            elif kind in ("config", "summary"):
                out[kind].update(record[kind]["update"])
            elif kind == "artifact":
                out["artifacts"].append(record["artifact"])
            elif kind == "history":
                item = record["history"]["item"]
                out["history"].append(_history_row(item))
                for key in (k[: -len("._type")] for k, v in item.items() if k.endswith("._type") and v == "table-file"):
                    out["tables"][key] = json.loads((folder / "files" / item[f"{key}.path"]).read_text())
    return out


def _segments(run_dir: Path) -> list[tuple[Path, list[dict]]]:
    """(folder, records) of each offline segment of the run named in ``run_dir/wandb_id.txt`` (any
    run when the file is missing), in the order the segments started."""
    run_dir = Path(run_dir)
    id_file = run_dir / ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else None
    segments: list[tuple[datetime, Path, list[dict]]] = []
    for log_file in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        records = read_records(log_file)
        run = next((record["run"] for record in records if record["type"] == "run"), None)
        if run is None or (run_id is not None and run["run_id"] != run_id):
            continue
        segments.append((datetime.fromisoformat(run["start_time"]), log_file.parent, records))
    segments.sort(key=lambda segment: segment[0])
    return [(folder, records) for _, folder, records in segments]


def read_records(log_file: Path, settle_s: float = 20.0) -> list[dict]:
    """The records of one ``.wandb`` file, as wandb-core prints them in JSON.

    wandb-core may still be writing the log when ``run.finish()`` has returned (seen under load:
    the header alone, the rest a second later), so a log without its exit record is read again
    until it has one, or has stopped growing for a second past its header (a run cut short never
    gets one), or ``settle_s`` have passed.
    """
    deadline = time.monotonic() + settle_s
    while True:
        size = log_file.stat().st_size
        records = _decode(log_file)
        if any(record["type"] == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(1.0)
        if size > _HEADER_BYTES and log_file.stat().st_size == size:
            return records


def _decode(log_file: Path) -> list[dict]:
    from wandb.util import get_core_path

    command = [
        get_core_path(),
        "leet",
        "inspect",
        "--no-observability",
        "--json",
        "--run-file",
        str(log_file),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wandb-core could not read {log_file}: {done.stderr.strip()}")
    if done.stderr:
        print(done.stderr.strip(), file=sys.stderr)  # e.g. the log of a run that was cut short
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _history_row(item: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _NON_FINITE.get(value, value) if isinstance(value, str) else value
        for key, value in item.items()
        if not key.startswith("_")
    }
