#!/usr/bin/env python
"""Load on the inference server: latency and throughput, batching against one forward per request,
cold start, then a sustained load, an overload and the recovery. One run, on one machine.

    python scripts/bench/serve_load.py RUN [--clients 1 8 32] [--requests 64] [--reps 3]
        [--sustain-s 300] [--overload-s 60] [--recover-s 30] [--max-batch 8] [--max-wait-ms 5]
        [--threads 2] [--out docs/bench]

1. Cold start: ``scripts/serve.py RUN`` started as a process, timed until its first 200 on /predict
   (both server processes below are timed so; they start at the same time, so each shares the
   cores with the other's start: an upper bound of a lone start).
2. Latency and throughput at each ``--clients`` count, interleaved A B C per repetition (BENCHMARKING.md):
   ``served_batched`` (HTTP, ``--max-batch``/``--max-wait-ms``), ``served_unbatched`` (HTTP,
   ``--max-batch 1``: one forward per request) and ``inprocess_per_request`` (no HTTP: each client
   thread decodes its files and runs its own one-sample forward on one shared model, what a
   hand-rolled server without batching does). Each client is a thread sending its share of
   ``--requests`` (rounded up) back to back (closed loop) over one keep-alive connection;
   client-side latency p50/p95/p99, and throughput = requests / wall time. Ratios: throughput
   batched / each other.
3. Sustained: an open-loop load at ``--rate`` requests/s (default: half the batched throughput
   measured at the largest client count) for ``--sustain-s``, the server's resident memory sampled
   every 5 s; errors counted. Then ``--overload-factor`` (3) times that rate for ``--overload-s``:
   every answer must be a 200 or a fast 503 (their latency reported), and the server must live;
   then the base rate again for ``--recover-s``: all 200 again.

The requests are test-split samples of the run's dataset (text and the media the model takes), one
per client in turn. Writes ``<out>/serve_load.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from common import environment, log, summary  # a sibling: python puts scripts/bench/ first on sys.path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {}
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"p50": round(q[49], 2), "p95": round(q[94], 2), "p99": round(q[98], 2), "n": len(ms)}


class Samples:
    """The requests: test-split rows of the run's dataset, as form fields and file bytes."""

    def __init__(self, run_dir: Path, n: int = 32) -> None:
        from mm.config import load_config
        from mm.data import resolve_dataset
        from mm.data.manifest import read_manifest

        cfg = load_config(run_dir / "config.yaml")
        self.root, _ = resolve_dataset(cfg.data)
        self.modalities = sorted(cfg.data.modalities)
        self.rows = read_manifest(self.root / "test.jsonl")[:n]

    def form(self, i: int) -> tuple[dict, dict]:
        row = self.rows[i % len(self.rows)]
        data = {"text": row["text"]} if "text" in self.modalities else {}
        files = {m: (Path(row[m]).name, (self.root / row[m]).read_bytes()) for m in ("image", "audio")
                 if m in self.modalities and row.get(m)}
        return data, files


