#!/usr/bin/env python
"""Worked transfer example: pretrain an image encoder on a source task, reuse it on a target task.

    python scripts/transfer_example.py [--out DIR] [--seeds 0 1] [--target-fraction 0.15]
        [--target-epochs 3] [key=value ...]

1. Source: the image-only synthetic task ``color`` (configs/color_source.yaml, one epoch), on
   samples of its own (``data.synthetic.seed=1``), tiny ViT trained from its random init.
2. Export: the trained image encoder as a timm hub-layout folder (``mm.backbone_export.export_run``).
3. Target: the text+image task ``color_animal`` (configs/default.yaml: MiniLM frozen for text)
   on a small budget (a fraction of the training split, a few epochs), with the image encoder
   - from scratch: the same random tiny ViT the source started from, fine-tuned;
   - transferred, fine-tuned: initialised from the exported source encoder;
   - transferred, frozen: the source encoder kept frozen (shallow learning on its features).

Prints a Markdown table (test accuracy mean ± sample std over seeds, optimizer steps, wall time
of each run) and writes it with the raw results to DIR/transfer.{md,json} (default
runs/transfer_example). Extra ``key=value`` overrides apply to every run (e.g.
``wandb.mode=offline``; W&B is disabled by default here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the shipped configs/


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    parser.add_argument("--out", type=Path, default=Path("runs/transfer_example"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--source-epochs", type=int, default=1)
    parser.add_argument("--target-fraction", type=float, default=0.15, help="data.train_fraction of the target")
    parser.add_argument("--target-epochs", type=int, default=3)
    return parser.parse_args(argv)


def variants(exported_image: Path) -> dict[str, tuple[str, list[str]]]:
    """Target variants: run name -> (description, image encoder overrides)."""
    return {
        "scratch": ("from scratch (tiny ViT random init), fine-tuned", ["encoders.image.source=tiny-vit"]),
        "transfer_full": ("transferred from `color`, fine-tuned",
                          [f"encoders.image.source={exported_image}", "encoders.image.trainable=full"]),
        "transfer_frozen": ("transferred from `color`, frozen",
                            [f"encoders.image.source={exported_image}", "encoders.image.trainable=frozen"]),
    }


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def markdown(args: argparse.Namespace, source: dict, results: dict[str, list[dict]],
             described: dict[str, tuple[str, list[str]]], total_s: float) -> str:
    """The example's table: one row per target variant."""
    lines = [
        f"Target `color_animal` (text+image, MiniLM frozen), train fraction {args.target_fraction} "
        f"({args.target_epochs} epochs); source `color` (image only, {source['steps']} steps, "
        f"test accuracy {source['test']['accuracy']:.3f}).",
        "",
        "| variant | seeds | test accuracy | steps | wall time per seed (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, (description, _) in described.items():
        runs = results[name]
        accuracy = mean_std([r["test"]["accuracy"] for r in runs])
        walls = ", ".join(f"{r['wall_time_s']:.0f}" for r in runs)
        lines.append(f"| {description} | {' '.join(map(str, args.seeds))} | {accuracy} | {runs[0]['steps']} | {walls} |")
    lines += ["", "test accuracy: mean ± sample std over seeds; wall times include one-off costs (data generation, "
              f"frozen-feature caches) where a run was the first to need them; whole example {total_s:.0f}s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mm.backbone_export import export_run
    from mm.config import load_config
    from mm.train import RunOptions, train

    t_start = time.perf_counter()
    common = ["wandb.mode=disabled", *args.overrides]
    opts = RunOptions(out_dir=str(args.out), progress=False)

    # 1. Source task: colour from the picture alone, on samples the target never sees.
    source_cfg = load_config(ROOT / "configs" / "color_source.yaml", [
        "data.synthetic.seed=1", f"train.epochs={args.source_epochs}", "name=source", *common])
    source = train(source_cfg, opts)
    print(f"source (color, image only): test accuracy {source['test']['accuracy']:.3f} after "
          f"{source['steps']} steps, {source['wall_time_s']:.0f}s", file=sys.stderr)

    # 2. Export the trained image encoder as a pretrained checkpoint.
    exported = export_run(source["run_dir"], Path(source["run_dir"]) / "export")["image"]
    print(f"exported: {exported}", file=sys.stderr)

    # 3. Target task, same small budget for every variant and seed.
    budget = [f"data.train_fraction={args.target_fraction}", f"train.epochs={args.target_epochs}"]
    results: dict[str, list[dict]] = {}
    for name, (_, overrides) in variants(exported).items():
        for seed in args.seeds:
            cfg = load_config(ROOT / "configs" / "default.yaml", [
                *budget, *overrides, f"seed={seed}", f"name={name}-s{seed}", *common])
            res = train(cfg, opts)
            print(f"{name} seed {seed}: test accuracy {res['test']['accuracy']:.3f}", file=sys.stderr)
            results.setdefault(name, []).append(res)

    table = markdown(args, source, results, variants(exported), time.perf_counter() - t_start)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "transfer.md").write_text(table)
    raw = {"source": source, "exported": str(exported), "targets": results,
           "wall_time_s": round(time.perf_counter() - t_start, 1)}
    (args.out / "transfer.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
