#!/usr/bin/env python
"""Is ``train.compile=true`` worth turning on? Steady-state training throughput, eager vs compiled.

    python scripts/bench/compiled.py [--reps 3] [--steps 60] [key=value ...]

(The suite, ``scripts/bench/run.py``, calls ``measure``.)

Runs the same short training eager and through ``torch.compile``, interleaved (A B A B ...), and
reports the median samples/s of the logging windows after the first 20 steps (compilation happens
in the first ones) and the ratio compiled / eager per repetition. Default: the synthetic benchmark,
tiny ViT fine-tuned + frozen MiniLM (from the feature cache), on this machine's device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = ["encoders.image.source=tiny-vit", "--no-progress", "--no-plots", "wandb.mode=disabled",
        "data.synthetic.n_train=2000", "train.eval_every=1000"]


def throughput(out: Path, name: str, steps: int, extra: list[str]) -> float:
    subprocess.run([sys.executable, "scripts/train.py", *BASE, *extra, f"train.max_steps={steps}",
                    f"--out-dir={out}", f"name={name}"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r and r["step"] > 20)


def measure(reps: int, steps: int, overrides: list[str], log=print) -> dict[str, list[float]]:
    """Eager and compiled samples/s, interleaved, ``reps`` times each."""
    result: dict[str, list[float]] = {"eager": [], "compiled": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            result["eager"].append(throughput(Path(tmp), f"eager{rep}", steps, overrides))
            result["compiled"].append(throughput(Path(tmp), f"compiled{rep}", steps, [*overrides, "train.compile=true"]))
            log(f"rep {rep}: eager {result['eager'][-1]:.1f} samples/s, compiled {result['compiled'][-1]:.1f} samples/s, "
                f"ratio {result['compiled'][-1] / result['eager'][-1]:.3f}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    result = measure(args.reps, args.steps, args.overrides)
    ratios = [c / e for c, e in zip(result["compiled"], result["eager"], strict=True)]
    print(f"compiled / eager: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
