"""The benchmark suite runs end to end on a tiny setting and writes its rows (timings are never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATIOS = {
    "loop_overhead": {"mm / hand-written loop", "whole run: mm / hand-written loop"},
    "hf_trainer": {"mm bucketed / HF default", "mm bucketed / HF group_by_length", "mm random / HF default",
                   "mm bucketed / mm random", "whole run: mm bucketed / HF default",
                   "whole run: mm bucketed / HF group_by_length"},
    "attention": {"text eager / sdpa (time)", "vit unfused / fused (time)"},
    "optimizer": {"default / fused (time)"},
    "finite_check": {"host check / device counters (time)"},
    "channels_last": {"cnn nchw / channels-last (time)", "vit nchw / channels-last (time)"},
}


def test_suite_runs_on_a_tiny_setting_and_writes_json_rows(tmp_path, mm_cache):
    proc = subprocess.run([sys.executable, "scripts/bench/run.py", "--tiny", "--reps", "1", "--threads", "1",
                           "--rows", "loop", "hf", "padding", "kernels", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(rows) == {*RATIOS, "padding"}
    for name, expected in RATIOS.items():
        row = rows[name]
        assert set(row["ratios"]) == expected and row["command"].startswith("python scripts/bench/run.py --tiny")
        assert all(len(r["reps"]) == 1 and r["min"] <= r["median"] <= r["max"] and r["median"] > 0
                   for r in row["ratios"].values())
        assert {"cpu", "cores", "torch", "load_avg"} <= set(row["env"])
    hf = rows["hf_trainer"]["repetitions"]
    assert set(hf) == {"mm", "mm_bucketed", "hf", "hf_grouped"}
    assert all(0 <= reps[0]["accuracy"] <= 1 for reps in hf.values())
    # Padding: exact shares of the synthetic captions; length grouping wastes less than random batches.
    text = rows["padding"]["shares"]["text"]
    assert text["mm pool 16"]["padding"]["median"] < text["random"]["padding"]["median"]
    assert "| loop_overhead | mm / hand-written loop |" in (tmp_path / "table.md").read_text()
