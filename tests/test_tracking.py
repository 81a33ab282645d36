"""Tests for mm.tracking: the JSONL log, offline W&B runs read back, mode resolution, failures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mm.tracking import Tracker, resolve_mode
from mm.wandb_offline import read_offline_history, read_records

# (step, metrics) as a training loop would log them: train rows, then val rows at the same step.
SCRIPT = [
    (0, {"train/loss": 2.5, "train/lr": 0.001}),
    (1, {"train/loss": 1.75, "train/lr": 0.002}),
    (1, {"val/loss": 1.5, "val/accuracy": 0.25, "epoch": 1}),
    (2, {"train/loss": 0.1 + 0.2, "train/lr": 1e-300}),
    (3, {"train/loss": 1 / 3, "train/grad_norm": 123456789.125}),
    (3, {"val/loss": 1.25, "val/accuracy": 0.625, "epoch": 2}),
]


@pytest.fixture(autouse=True, scope="module")
def offline_env(tmp_path_factory: pytest.TempPathFactory):
    """No API key, no netrc, and every W&B folder inside a temporary directory."""
    root = tmp_path_factory.mktemp("wandb_env")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE"):
            mp.delenv(name, raising=False)
        for name in (
            "WANDB_DIR",
            "WANDB_CACHE_DIR",
            "WANDB_CONFIG_DIR",
            "WANDB_DATA_DIR",
            "WANDB_ARTIFACT_DIR",
        ):
            mp.setenv(name, str(root / name.lower()))
        mp.setenv("HOME", str(root / "home"))
        mp.setenv("NETRC", str(root / "home" / ".netrc"))
        yield root


def run_script(tracker: Tracker, script=SCRIPT) -> None:
    for step, metrics in script:
        tracker.log(metrics, step=step)


def jsonl_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def as_history(rows: list[dict]) -> list[dict]:
    """metrics.jsonl rows as W&B history rows: the step is called global_step there."""
    return [{"global_step": row["step"], **{k: v for k, v in row.items() if k != "step"}} for row in rows]


def final_summary(wandb_dir: Path) -> dict:
    """The run summary, from the summary updates in the run's .wandb log."""
    (log_file,) = wandb_dir.glob("run-*.wandb")
    summary: dict = {}
    for record in read_records(log_file):
        if record["type"] == "summary":
            summary.update(record["summary"]["update"])
    return summary


def test_offline_history_equals_metrics_jsonl(tmp_path):
    with Tracker(tmp_path, {"lr": 0.001, "model": {"dim": 8}}, mode="offline", tags=["test"]) as tracker:
        run_script(tracker)
        assert tracker.mode == "offline"
        wandb_dir = tracker.wandb_dir

    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    assert wandb_dir.parent == tmp_path / "wandb"
    assert wandb_dir.name.startswith("offline-run-") and wandb_dir.name.endswith(run_id)
    assert jsonl_rows(tmp_path) == [{"step": step, **metrics} for step, metrics in SCRIPT]
    assert read_offline_history(tmp_path) == as_history(jsonl_rows(tmp_path))


def test_offline_summary_keeps_val_extremes_and_explicit_values(tmp_path):
    with Tracker(tmp_path, {}, mode="offline") as tracker:
        run_script(tracker)
        tracker.summary({"best/val/accuracy": 0.625, "test/accuracy": 0.5})
        wandb_dir = tracker.wandb_dir

    summary = final_summary(wandb_dir)
    assert summary["val/loss"] == {"min": 1.25, "max": 1.5, "last": 1.25}
    assert summary["val/accuracy"] == {"min": 0.25, "max": 0.625, "last": 0.625}
    assert summary["train/loss"] == 1 / 3
    assert summary["best/val/accuracy"] == 0.625
    assert summary["test/accuracy"] == 0.5


def test_non_finite_values_read_back_as_floats(tmp_path):
    with Tracker(tmp_path, {}, mode="offline") as tracker:
        tracker.log({"train/loss": math.nan, "train/grad_norm": math.inf, "train/x": -math.inf}, step=7)

    (row,) = read_offline_history(tmp_path)
    assert row["global_step"] == 7
    assert math.isnan(row["train/loss"])
    assert row["train/grad_norm"] == math.inf and row["train/x"] == -math.inf


def test_media_rows_reach_wandb_but_not_jsonl(tmp_path):
    png = tmp_path / "plot.png"
    Image.new("RGB", (4, 3), color=(255, 0, 0)).save(png)
    with Tracker(tmp_path / "run", {}, mode="offline") as tracker:
        tracker.log({"train/loss": 1.0}, step=0)
        tracker.log_image("curves/learning", png, step=0)
        tracker.log_table("ablation", ["modalities", "accuracy"], [["text", 0.5], ["text,image", 0.75]])

    history = read_offline_history(tmp_path / "run")
    # W&B fills in the last global_step for rows logged without one (step_sync).
    assert [row["global_step"] for row in history] == [0, 0, 0]
    # wandb-core lists nested values, such as media, under dotted keys.
    assert history[0] == {"global_step": 0, "train/loss": 1.0}
    assert (history[1]["curves/learning._type"], history[1]["curves/learning.width"]) == ("image-file", 4)
    assert (history[2]["ablation._type"], history[2]["ablation.nrows"]) == ("table-file", 2)
    assert jsonl_rows(tmp_path / "run") == [{"step": 0, "train/loss": 1.0}]


