#!/usr/bin/env python
"""Draw several shots curves side by side (docs/shots_curve.png), transferred encoders overlaid.

    python scripts/plot_shots.py --panel TITLE DIR [DIR:SUFFIX ...] [--panel ...] [--out PNG]
        [--metric accuracy] [--bands]

Each ``--panel`` is one subplot: the summary.csv of each curve output folder DIR (written by
``scripts/learning_curve.py`` for a ``kind: shots`` curve), the first folder's methods drawn as
the curve draws them (``mm.lowdata.fewshot.draw_shots``: trained solid, frozen-feature classifiers dashed,
zero-shot dotted), every further ``DIR:SUFFIX`` dash-dotted with SUFFIX after its method names
(e.g. the same curve with a transferred encoder).

Example:
    python scripts/plot_shots.py --panel "count (text)" runs/curves/shots \\
        "runs/curves/shots_from_shape: (from shape)" --panel "digits: pictures" runs/curves/shots_real_image
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

from mm.lowdata.fewshot import draw_shots


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--panel", nargs="+", action="append", required=True, metavar="TITLE DIR",
                        help="a subplot: its title, a curve folder, then DIR:SUFFIX folders to overlay")
    parser.add_argument("--out", type=Path, default=Path("docs/shots_curve.png"))
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--bands", action="store_true", help="draw the 95 %% intervals as bands")
    args = parser.parse_args(argv)
    if any(len(p) < 2 for p in args.panel):
        parser.error("--panel takes a title and at least one curve folder")
    return args


def read_summary(folder: Path) -> list[dict[str, Any]]:
    """A shots curve's summary.csv with numbers as numbers (empty cells as NaN)."""
    with (folder / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    text = {"method", "kind"}
    return [{k: v if k in text else int(v) if k in ("k", "n", "n_train") else float(v or math.nan)
             for k, v in row.items()} for row in rows]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(args.panel)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.3 * rows), squeeze=False)
    colors: dict[str, str] = {}  # one colour per method across all panels
    for ax, (title, first, *others) in zip(axes.flat, args.panel, strict=False):
        draw_shots(ax, read_summary(Path(first)), args.metric, colors=colors, bands=args.bands)
        for other in others:
            folder, _, suffix = other.partition(":")
            draw_shots(ax, read_summary(Path(folder)), args.metric, suffix=suffix, style="-.", colors=colors,
                       bands=args.bands)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"test {args.metric} against labelled examples per class: mean over episodes"
                 + (" and 95 % interval" if args.bands else ""), fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
