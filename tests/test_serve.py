"""The inference server, as a real process on a free port, sent real HTTP requests.

One tiny text+image+audio run and one server process serve the whole module (the SIGTERM test
comes last and stops it). Every bad request is followed by a good one that must still succeed.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key"
AUTH = {"X-API-Key": KEY}
TOLERANCE = 1e-4  # probabilities: server (batched) vs scripts/predict.py's predict_rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, *flags: str, log: Path) -> tuple[subprocess.Popen, str]:
    """``scripts/serve.py run_dir`` on a free port, once ``/ready`` says 200."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "scripts/serve.py", str(run_dir), "--port", str(port), *flags],
                            cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/ready", timeout=10).status_code == 200:
                return proc, url
        except requests.RequestException:  # not listening yet, or (workers) still importing
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"server not ready in 300 s:\n{log.read_text()[-3000:]}")


def tiny_run() -> dict:
    """A tiny text+image+audio run trained once per test session (kept under ``$MM_CACHE``, which
    conftest makes per session), shared by this module and test_serve_browser.py."""
    import mm.train as mm_train
    from mm.config import load_config
    from mm.data import resolve_dataset
    from mm.data.manifest import read_manifest

    out = Path(os.environ["MM_CACHE"]) / "serve-runs"
    cfg = load_config(None, [
        "data.modalities=[text,image,audio]", "data.synthetic.n_train=64", "data.synthetic.n_val=16",
        "data.synthetic.n_test=16", "encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit",
        "encoders.audio.name=spectrogram", "encoders.audio.source=tiny-cnn", "train.max_steps=2",
        "wandb.mode=disabled",
    ])
    done = out / "run_dir.txt"
    if not done.is_file():
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(str(mm_train.train(cfg, mm_train.RunOptions(out_dir=str(out), progress=False))["run_dir"]))
    root, _ = resolve_dataset(cfg.data)
    return {"run_dir": Path(done.read_text()), "root": root, "rows": read_manifest(root / "test.jsonl")}


@pytest.fixture(scope="module")
def run():
    return tiny_run()


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    proc, url = start_server(run["run_dir"], "--api-key", KEY, "--max-queue", "4", "--timeout-s", "4",
                             "--max-upload-mb", "2", "--max-body-mb", "5", "--max-batch", "3",
                             "--max-wait-ms", "100", log=log)
    yield {"proc": proc, "url": url, "log": log}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def files_of(run, row: dict) -> dict:
    return {"image": ("pic.png", (run["root"] / row["image"]).read_bytes(), "image/png"),
            "audio": ("clip.wav", (run["root"] / row["audio"]).read_bytes(), "audio/wav")}


