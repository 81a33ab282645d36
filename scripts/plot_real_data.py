"""Plot the shallow-deep comparison on a real dataset from the files the measuring commands wrote.

    python scripts/plot_real_data.py --raw runs/raw_baseline.json --shallow runs/shallow_baseline \\
        --grids runs/ablations/real_transfer runs/ablations/real_transfer_policies --out docs/real_data.png

Reads ``scripts/raw_baseline.py``'s JSON (logistic regression on raw inputs), the per-modality
folders of ``scripts/shallow_baseline.py`` (``<shallow>/<image|audio|image,audio>/shallow_baseline.json``:
logistic regression on frozen features) and the grids' ``results.csv`` (mean and std of test
accuracy over seeds per strategy and modality set); draws one group of bars per modality set.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

SETS = ("image", "audio", "image+audio")


def collect(raw: Path, shallow: Path, grids: list[Path]) -> dict[str, dict[str, list[float]]]:
    """method -> modality set -> test accuracies (one per seed)."""
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in json.loads(raw.read_text())["rows"]:
        key = "+".join(sorted(row["modalities"].split("+"), key=SETS.index))  # audio+image -> image+audio
        scores["LR on raw inputs"][key].append(row["test acc"])
    for folder in sorted(shallow.iterdir()):
        rows = json.loads((folder / "shallow_baseline.json").read_text())
        key = folder.name.replace(",", "+")
        scores["LR on frozen features"][key].append(rows[0]["test acc"])
    for grid in grids:
        for row in csv.DictReader((grid / "results.csv").open()):
            if row["test/accuracy"]:
                scores[row["strategy"]][row["data.modalities"]].append(float(row["test/accuracy"]))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--shallow", type=Path, required=True)
    parser.add_argument("--grids", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=Path("real_data.png"))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = collect(args.raw, args.shallow, args.grids)
    methods = list(scores)
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs, means, stds = [], [], []
        for j, s in enumerate(SETS):
            values = scores[method].get(s, [])
            if values:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                means.append(statistics.mean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=method)
    ax.set_xticks(range(len(SETS)), SETS)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_title("Shallow or deep on real data: EfficientNet-Lite0 (ImageNet) vs logistic regression")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
