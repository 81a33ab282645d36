#!/usr/bin/env python
"""Why did a trained run decide that: modality contributions and input attributions for one sample.

    python scripts/explain.py RUN [--split test --index N | --text T --image PNG --audio WAV] [--out DIR]
                              [--methods ig occlusion] [--steps 32] [--shallow] [--checkpoint best] [--no-wandb]

For the sample it writes into DIR (default RUN/explain/<split>-<N>, or RUN/explain/input):
the exact modality Shapley values of the predicted class and the pairwise interaction
(fused_contributions_0.png), and per present modality and method a Captum attribution: heatmap
overlays for pictures and spectrograms, highlighted words for text (PNG and HTML). ``--shallow``
fits the run's shallow baseline (logistic regression on the frozen features, ``mm.lowdata.shallow``)
and explains the same sample with it (shallow_*), with its per-block coefficients. summary.json
holds the numbers, the files and the cost (seconds and model rows per part); the images go to the
run's W&B run. The last stdout line is a JSON summary. Bad arguments exit 2 before any model work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from mm.artifacts import run_argument

    parser.add_argument("run_dir", type=run_argument, help="run folder or artifact:[entity/]project/name:alias")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--index", type=int, default=None, help="sample of --split (default 0 unless inputs are given)")
    parser.add_argument("--text", default=None, help="a text to explain (instead of --index)")
    parser.add_argument("--image", type=Path, default=None, help="a picture file to explain")
    parser.add_argument("--audio", type=Path, default=None, help="a recording to explain")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--methods", nargs="+", default=["ig", "occlusion"], choices=["ig", "occlusion"])
    parser.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps")
    parser.add_argument("--shallow", action="store_true", help="also fit and explain the shallow baseline")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"])
    parser.add_argument("--no-wandb", action="store_true")
    args = parser.parse_args(argv)

    given = {m: v for m, v in (("text", args.text), ("image", args.image), ("audio", args.audio)) if v is not None}
    if given and args.index is not None:
        print("error: give --index or inputs (--text/--image/--audio), not both", file=sys.stderr)
        return 2
    for m, path in given.items():
        if m != "text" and not Path(path).is_file():
            print(f"error: --{m}: no such file: {path}", file=sys.stderr)
            return 2
    if args.steps < 1:
        print(f"error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2

    import torch

    from mm.analysis.evaluation import load_run
    from mm.config import to_dict
    from mm.explain.report import explain_batch, explain_shallow, write_summary
    from mm.prepare import prepare

    cfg, model, classes = load_run(args.run_dir, args.checkpoint)
    if cfg.head.name != "classification":
        print(f"error: explain needs a classification run, this one has head.name={cfg.head.name}", file=sys.stderr)
        return 2
    if unknown := sorted(set(given) - set(model.modalities)):
        print(f"error: the run has no {unknown} modality; it reads {model.modalities}", file=sys.stderr)
        return 2
    job = prepare(cfg, classes, model, torch.device("cpu"), cache=False, augment=False)
    if given:
        sample = {"index": 0, "label": 0}
        for m, value in given.items():
            sample[m] = model.encoders[m].load(str(value), Path.cwd())
        name, label_known = "input", False
    else:
        index = args.index or 0
        split = job.splits[args.split]
        if not 0 <= index < len(split):
            print(f"error: --index {index} is outside {args.split} (0..{len(split) - 1})", file=sys.stderr)
            return 2
        sample, name, label_known = split[index], f"{args.split}-{index}", True
    batch = job.collate([sample])
    texts = [sample["text"]] if isinstance(sample.get("text"), str) else None
    out = args.out or args.run_dir / "explain" / name
    t0 = time.perf_counter()
    summary = explain_batch(model, batch, out, classes, tuple(args.methods), texts, args.steps)
    summary["seconds"] = time.perf_counter() - t0
    if not label_known:
        summary["samples"][0]["label"] = None
    if args.shallow:
        from mm.explain.shallow import fit_shallow

        t1 = time.perf_counter()
        shallow, result, _ = fit_shallow(cfg)
        fit_s = time.perf_counter() - t1
        summary["shallow"] = explain_shallow(shallow, batch, out, classes, texts, args.steps)
        summary["shallow"].update(C=result.C, test=result.test, fit_seconds=fit_s)
    write_summary(summary, out / "summary.json")

    files = [Path(f) for s in summary["samples"] for f in s["files"]]
    files += [Path(f) for s in summary.get("shallow", {}).get("samples", []) for f in s["files"]]
    if not args.no_wandb and cfg.wandb.mode != "disabled":
        from mm.tracking import Tracker

        metrics = args.run_dir / "metrics.jsonl"
        last_step = max((json.loads(x)["step"] for x in metrics.read_text().splitlines()), default=0) if metrics.is_file() else 0
        tracker = Tracker(args.run_dir, to_dict(cfg), mode=cfg.wandb.mode, project=cfg.wandb.project,
                          entity=cfg.wandb.entity, group=cfg.wandb.group, name=args.run_dir.name,
                          tags=cfg.wandb.tags, job_type="explain", resume_step=last_step)
        for f in files:
            if f.suffix == ".png":
                tracker.log_image(f"explain/{name}/{f.stem}", f)
        tracker.finish()
    s = summary["samples"][0]
    print(f"{name}: predicted {s['predicted']} (p = {s['probability']:.3f}), label {s['label']}")
    for m, v in s["contributions"]["logodds"]["shapley"].items():
        print(f"  phi {m}: {v:+.3f} log-odds")
    for p, v in s["contributions"]["logodds"]["interaction"].items():
        print(f"  I {p}: {v:+.3f} log-odds")
    print(json.dumps({"out": str(out), "predicted": s["predicted"], "label": s["label"],
                      "contributions": s["contributions"]["logodds"], "seconds": round(summary["seconds"], 3),
                      "cost": summary["cost"], "files": len(files)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