def test_resume_truncates_jsonl_and_continues_the_same_run(tmp_path):
    with Tracker(tmp_path, {}, mode="offline") as first:
        for step in range(6):
            first.log({"train/loss": float(step)}, step=step)
    run_id = (tmp_path / "wandb_id.txt").read_text()

    with Tracker(tmp_path, {}, mode="offline", resume_step=3) as resumed:
        assert jsonl_rows(tmp_path) == [{"step": step, "train/loss": float(step)} for step in range(4)]
        resumed.log({"train/loss": 40.0}, step=4)
        resumed.log({"train/loss": 50.0}, step=5)

    assert (tmp_path / "wandb_id.txt").read_text() == run_id
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id.strip()}*"))) == 2
    assert jsonl_rows(tmp_path) == [
        {"step": 0, "train/loss": 0.0},
        {"step": 1, "train/loss": 1.0},
        {"step": 2, "train/loss": 2.0},
        {"step": 3, "train/loss": 3.0},
        {"step": 4, "train/loss": 40.0},
        {"step": 5, "train/loss": 50.0},
    ]
    # W&B keeps what each segment logged, in the order the segments ran.
    assert [(row["global_step"], row["train/loss"]) for row in read_offline_history(tmp_path)] == [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 4.0),
        (5, 5.0),
        (4, 40.0),
        (5, 50.0),
    ]


def test_fresh_run_in_used_folder_starts_over_with_a_new_id(tmp_path):
    with Tracker(tmp_path, {}, mode="offline") as first:
        first.log({"train/loss": 1.0}, step=0)
    first_id = (tmp_path / "wandb_id.txt").read_text()

    with Tracker(tmp_path, {}, mode="offline") as second:
        second.log({"train/loss": 2.0}, step=0)

    assert (tmp_path / "wandb_id.txt").read_text() != first_id
    assert jsonl_rows(tmp_path) == [{"step": 0, "train/loss": 2.0}]
    # Only the run named in wandb_id.txt is read back.
    assert read_offline_history(tmp_path) == [{"global_step": 0, "train/loss": 2.0}]


def test_a_run_left_open_does_not_capture_the_next_tracker(tmp_path):
    left_open = Tracker(tmp_path / "crashed", {}, mode="offline")
    left_open.log({"train/loss": 9.0}, step=0)
    with Tracker(tmp_path / "next", {}, mode="offline") as tracker:
        tracker.log({"train/loss": 1.0}, step=0)
    left_open.finish()

    assert tracker.wandb_dir != left_open.wandb_dir
    assert read_offline_history(tmp_path / "next") == [{"global_step": 0, "train/loss": 1.0}]
    assert read_offline_history(tmp_path / "crashed") == [{"global_step": 0, "train/loss": 9.0}]