def good(server, run) -> dict:
    """A good request, which must succeed."""
    row = run["rows"][0]
    r = requests.post(f"{server['url']}/predict", data={"text": row["text"]}, files=files_of(run, row), headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def multipart(fields: dict[str, tuple[str | None, bytes]], boundary: str = "mmboundary") -> tuple[bytes, str]:
    """A multipart/form-data body by hand: ``{name: (filename or None, data)}``."""
    parts = []
    for name, (filename, data) in fields.items():
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class SlowUpload:
    """A /predict request sent by hand over a socket: headers and all but the tail of the body now,
    the tail on ``finish`` (an upload in flight meanwhile)."""

    def __init__(self, url: str, body: bytes, ctype: str, tail: int = 10) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\nX-API-Key: {KEY}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        self.sock.sendall(head + body[:-tail])
        self.tail = body[-tail:]

    def read(self) -> tuple[int, dict]:
        return read_response(self.sock)

    def finish(self) -> tuple[int, dict]:
        self.sock.sendall(self.tail)
        return self.read()


def post_huge(url: str, total: int, chunked: bool) -> tuple[int, dict]:
    """POST ``total`` bytes of a multipart image upload, stopping as soon as the server answers."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    sock.sendall((f"POST /predict HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {KEY}\r\n"
                  f"Content-Type: multipart/form-data; boundary=mmboundary\r\n{length}\r\n\r\n").encode())
    block = b'--mmboundary\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
    block += b"\x89PNG" + b"\0" * (2**20 - len(block) - 4)
    sent = 0
    while sent < total and not select.select([sock], [], [], 0)[0]:  # stop once an answer waits
        piece = block if sent == 0 else b"\0" * 2**20
        try:
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    return read_response(sock)


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the HTTP response waiting on ``sock`` (which is then closed)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = json.loads(response.read())
    sock.close()
    return response.status, body


# -- the API -----------------------------------------------------------------------------------------

def test_health_ready_info_docs_and_page(server, run):
    url = server["url"]
    assert requests.get(f"{url}/health", timeout=10).json() == {"status": "ok", "pid": server["proc"].pid}
    ready = requests.get(f"{url}/ready", timeout=10).json()
    assert ready["ready"] is True and ready["model"].startswith(run["run_dir"].name + "@")
    info = requests.get(f"{url}/info", headers=AUTH, timeout=10).json()
    assert (info["modalities"], info["files"], info["head"]) == (["audio", "image", "text"], ["audio", "image"], "classification")
    assert info["classes"] == json.loads((run["run_dir"] / "classes.json").read_text())
    assert info["limits"]["max_batch"] == 3 and info["limits"]["max_queue"] == 4
    spec = requests.get(f"{url}/openapi.json", timeout=10).json()
    form = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert sorted(form["properties"]) == ["audio", "image", "text"] and form["properties"]["image"]["format"] == "binary"
    assert {"/health", "/ready", "/info", "/predict"} <= set(spec["paths"])
    assert requests.get(f"{url}/docs", timeout=10).status_code == 200
    page = requests.get(f"{url}/", timeout=10)
    assert page.status_code == 200 and 'id="predict-form"' in page.text and 'id="contributions"' in page.text
    assert requests.get(f"{url}/page/app.js", timeout=10).status_code == 200


def test_batched_answers_equal_predict_py(server, run):
    """Four requests at once are batched (at most --max-batch 3) and answer as scripts/predict.py does."""
    from mm.predict import predict_rows

    rows = run["rows"][:4]
    expected = list(predict_rows(run["run_dir"], [{k: v for k, v in r.items() if k != "labels"} for r in rows], run["root"]))
    barrier, answers = threading.Barrier(len(rows)), [None] * len(rows)

    def send(i: int) -> None:
        barrier.wait()
        answers[i] = requests.post(f"{server['url']}/predict", data={"text": rows[i]["text"]},
                                   files=files_of(run, rows[i]), headers=AUTH, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sizes = []
    for r, want in zip(answers, expected, strict=True):
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["label"] == want["prediction"] and got["missing"] == []
        assert got["probabilities"].keys() == want["probabilities"].keys()
        for c, p in want["probabilities"].items():
            assert got["probabilities"][c] == pytest.approx(p, abs=TOLERANCE)
        assert got["model"].startswith(run["run_dir"].name + "@") and got["latency_ms"] > 0
        sizes.append(got["batch_size"])
    assert max(sizes) <= 3 and max(sizes) > 1, sizes  # batched, never past --max-batch


def test_a_missing_modality_is_the_learned_missing_embedding(server, run):
    from mm.predict import predict_rows

    row = run["rows"][1]
    r = requests.post(f"{server['url']}/predict", data={"text": row["text"]}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    want = next(predict_rows(run["run_dir"], [{"text": row["text"]}], run["root"]))
    assert r.json()["missing"] == ["audio", "image"] and r.json()["label"] == want["prediction"]
    for c, p in want["probabilities"].items():
        assert r.json()["probabilities"][c] == pytest.approx(p, abs=TOLERANCE)


def test_explain_answers_each_modality_exact_shapley_value(server, run):
    row = run["rows"][4]
    r = requests.post(f"{server['url']}/predict?explain=true", data={"text": row["text"]}, files=files_of(run, row),
                      headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    c = got["contributions"]
    assert sorted(c["modalities"]) == ["audio", "image", "text"]
    assert c["output"] == pytest.approx(got["probabilities"][got["label"]], abs=1e-5)
    # efficiency: the modalities' values add up to the change from all-missing to all-present
    assert sum(c["modalities"].values()) == pytest.approx(c["output"] - c["baseline"], abs=1e-5)
    plain = requests.post(f"{server['url']}/predict", data={"text": row["text"]}, files=files_of(run, row),
                          headers=AUTH, timeout=60).json()
    assert "contributions" not in plain and plain["probabilities"] == got["probabilities"]


# -- bad requests: each gets its 4xx with a message, and the server keeps serving ----------------------

def _png(run) -> bytes:
    return (run["root"] / run["rows"][0]["image"]).read_bytes()


BAD = {
    # name: (form fields as (filename, data) by name, or a callable of the run; status; words of the message)
    "corrupt picture": (lambda run: {"image": ("cut.png", _png(run)[:200])}, 422, "cannot be decoded as an image"),
    "not a picture": (lambda run: {"image": ("notes.png", b"just some text, not a picture")}, 422, "cannot be decoded as an image"),
    "not audio": (lambda run: {"audio": ("clip.wav", _png(run))}, 422, "cannot be decoded as audio"),
    "empty upload": (lambda run: {"image": ("empty.png", b"")}, 422, "upload 'empty.png' is empty"),
    "file over --max-upload-mb": (lambda run: {"image": ("big.png", b"\0" * (3 * 2**20))}, 413, "over the limit of 2.0 MB"),
    "unknown field": (lambda run: {"text": (None, b"hi"), "colour": (None, b"red")}, 422, "unknown field(s) ['colour']"),
    "no input": (lambda run: {}, 422, "no input: send at least one of audio, image, text"),
    "a server path instead of a file": (lambda run: {"image": (None, b"/etc/passwd")}, 422, "the server reads no paths"),
    "a file as the text": (lambda run: {"text": ("t.txt", b"hello")}, 422, "text must be a text field"),
    "empty text": (lambda run: {"text": (None, b"   ")}, 422, "text is empty"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_upload_is_refused_and_the_server_keeps_serving(server, run, case):
    build, status, words = BAD[case]
    body, ctype = multipart(build(run))
    r = requests.post(f"{server['url']}/predict", data=body, headers={**AUTH, "Content-Type": ctype}, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert "/tmp" not in r.json()["detail"]  # no server path goes back to the client
    good(server, run)


def test_malformed_requests_are_refused(server, run):
    url = f"{server['url']}/predict"
    twice = b"".join(multipart({"text": (None, b"a")})[0].rsplit(b"--mmboundary--", 1)[0] for _ in range(2))
    cases = [
        ({**AUTH, "Content-Type": "application/json"}, b'{"text": "hi"}', 415, "send multipart/form-data"),
        ({**AUTH, "Content-Type": "multipart/form-data; boundary=mmboundary"}, b"garbage", 400, "multipart"),
        ({**AUTH, "Content-Type": "multipart/form-data; boundary=mmboundary"}, twice + b"--mmboundary--\r\n", 422,
         "given more than once"),
        ({**AUTH, "Content-Type": "multipart/form-data; boundary=mmboundary"},
         multipart({"text": (None, b"x" * 20_000)})[0], 422, "over the limit of 10000"),
        ({"Content-Type": "multipart/form-data; boundary=mmboundary"}, multipart({"text": (None, b"hi")})[0], 401, "API key"),
        ({"X-API-Key": "wrong", "Content-Type": "multipart/form-data; boundary=mmboundary"},
         multipart({"text": (None, b"hi")})[0], 401, "API key"),
    ]
    for headers, body, status, words in cases:
        r = requests.post(url, data=body, headers=headers, timeout=60)
        assert r.status_code == status and words in r.text, (status, r.status_code, r.text)
        good(server, run)
    assert requests.get(f"{server['url']}/info", timeout=10).status_code == 401
    r = requests.get(f"{server['url']}/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_100_mb_upload_is_refused_before_it_is_read(server, run, chunked):
    status, body = post_huge(server["url"], 100 * 2**20, chunked)
    assert status == 413 and "over the limit of 5242880" in body["detail"]
    good(server, run)


def test_full_queue_answers_503_at_once_then_recovers(server, run):
    """--max-queue 4: four uploads in flight fill it; a fifth request is refused at once."""
    row = run["rows"][2]
    body, ctype = multipart({"text": (None, row["text"].encode()), "image": ("p.png", _png(run))})
    held = [SlowUpload(server["url"], body, ctype) for _ in range(4)]
    deadline = time.monotonic() + 30
    while requests.get(f"{server['url']}/info", headers=AUTH, timeout=10).json()["in_flight"] < 4:
        assert time.monotonic() < deadline, "the slow uploads were never admitted"
        time.sleep(0.05)
    start = time.monotonic()
    r = requests.post(f"{server['url']}/predict", data={"text": "hi"}, headers=AUTH, timeout=60)
    assert r.status_code == 503 and "server busy: 4 requests in flight" in r.json()["detail"]
    assert r.headers["Retry-After"] == "1" and time.monotonic() - start < 2
    answers = [h.finish() for h in held]
    assert [s for s, _ in answers] == [200] * 4
    assert len({a["label"] for _, a in answers}) == 1  # the same sample four times
    good(server, run)


def test_a_request_past_the_timeout_gets_504(server, run):
    body, ctype = multipart({"text": (None, b"a stalled upload")})
    stalled = SlowUpload(server["url"], body, ctype)  # never finished: the handler waits for the body
    status, answer = stalled.read()
    assert status == 504 and "took longer than 4.0 s" in answer["detail"]
    good(server, run)


def test_bad_model_folder_or_flag_is_a_usage_error(tmp_path, capsys):
    import serve

    with pytest.raises(SystemExit) as exit_:
        serve.main([str(tmp_path / "nope")])
    assert exit_.value.code == 2 and "no such run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        serve.main([str(tmp_path), "--max-batch", "0"])
    assert exit_.value.code == 2 and "max-batch must be at least 1, got 0" in capsys.readouterr().err
    assert serve.main([str(tmp_path)]) == 2
    assert "neither an mm run folder (config.yaml) nor an export folder" in capsys.readouterr().err


# -- last: SIGTERM stops the module's server ---------------------------------------------------------

def test_sigterm_finishes_the_request_in_flight_and_exits_0(server, run):
    row = run["rows"][3]
    body, ctype = multipart({"text": (None, row["text"].encode()), "image": ("p.png", _png(run))})
    inflight = SlowUpload(server["url"], body, ctype)
    time.sleep(0.3)
    server["proc"].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while True:  # the listening socket closes: new connections are refused
        try:
            requests.get(f"{server['url']}/health", timeout=2)
        except requests.ConnectionError:
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.1)
    assert server["proc"].poll() is None  # still finishing the upload in flight
    status, answer = inflight.finish()
    assert status == 200 and answer["label"] in answer["probabilities"]
    assert server["proc"].wait(timeout=60) == 0
    assert "SIGTERM: finishing the requests in flight" in server["log"].read_text()


@pytest.mark.slow
def test_two_workers_share_one_port_and_stop_together(run, tmp_path):
    """--workers 2: two processes, each with the model, answer on one port; SIGTERM stops both, exit 0."""
    proc, url = start_server(run["run_dir"], "--workers", "2", "--require-all", "--api-key", KEY, log=tmp_path / "log")
    try:
        pids = set()
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:
            with requests.Session() as fresh:  # a new connection each time: the kernel picks a worker
                if fresh.get(f"{url}/ready", timeout=60).status_code == 200:
                    pids.add(fresh.get(f"{url}/health", timeout=60).json()["pid"])
        assert len(pids) == 2 and proc.pid not in pids
        row = run["rows"][0]
        r = requests.post(f"{url}/predict", data={"text": row["text"]}, headers=AUTH, timeout=60)
        assert r.status_code == 422 and "missing required field(s) ['audio', 'image']" in r.json()["detail"]
        r = requests.post(f"{url}/predict", data={"text": row["text"]}, files=files_of(run, row), headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_load_bench_runs_on_a_tiny_setting(run, tmp_path):
    """scripts/bench/serve_load.py end to end, seconds long: its JSON holds every part (no timing asserted)."""
    proc = subprocess.run([sys.executable, "scripts/bench/serve_load.py", str(run["run_dir"]), "--clients", "1", "2",
                           "--requests", "3", "--reps", "1", "--rate", "2", "--sustain-s", "6", "--overload-s", "2",
                           "--recover-s", "2", "--threads", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "serve_load.json").read_text())
    assert set(result["load"]) == {"1", "2"} and result["exit_codes"] == [0, 0] and result["alive_after_overload"]
    for row in result["load"].values():
        assert set(row["contenders"]) == {"served_batched", "served_unbatched", "inprocess_per_request"}
        assert all(c["errors"] == 0 for c in row["contenders"].values())
    assert set(result["sustained"]["statuses"]) == {"200"} and set(result["recovery"]["statuses"]) == {"200"}
    assert set(result["overload"]["statuses"]) <= {"200", "503"}
    assert result["cold_start_s"]["served_batched"] > 0 and len(result["sustained"]["rss_mb"]) >= 2


@pytest.mark.slow
def test_an_export_folder_is_served_with_the_same_answers(run, tmp_path):
    """scripts/serve.py EXPORT (ONNX Runtime through mm.serve.bundle): the answers of predict.py."""
    from mm.predict import predict_rows
    from mm.serve.export import export_model

    export_model(run["run_dir"], tmp_path / "export")
    proc, url = start_server(tmp_path / "export", log=tmp_path / "log")
    try:
        rows = run["rows"][:3]
        expected = predict_rows(run["run_dir"], [{k: v for k, v in r.items() if k != "labels"} for r in rows], run["root"])
        for row, want in zip(rows, expected, strict=True):
            r = requests.post(f"{url}/predict", data={"text": row["text"]}, files=files_of(run, row), timeout=60)
            assert r.status_code == 200, r.text
            got = r.json()
            assert got["label"] == want["prediction"] and got["model"].startswith(run["run_dir"].name + "@")
            for c, p in want["probabilities"].items():
                assert got["probabilities"][c] == pytest.approx(p, abs=TOLERANCE)
        assert requests.get(f"{url}/info", timeout=10).json()["kind"] == "onnx"
        bad = requests.post(f"{url}/predict", files={"image": ("x.png", b"not a picture")}, timeout=60)
        assert bad.status_code == 422 and bad.json()["detail"].startswith("image: ")
        assert requests.post(f"{url}/predict?explain=true", data={"text": "hi"}, timeout=60).status_code == 422
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_a_token_tagging_run_answers_a_tag_per_word(tmp_path):
    """A text-only CRF token head: /predict tags the words of the text as predict.py does."""
    from mm.config import load_config
    from mm.predict import predict_rows
    from mm.train import RunOptions, train

    cfg = load_config(None, [
        "data.task=tags", "data.modalities=[text]", "head.name=token", "fusion.name=text_tokens",
        "data.synthetic.n_train=64", "data.synthetic.n_val=16", "data.synthetic.n_test=16", "fusion.hidden_dim=16",
        "encoders.text.source=tiny-bert", "train.max_steps=2", "train.metric=entity_f1", "wandb.mode=disabled",
        "head.crf=true",
    ])
    run_dir = Path(train(cfg, RunOptions(out_dir=str(tmp_path / "runs"), progress=False))["run_dir"])
    proc, url = start_server(run_dir, log=tmp_path / "log")
    try:
        text = "Peter Blackburn flew to Paris ."
        r = requests.post(f"{url}/predict", data={"text": text}, timeout=60)
        assert r.status_code == 200, r.text
        want = next(predict_rows(run_dir, [{"text": text, "tokens": text.split()}], tmp_path))
        assert r.json()["tokens"] == text.split() and r.json()["tags"] == want["prediction"]
        assert requests.post(f"{url}/predict?explain=true", data={"text": text}, timeout=60).status_code == 422
    finally:
        proc.kill()
        proc.wait()
