#!/usr/bin/env python
"""mm's benchmark suite: every row a ratio against a reference measured in the same run.

    python scripts/bench/run.py [--quick] [--rows loop hf padding data eval kernels cache compile]
                                [--reps 3] [--threads 2] [--text fortunes|synthetic] [--out runs/bench]
    python scripts/bench/run.py --tiny --out /tmp/bench      # the smoke test's setting (seconds, numbers meaningless)

Writes ``<out>/<row>.json`` per row (every repetition, medians, ranges, settings, CPU, torch, load
average, the command) and ``<out>/table.md``, the table BENCHMARKS.md is made from. Contenders are
interleaved (A B A B ...) ``--reps`` times (BENCHMARKING.md). Rows:

- ``loop``, ``hf`` (one interleaved run): mm against a hand-written loop and HF Trainer on the text
  job (``textjob``: MiniLM on fortune-cookie topics; needs ``apt-get install -y fortunes`` and, for
  HF Trainer, ``pip install -r requirements-bench.txt``);
- ``padding``: padding share of random, mm length-grouped and HF length-grouped batches;
- ``data``: dataset + collate against the model step, per modality; pictures decoded per epoch;
- ``eval``: ``evaluate.py`` / ``predict.py`` / ``evaluate()`` against hand-written inference;
- ``kernels``: SDPA / fused attention, fused AdamW, the per-step finiteness check;
- ``cache``, ``compile``: the feature-cache grid (``cache.py``) and torch.compile (``compiled.py``).

``--quick``: 30 training steps instead of 60, smaller data-path and cache runs. GPU throughput
and MFU are ``scripts/bench/gpu.py`` (not part of this CPU suite).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

# The suite's modules (common, textjob, rows_*) are imported as siblings: python puts scripts/bench/
# first on sys.path when it runs this file; mm is the installed package.

import torch  # noqa: E402
from common import command_line, environment, log, ratios, row, summary, write_row  # noqa: E402

ROWS = ("loop", "hf", "padding", "data", "eval", "kernels", "cache", "compile")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--quick", action="store_true", help="shorter runs (30 steps)")
    parser.add_argument("--tiny", action="store_true", help="smoke-test setting: tiny models, synthetic text")
    parser.add_argument("--batch-size", type=int, default=32, help="the text job's batch size")
    parser.add_argument("--steps", type=int, default=0, help="the text job's training steps (default 60, --quick 30)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (seeds for training rows)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--text", default="fortunes", choices=["fortunes", "synthetic"], help="the text job's data")
    parser.add_argument("--spoken", type=int, default=512, help="sentences spoken by espeak-ng for the audio padding row")
    parser.add_argument("--kernel-calls", type=int, default=5, help="timed calls per kernel-row measurement")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    return parser.parse_args(argv)


def text_job(args: argparse.Namespace):
    from textjob import TextJob

    from mm.data.fortunes import build_fortunes

    if args.tiny:
        return TextJob("synthetic", source="tiny-bert", batch_size=8, steps=6, skip=2, max_length=32)
    dataset = "synthetic" if args.text == "synthetic" else str(build_fortunes(args.out / "fortunes").resolve())
    return TextJob(dataset, batch_size=args.batch_size, steps=args.steps or (30 if args.quick else 60))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        os.environ.setdefault("MM_CACHE", str((args.out / "cache").resolve()))
    job = text_job(args)
    command = command_line(argv)
    settings = {"job": vars(job), "threads": args.threads, "reps": args.reps, "tiny": args.tiny, "quick": args.quick}
    written: list[dict[str, Any]] = []

    def emit(*rows: dict[str, Any]) -> None:  # each row is written as soon as it is measured
        for data_row in rows:
            log(f"wrote {write_row(args.out, data_row)}")
            written.append(data_row)

    if "loop" in args.rows or "hf" in args.rows:
        import rows_train

        hf = "hf" in args.rows and _has_accelerate()
        log(f"training rows: {'hand, mm, mm_bucketed' + (', hf, hf_grouped' if hf else '')} x {args.reps}")
        results = rows_train.measure(job, args.reps, hf=hf)
        emit(*rows_train.rows(job, results, command, settings))
        if "hf" in args.rows and not hf:
            log("hf row skipped: transformers.Trainer needs accelerate (pip install -r requirements-bench.txt)")

    if "padding" in args.rows:
        emit(padding(args, job, command, settings))

    if "data" in args.rows:
        emit(data(args, command, settings))

    if "eval" in args.rows:
        emit(evaluation(args, job, command, settings))

    if "kernels" in args.rows:
        import rows_kernels

        n = 1 if args.tiny else args.kernel_calls
        source, vit, size = ("tiny-bert", "vit_tiny_patch16_224", 32) if args.tiny else (job.source, "vit_small_patch16_224", 224)
        texts = _texts(job)[:32]
        emit(*rows_kernels.kernel_rows(rows_kernels.attention(source, texts, vit, size, args.reps, n),
                                            rows_kernels.optimizer(source, args.reps, n),
                                            rows_kernels.finite_check(args.reps, 200 if args.tiny else 20000),
                                            command, settings,
                                            rows_kernels.layout("tiny-cnn" if args.tiny else "effnet-lite0",
                                                                vit, size, args.reps, n)))

    if "cache" in args.rows:
        emit(cache(args, command, settings))

    if "compile" in args.rows:
        import compiled

        steps = 60 if not args.quick else 40
        result = compiled.measure(args.reps, steps, [], log=log)
        reps = {k: [{"samples_per_s": v} for v in vals] for k, vals in result.items()}
        emit(row("compile", command, reps, {"compiled / eager": ratios(reps, "samples_per_s", "compiled", "eager")},
                           {**settings, "steps": steps}, notes="compiled.py defaults: tiny ViT fine-tuned + frozen "
                           "MiniLM (cached), samples/s of logging windows after step 20"))

    (args.out / "table.md").write_text(table(written))
    print(table(written))
    return 0


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


def _texts(job) -> list[str]:
    from mm.data import resolve_dataset
    from mm.data.manifest import read_split

    cfg = job.config(0, Path("/tmp"))
    root, _ = resolve_dataset(cfg.data)
    return [r["text"] for r in read_split(root, "train")]


def padding(args: argparse.Namespace, job, command: str, settings: dict) -> dict[str, Any]:
    import rows_data

    lengths, labels = rows_data.text_lengths(job.dataset, job.source, job.max_length)
    result = {"text": rows_data.padding_rows(lengths, labels, job.batch_size, args.reps)}
    if shutil.which("espeak-ng") and not args.tiny:  # the sentences spoken: recordings of varied length
        speech = rows_data.speak(_texts(job)[: args.spoken], [str(x) for x in labels[: args.spoken]], args.out / "speech")
        audio, audio_labels = rows_data.audio_lengths(speech)
        result["audio"] = rows_data.padding_rows(audio, audio_labels, job.batch_size, args.reps)
    reps = {f"{m} {way}": [{"padding": v["padding"]["median"]}] for m, ways in result.items() for way, v in ways.items()}
    return {"row": "padding", "command": command, "settings": {**settings, "spoken": args.spoken},
            "shares": result, "contenders": {k: {"padding": summary([v[0]["padding"]])} for k, v in reps.items()},
            "ratios": {}, "env": environment(),
            "notes": "share of padded positions that are padding over an epoch's batches, one repetition per epoch "
                     "(0..reps-1); label_share: mean share of a batch held by its most common label; target <= 0.10 "
                     "with length grouping"}


def data(args: argparse.Namespace, command: str, settings: dict) -> dict[str, Any]:
    import rows_data

    base = ["train.batch_size=32"]
    if args.tiny:
        base += ["data.synthetic.n_train=64", "data.synthetic.n_val=32", "data.synthetic.n_test=32",
                 "encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit", "encoders.audio.source=tiny-cnn"]
    batches = 2 if args.tiny else (10 if args.quick else 20)
    per = {m: rows_data.data_path(m, base, batches, args.reps) for m in ("text", "image", "audio")}
    n_train = 64 if args.tiny else 256
    decodes = rows_data.decodes_per_epoch([*base, "data.synthetic.n_val=32", "data.synthetic.n_test=32",
                                           *(["encoders.image.source=tiny-vit"] if args.tiny else [])], n_train)
    return rows_data.data_rows({**settings, "batches": batches}, command, per, decodes, n_train)


def evaluation(args: argparse.Namespace, job, command: str, settings: dict) -> dict[str, Any]:
    import rows_eval

    import mm.train as mm_train
    from mm.data import resolve_dataset

    cfg = job.config(0, args.out / "eval_run")
    cfg.train.max_steps = 2 if args.tiny else 10
    results = mm_train.train(cfg, job.options(args.out / "eval_run"))
    root, _ = resolve_dataset(cfg.data)
    timed = rows_eval.measure(Path(results["run_dir"]), root / "test.jsonl", args.reps)
    n_test = len((root / "test.jsonl").read_text().splitlines())
    return rows_eval.eval_row(timed, command, {**settings, "test_samples": n_test, "run_steps": cfg.train.max_steps})


def cache(args: argparse.Namespace, command: str, settings: dict) -> dict[str, Any]:
    import cache as bench_cache

    small = ["--n-train", "64", "--n-eval", "32", "--epochs", "1", "--fusions", "concat"] if args.tiny else (
        ["--n-train", "300", "--n-eval", "60", "--epochs", "2", "--fusions", "concat", "attention"])
    out = args.out / "cache"
    bench_cache.main([*small, "--seeds", "0", "--reps", str(args.reps), "--out", str(out)])
    s = json.loads((out / "bench_cache.json").read_text())["summary"]
    speed = {"uncached / cached (grid time)": s["speedups"]}
    return {"row": "cache", "command": command + f"  # = python scripts/bench/cache.py {' '.join(small)} --seeds 0 "
            f"--reps {args.reps}", "settings": {**settings, "cache_args": small}, "summary": s, "contenders": {},
            "ratios": {k: {**summary(v), "reps": v} for k, v in speed.items()}, "env": environment(),
            "notes": f"{s['cells']} cells; identical accuracy in {s['accuracy_identical_cells']}/{s['cells']} cells "
                     f"(last repetition)"}


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: per row, each ratio's median and range, contenders' medians, the command."""
    lines = ["| row | ratio | median | range | contenders (median) | load avg |", "|---|---|---|---|---|---|"]
    for r in rows:
        contenders = "; ".join(f"{c}: " + ", ".join(f"{k} {v['median']:.4g}" for k, v in vals.items())
                               for c, vals in r.get("contenders", {}).items())
        load = r.get("env", {}).get("load_avg", ["?"])[0]
        for name, v in (r["ratios"] or {"-": None}).items():
            med, rng = ("-", "-") if v is None else (f"{v['median']:.3f}", f"{v['min']:.3f}-{v['max']:.3f}")
            lines.append(f"| {r['row']} | {name} | {med} | {rng} | {contenders} | {load} |")
    commands = sorted({r["command"] for r in rows})
    return "\n".join(lines) + "\n\nReproduce: " + "; ".join(f"`{c}`" for c in commands) + "\n"


if __name__ == "__main__":
    sys.exit(main())
