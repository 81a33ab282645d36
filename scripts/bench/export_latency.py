#!/usr/bin/env python
"""ONNX Runtime (an exported bundle) against eager PyTorch (the run folder): latency per batch, one run.

    python scripts/bench/export_latency.py RUN --export DIR [--batches 1 8] [--reps 5] [--calls 10]
                                           [--threads 2] [--out runs/bench]

Both contenders get the same samples (the export's own sample inputs: pictures, texts, recordings,
repeated to the batch size) and the same thread count, interleaved A B A B per repetition:

- ``graph``: the model alone on already preprocessed inputs: ``model(batch)`` under
  ``torch.inference_mode`` against ``Bundle.run(feeds)`` (ONNX Runtime session);
- ``end to end``: from files to logits: the encoders' ``load`` + ``collate`` + forward against
  ``Bundle.logits(samples)`` (numpy preprocessing + session).

Each repetition times ``--calls`` calls after one warm-up call (not timed) and keeps the median call.
``--cold`` adds a third pair, cold start: a new Python process that loads the model and answers
one sample (``load_run`` + the encoders' preprocessing + forward, against ``Bundle.open`` +
``predict``), timed from process start to the answer.
Writes ``<out>/export_onnx.json`` (every repetition, ratios eager / ONNX, where it ran) and prints
the ratios; the largest logit difference between the two on these batches is reported beside them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import (  # a sibling: python puts scripts/bench/ first on sys.path
    command_line,
    interleave,
    log,
    ratios,
    row,
    write_row,
)


def median_call(fn, calls: int) -> float:
    fn()  # warm-up, not timed
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--export", type=Path, required=True, help="the run's export folder (scripts/export_model.py)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--cold", action="store_true", help="also time cold starts (new processes)")
    args = parser.parse_args(argv)

    from mm.analysis.evaluation import load_run
    from mm.serve.bundle import Bundle
    from mm.serve.export import sample_values, torch_batch

    torch.set_num_threads(args.threads)
    _, model, _ = load_run(args.run)
    bundle = Bundle.open(args.export, threads=args.threads)
    token = bundle.head == "token"
    tmp = Path(tempfile.mkdtemp())
    base = sample_values(model.modalities, token, tmp)
    contenders, diffs = {}, {}
    for b in args.batches:
        samples = [base[i % len(base)] for i in range(b)]
        batch = torch_batch(model, samples, tmp, token)
        feeds = bundle.feeds(samples, root=tmp)
        with torch.inference_mode():
            diffs[b] = float(np.abs(model(batch).float().numpy() - bundle.run(feeds)).max())

        def eager_graph(_rep: int, batch=batch) -> dict[str, float]:
            with torch.inference_mode():
                return {"seconds": median_call(lambda: model(batch), args.calls)}

        def onnx_graph(_rep: int, feeds=feeds) -> dict[str, float]:
            return {"seconds": median_call(lambda: bundle.run(feeds), args.calls)}

        def eager_e2e(_rep: int, samples=samples) -> dict[str, float]:
            with torch.inference_mode():
                return {"seconds": median_call(lambda: model(torch_batch(model, samples, tmp, token)), args.calls)}

        def onnx_e2e(_rep: int, samples=samples) -> dict[str, float]:
            return {"seconds": median_call(lambda: bundle.logits(samples, root=tmp), args.calls)}

        contenders.update({f"eager_graph_b{b}": eager_graph, f"onnx_graph_b{b}": onnx_graph,
                           f"eager_e2e_b{b}": eager_e2e, f"onnx_e2e_b{b}": onnx_e2e})
    if args.cold:
        sample = base[0]
        eager_code = ("import torch, tempfile, pathlib; from mm.analysis.evaluation import load_run; "
                      "from mm.serve.export import torch_batch; _, m, _ = load_run({run!r}); "
                      "torch.inference_mode().__enter__(); print(m(torch_batch(m, [{s!r}], pathlib.Path({root!r}), {t})))")
        onnx_code = ("from mm.serve.bundle import Bundle; "
                     "print(Bundle.open({export!r}).predict([{s!r}], root={root!r}))")
        fields = {"run": str(args.run), "export": str(args.export), "s": sample, "root": str(tmp), "t": token}

        def cold(code: str):
            def measure(_rep: int) -> dict[str, float]:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-c", code.format(**fields)], check=True, capture_output=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
                return {"seconds": time.perf_counter() - start}
            return measure

        contenders.update({"eager_cold": cold(eager_code), "onnx_cold": cold(onnx_code)})
    results = interleave(contenders, args.reps, log=log)
    ratio_defs = {}
    for b in args.batches:
        ratio_defs[f"graph_b{b}_eager_over_onnx"] = ratios(results, "seconds", f"eager_graph_b{b}", f"onnx_graph_b{b}")
        ratio_defs[f"e2e_b{b}_eager_over_onnx"] = ratios(results, "seconds", f"eager_e2e_b{b}", f"onnx_e2e_b{b}")
    if args.cold:
        ratio_defs["cold_start_eager_over_onnx"] = ratios(results, "seconds", "eager_cold", "onnx_cold")
    argv_line = [*(["--cold"] if args.cold else []), str(args.run), "--export", str(args.export), "--batches", *map(str, args.batches),
                 "--reps", str(args.reps), "--calls", str(args.calls), "--threads", str(args.threads)]
    data = row("export_onnx", command_line(argv_line).replace("scripts/bench/run.py", "scripts/bench/export_latency.py"),
               results, ratio_defs,
               settings={"run": str(args.run), "export": str(args.export), "model_id": bundle.model_id,
                         "exporter": bundle.info["graph"]["exporter"], "modalities": bundle.modalities,
                         "batches": args.batches, "calls": args.calls, "threads": args.threads},
               notes="seconds = median of --calls calls after one untimed warm-up; ratio > 1: ONNX Runtime faster",
               max_abs_logit_diff=diffs)
    path = write_row(args.out, data)
    for name, values in ratio_defs.items():
        print(f"{name}: median {statistics.median(values):.3f} (range {min(values):.3f}-{max(values):.3f})")
    print(f"max |logit difference| per batch size: {diffs}; row: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