class Server:
    """``scripts/serve.py`` as a process; ``cold_s``: from its start to its first 200 on /predict."""

    def __init__(self, run_dir: Path, flags: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.start = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/serve.py"), str(run_dir), "--port",
                                      str(self.port), "--log-level", "warning", *flags],
                                     stdout=log_path.open("w"), stderr=subprocess.STDOUT)

    def wait(self, samples: Samples) -> Server:
        """Poll /predict until the first 200 (``cold_s``: seconds since the process started)."""
        data, files = samples.form(0)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if requests.post(f"{self.url}/predict", data=data, files=files, timeout=60).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.cold_s = time.perf_counter() - self.start
        return self

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def closed_loop(send, clients: int, per_client: int) -> dict[str, float]:
    """``clients`` threads, each sending ``per_client`` requests back to back; latency and throughput."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with requests.Session() as session:
            barrier.wait()
            for k in range(per_client):
                t = time.perf_counter()
                ok = send(session, c * per_client + k)
                with lock:
                    latencies.append((time.perf_counter() - t) * 1000)
                    errors[0] += not ok

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"throughput": len(latencies) / wall, **percentiles(latencies), "errors": errors[0]}


def open_loop(url: str, samples: Samples, rate: float, seconds: float, server: Server | None = None) -> dict:
    """Requests sent at ``rate`` per second whatever the answers (open loop); statuses, latencies, memory."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    memory: list[tuple[float, float]] = []

    def one(i: int) -> None:
        data, files = samples.form(i)
        t = time.perf_counter()
        try:
            status = requests.post(f"{url}/predict", data=data, files=files, timeout=60).status_code
        except requests.RequestException:
            status = 0
        with lock:
            results.append((status, (time.perf_counter() - t) * 1000))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=256) as pool:
        i, next_memory = 0, start
        while (now := time.perf_counter()) - start < seconds:
            if server is not None and now >= next_memory:
                memory.append((round(now - start, 1), round(server.rss_mb(), 1)))
                next_memory += 5
            due = start + i / rate
            if now < due:
                time.sleep(min(due - now, 0.05))
                continue
            pool.submit(one, i)
            i += 1
    statuses: dict[str, int] = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    out = {"rate": rate, "seconds": seconds, "sent": i, "statuses": statuses,
           "ok_ms": percentiles([ms for s, ms in results if s == 200]),
           "busy_ms": percentiles([ms for s, ms in results if s == 503])}
    if memory:
        out["rss_mb"] = memory
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=64,
                   help="requests per contender per repetition, shared among the clients (at least one each)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, servers and in-process alike")
    p.add_argument("--rate", type=float, default=None, help="sustained rate (default: half the measured batched throughput)")
    p.add_argument("--sustain-s", type=float, default=300)
    p.add_argument("--overload-factor", type=float, default=3)
    p.add_argument("--overload-s", type=float, default=60)
    p.add_argument("--recover-s", type=float, default=30)
    p.add_argument("--out", type=Path, default=ROOT / "docs/bench")
    args = p.parse_args(argv)
    if not (args.run / "config.yaml").is_file():
        p.error(f"{args.run} is not an mm run folder (config.yaml is missing)")

    import tempfile

    import torch

    from mm.serve.models import TorchModel

    torch.set_num_threads(args.threads)
    samples = Samples(args.run)
    logs = Path(tempfile.mkdtemp(prefix="serve_load_"))  # the servers' own logs
    log(f"server logs in {logs}")
    common = ["--threads", str(args.threads), "--max-queue", str(args.max_queue)]
    log("starting the servers (cold start timed)")
    batched = Server(args.run, [*common, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
                     logs / "batched.log")
    unbatched = Server(args.run, [*common, "--max-batch", "1", "--max-wait-ms", "0"], logs / "unbatched.log")
    batched.wait(samples), unbatched.wait(samples)  # started together: each timed from its own start
    model = TorchModel(args.run, args.threads)

    def http(server: Server):
        def send(session: requests.Session, i: int) -> bool:
            data, files = samples.form(i)
            return session.post(f"{server.url}/predict", data=data, files=files, timeout=120).status_code == 200
        return send

    def inprocess(session: requests.Session, i: int) -> bool:  # one forward per request, no batching
        data, files = samples.form(i)
        with tempfile.TemporaryDirectory() as tmp:
            sample = {m: model.load(m, v, Path(tmp)) for m, v in data.items()}
            for m, (_, blob) in files.items():
                (Path(tmp) / m).write_bytes(blob)
                sample[m] = model.load(m, m, Path(tmp))
            model.predict([sample])
        return True

    contenders = {"served_batched": http(batched), "served_unbatched": http(unbatched), "inprocess_per_request": inprocess}
    load: dict[str, dict] = {}
    for clients in args.clients:
        reps: dict[str, list] = {name: [] for name in contenders}
        for rep in range(args.reps):
            for name, send in contenders.items():
                reps[name].append(closed_loop(send, clients, max(1, -(-args.requests // clients))))
                log(f"clients {clients} rep {rep} {name}: {reps[name][-1]}")
        base = reps["served_batched"]
        load[str(clients)] = {
            "contenders": {n: {k: summary([r[k] for r in rs]) for k in ("throughput", "p50", "p95", "p99")} | {
                "errors": sum(r["errors"] for r in rs)} for n, rs in reps.items()},
            "ratios": {f"throughput batched / {n}": summary([a["throughput"] / b["throughput"] for a, b in zip(base, rs, strict=True)])
                       for n, rs in reps.items() if n != "served_batched"},
            "repetitions": reps,
        }
    unbatched_exit = unbatched.stop()

    top = load[str(max(args.clients))]["contenders"]["served_batched"]["throughput"]["median"]
    rate = args.rate or max(0.5, round(top / 2, 2))
    log(f"sustained: {rate} req/s for {args.sustain_s} s")
    sustained = open_loop(batched.url, samples, rate, args.sustain_s, batched)
    log(f"overload: {rate * args.overload_factor} req/s for {args.overload_s} s")
    overload = open_loop(batched.url, samples, rate * args.overload_factor, args.overload_s, batched)
    alive_after_overload = batched.proc.poll() is None
    log(f"recovery: {rate} req/s for {args.recover_s} s")
    recovery = open_loop(batched.url, samples, rate, args.recover_s, batched)
    batched_exit = batched.stop()

    mem = sustained.get("rss_mb", [])
    result = {
        "row": "serve_load", "command": "python scripts/bench/serve_load.py " + " ".join(argv or sys.argv[1:]),
        "run": str(args.run), "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cold_start_s": {"served_batched": round(batched.cold_s, 2), "served_unbatched": round(unbatched.cold_s, 2)},
        "load": load, "sustained": sustained, "overload": overload, "recovery": recovery,
        "memory_growth_mb": round(mem[-1][1] - mem[1][1], 1) if len(mem) > 2 else None,  # after the first 5 s
        "alive_after_overload": alive_after_overload, "exit_codes": [batched_exit, unbatched_exit], "env": environment(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    for clients, row in load.items():
        c = row["contenders"]
        log(f"clients {clients}: " + "; ".join(
            f"{n} {v['throughput']['median']:.2f} req/s p50 {v['p50']['median']:.0f} p95 {v['p95']['median']:.0f} "
            f"p99 {v['p99']['median']:.0f} ms" for n, v in c.items())
            + " | " + ", ".join(f"{k} {v['median']:.2f}x" for k, v in row["ratios"].items()))
    log(f"cold start {result['cold_start_s']} s; sustained {sustained['statuses']} memory growth "
        f"{result['memory_growth_mb']} MB; overload {overload['statuses']} 503 latency {overload['busy_ms']}; "
        f"recovery {recovery['statuses']}")
    print(json.dumps({k: result[k] for k in ("cold_start_s", "memory_growth_mb", "alive_after_overload", "exit_codes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
