"""W&B with a key and no server: the tracker falls back to offline at once, with a fresh run id.

Each case runs the tracker in a fresh process, as a training run would: wandb reads its environment
(``WANDB_BASE_URL``, ``WANDB_MODE``, the API key) once per process, so only a new process sees the
environment a test sets. The dead network is real: ``WANDB_BASE_URL`` points at a local port that
refuses connections, or at a local HTTP server that refuses the key.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mm.tracking import ID_FILE, ONLINE_INIT_TIMEOUT_S, probe_server
from mm.wandb_offline import read_offline_history, read_records

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY = "0123456789abcdef" * 2 + "01234567"  # 40 characters, like a real W&B key
ROWS = [(0, {"train/loss": 2.5}), (1, {"train/loss": 1.25}), (1, {"val/accuracy": 0.625})]

# Starts a tracker as train() does (mode "auto"), logs ROWS and reports what happened as JSON.
CHILD = """
import json, os, sys, time, warnings
from mm.tracking import Tracker

run_dir, rows = sys.argv[1], json.loads(sys.argv[2])
start = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tracker = Tracker(run_dir, {"lr": 0.001})
start_s = time.perf_counter() - start
with tracker:
    for step, metrics in rows:
        tracker.log(metrics, step=step)
print(json.dumps({"mode": tracker.mode, "start_s": start_s, "warnings": [str(w.message) for w in caught],
                  "wandb_dir": str(tracker.wandb_dir), "WANDB_MODE": os.environ.get("WANDB_MODE")}))
"""


def run_tracker(run_dir: Path, home: Path, **env: str) -> dict:
    """Runs CHILD with every W&B folder under ``home`` and ``env`` on top; returns its report."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    folders = {name: str(home / name.lower()) for name in
               ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")}
    full_env = {**base, **folders, "HOME": str(home), "NETRC": str(home / ".netrc"), **env}
    done = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), json.dumps(ROWS)], capture_output=True,
                          text=True, cwd=ROOT, env=full_env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def logged_rows() -> list[dict]:
    """ROWS as W&B history rows."""
    return [{"global_step": step, **metrics} for step, metrics in ROWS]


def offline_run_id(wandb_dir: Path) -> str:
    (log_file,) = wandb_dir.glob("run-*.wandb")
    return next(r["run"]["run_id"] for r in read_records(log_file) if r["type"] == "run")


def closed_port() -> int:
    """A local port with nothing listening on it (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def key_refusing_server() -> Iterator[str]:
    """A local HTTP server that answers every request with 401, like W&B for a wrong key."""

    class Refuse(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errors": [{"message": "invalid api key"}]}')

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_dead_network_falls_back_to_offline_without_waiting(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    report = run_tracker(tmp_path / "run", tmp_path / "home", WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=url)
    assert report["mode"] == "offline"
    assert report["warnings"] == [
        f"W&B could not start online (ConnectionError(\"no connection to {url}: ConnectionRefusedError(111, "
        f"'Connection refused')\")); logging offline under {tmp_path / 'run' / 'wandb'}"]
    # Never the online init timeout: the refused connection is the answer (about 1.5 s measured,
    # most of it wandb-core starting; it was 31 s and then no W&B at all).
    assert report["start_s"] < ONLINE_INIT_TIMEOUT_S / 2
    assert read_offline_history(tmp_path / "run") == logged_rows()


def test_server_refusing_the_key_falls_back_to_offline_with_a_fresh_run_id(tmp_path, key_refusing_server):
    report = run_tracker(tmp_path / "run", tmp_path / "home", WANDB_API_KEY=FAKE_KEY,
                         WANDB_BASE_URL=key_refusing_server)
    assert report["mode"] == "offline"
    (warning,) = report["warnings"]
    assert warning.startswith("W&B could not start online (CommError(") and "401" in warning
    # The online attempt used one id; the offline run has another, which wandb_id.txt names.
    online_id = warning.split("resume status for run ")[1].split(":")[0]
    offline_id = offline_run_id(Path(report["wandb_dir"]))
    assert offline_id != online_id
    assert (tmp_path / "run" / ID_FILE).read_text().strip() == offline_id
    assert read_offline_history(tmp_path / "run") == logged_rows()


def test_empty_wandb_mode_counts_as_unset(tmp_path):
    report = run_tracker(tmp_path / "run", tmp_path / "home", WANDB_MODE="")
    assert (report["mode"], report["warnings"], report["WANDB_MODE"]) == ("offline", [], None)
    assert read_offline_history(tmp_path / "run") == logged_rows()


def test_probe_answers_for_an_open_a_closed_and_a_hanging_address(monkeypatch):
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert probe_server(f"http://127.0.0.1:{listening.getsockname()[1]}") is None
    port = closed_port()
    assert probe_server(f"http://127.0.0.1:{port}") == "ConnectionRefusedError(111, 'Connection refused')"
    assert probe_server("not a url") is None  # nothing to probe: wandb decides
    # A name lookup that never returns (no DNS server answering) is given up on at the timeout.
    never = threading.Event()

    def hang(*args: object, **kwargs: object) -> socket.socket:
        never.wait()
        raise OSError("released by the test")

    monkeypatch.setattr(socket, "create_connection", hang)
    assert probe_server("https://api.wandb.ai", timeout=0.2) == "no answer within 0.2 s"
    never.set()
