"""Reads back what W&B wrote offline, for tests: no server here, so the run files are the record.

The ``.wandb`` transaction logs are decoded by wandb's own reader (``wandb-core leet inspect
--json``; wandb 0.31 has no Python reader left).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from mm.tracking import ID_FILE

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


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
    run_dir = Path(run_dir)
    id_file = run_dir / ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else None
    segments: list[tuple[datetime, list[dict]]] = []
    for log_file in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        records = read_records(log_file)
        run = next((record["run"] for record in records if record["type"] == "run"), None)
        if run is None or (run_id is not None and run["run_id"] != run_id):
            continue
        rows = [_history_row(record["history"]["item"]) for record in records if record["type"] == "history"]
        segments.append((datetime.fromisoformat(run["start_time"]), rows))
    segments.sort(key=lambda segment: segment[0])
    return [row for _, rows in segments for row in rows]


def read_records(log_file: Path) -> list[dict]:
    """The records of one ``.wandb`` file, as wandb-core prints them in JSON."""
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