def test_resume_drops_a_line_cut_short_by_a_crash(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "a": 1}\n{"step": 1, "a": 2}\n{"step": 2, "a"')
    with Tracker(tmp_path, {}, mode="disabled", resume_step=5) as tracker:
        tracker.log({"a": 3}, step=6)
    assert jsonl_rows(tmp_path) == [{"step": 0, "a": 1}, {"step": 1, "a": 2}, {"step": 6, "a": 3}]


def test_disabled_writes_jsonl_and_no_wandb_files(tmp_path):
    with Tracker(tmp_path, {"lr": 0.1}, mode="disabled") as tracker:
        run_script(tracker)
        tracker.summary({"best/val/accuracy": 0.625})
        tracker.log_table("t", ["a"], [[1]])
        assert tracker.mode == "disabled" and tracker.wandb_dir is None

    assert jsonl_rows(tmp_path) == [{"step": step, **metrics} for step, metrics in SCRIPT]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_module_and_disabled_tracker_do_not_import_wandb(tmp_path):
    code = (
        "import sys; from mm.tracking import Tracker; "
        f"Tracker({str(tmp_path)!r}, {{}}, mode='disabled').finish(); "
        "print('wandb' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "False"


def test_numpy_values_are_logged_as_plain_numbers(tmp_path):
    with Tracker(tmp_path, {}, mode="disabled") as tracker:
        tracker.log(
            {"train/loss": np.array(0.5), "train/acc": np.float32(0.25), "n": np.int64(7)},
            step=np.int64(3),
        )
    assert (
        tmp_path / "metrics.jsonl"
    ).read_text() == '{"step": 3, "train/loss": 0.5, "train/acc": 0.25, "n": 7}\n'


def test_finish_is_idempotent_and_log_after_finish_raises(tmp_path):
    tracker = Tracker(tmp_path, {}, mode="disabled")
    tracker.log({"a": 1.0}, step=0)
    tracker.finish()
    tracker.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        tracker.log({"a": 2.0}, step=1)
    assert jsonl_rows(tmp_path) == [{"step": 0, "a": 1.0}]


def test_reserved_metric_names_are_rejected(tmp_path):
    with Tracker(tmp_path, {}, mode="disabled") as tracker, pytest.raises(ValueError, match="global_step"):
        tracker.log({"global_step": 1.0}, step=1)


def test_context_manager_marks_a_failed_run(tmp_path):
    with pytest.raises(KeyError), Tracker(tmp_path, {}, mode="offline") as tracker:
        tracker.log({"a": 1.0}, step=0)
        raise KeyError("boom")
    (log_file,) = tracker.wandb_dir.glob("run-*.wandb")
    exits = [r["exit"] for r in read_records(log_file) if r["type"] == "exit"]
    assert exits == [{"exit_code": 1}]


def test_online_init_failure_falls_back_to_offline(tmp_path, monkeypatch):
    import wandb

    real_init = wandb.init

    def init_offline_only(*args, **kwargs):
        if kwargs["mode"] == "online":
            raise TimeoutError("no network")
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", init_offline_only)
    with pytest.warns(RuntimeWarning, match="could not start online"):
        tracker = Tracker(tmp_path, {}, mode="online")
    with tracker:
        assert tracker.mode == "offline"
        run_script(tracker)
    assert read_offline_history(tmp_path) == as_history(jsonl_rows(tmp_path))


def test_init_failure_disables_wandb_and_keeps_jsonl(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb is broken")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning) as caught, Tracker(tmp_path, {}, mode="online") as tracker:
        run_script(tracker)
        tracker.summary({"best/val/accuracy": 0.625})
        assert tracker.mode == "disabled" and tracker.wandb_dir is None
    assert [str(w.message).split(" (")[0] for w in caught] == ["W&B could not start online", "W&B failed"]
    assert jsonl_rows(tmp_path) == [{"step": step, **metrics} for step, metrics in SCRIPT]
    assert not (tmp_path / "wandb").exists()


def test_later_wandb_failure_warns_once_and_jsonl_continues(tmp_path):
    import wandb

    def broken_log(self, *args, **kwargs):
        raise OSError("disk full")

    tracker = Tracker(tmp_path, {}, mode="offline")
    run_script(tracker, SCRIPT[:1])
    with pytest.MonkeyPatch.context() as mp, pytest.warns(RuntimeWarning) as caught:
        mp.setattr(wandb.Run, "log", broken_log)
        run_script(tracker, SCRIPT[1:])
        assert tracker.mode == "disabled"
    tracker.finish()

    assert len(caught) == 1 and "disk full" in str(caught[0].message)
    assert jsonl_rows(tmp_path) == [{"step": step, **metrics} for step, metrics in SCRIPT]
    assert read_offline_history(tmp_path) == as_history(jsonl_rows(tmp_path))[:1]


def test_resolve_mode_auto_without_key_is_offline():
    assert resolve_mode("auto") == "offline"


def test_resolve_mode_auto_with_api_key_is_online(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"


@pytest.mark.parametrize(
    ("machine", "base_url", "expected"),
    [
        ("api.wandb.ai", None, "online"),
        ("example.org", None, "offline"),
        ("wandb.internal:8080", "http://wandb.internal:8080", "online"),
        ("api.wandb.ai", "http://wandb.internal:8080", "offline"),
    ],
)
def test_resolve_mode_auto_reads_netrc_for_the_host(tmp_path, monkeypatch, machine, base_url, expected):
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text(f"machine {machine}\n  login user\n  password {'k' * 40}\n")
    monkeypatch.setenv("NETRC", str(netrc_file))
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    assert resolve_mode("auto") == expected


@pytest.mark.parametrize(
    ("env", "expected"), [("disabled", "disabled"), ("dryrun", "offline"), ("online", "online")]
)
def test_resolve_mode_auto_follows_wandb_mode(monkeypatch, env, expected):
    monkeypatch.setenv("WANDB_MODE", env)
    assert resolve_mode("auto") == expected


def test_resolve_mode_explicit_wins_over_environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert [resolve_mode(m) for m in ("online", "offline", "disabled")] == ["online", "offline", "disabled"]


def test_resolve_mode_rejects_unknown_values(monkeypatch):
    with pytest.raises(ValueError, match="valid modes: auto, online, offline, disabled"):
        resolve_mode("dryrun")
    monkeypatch.setenv("WANDB_MODE", "cloud")
    with pytest.raises(ValueError, match="WANDB_MODE='cloud'.*online, run, offline, dryrun, disabled"):
        resolve_mode("auto")


def test_offline_run_makes_no_network_lookup(tmp_path):
    # In a fresh process, as wandb's own telemetry would otherwise look up its server at exit.
    code = f"""
import socket
def refuse(host, *args, **kwargs):
    with open({str(tmp_path / "lookups.txt")!r}, "a") as f:
        f.write(str(host) + "\\n")
    raise OSError("no network in this test")
socket.getaddrinfo = refuse
from mm.tracking import Tracker
with Tracker({str(tmp_path / "run")!r}, {{}}, mode="offline") as tracker:
    tracker.log({{"train/loss": 1.0}}, step=0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert not (tmp_path / "lookups.txt").exists()
