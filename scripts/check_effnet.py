"""Frozen EfficientNet-Lite0 features + logistic regression on scikit-learn's digits, per input size.

    python scripts/check_effnet.py                      # sizes 32 64 96, split seeds 0 1
    python scripts/check_effnet.py --sizes 32 64 --seeds 0 1 2 --threads 2

Compares the ImageNet weights of the ``effnet-lite0`` alias with a random-init copy of the same
architecture (timm ``tf_efficientnet_lite0``) and with logistic regression on the raw 8x8 pixels.
The 8x8 digits are upsampled (bicubic) to each size, repeated to 3 grey channels and normalised
with the checkpoint's mean = std = 0.5. Half of the 1797 digits (stratified) train the probe, the
other half score it. Prints one row per (size, weights): accuracy mean ± std over the split seeds,
feature extraction time for all 1797 pictures, and probe fitting time.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from mm.encoders.sources import EFFNET_LITE0_ARCH, resolve_source


def digit_pictures(size: int) -> torch.Tensor:
    """``[1797, 3, size, size]``: the digits scaled to [0, 1], upsampled, grey, then (x - 0.5) / 0.5."""
    images = torch.tensor(load_digits().images, dtype=torch.float32) / 16.0  # [N, 8, 8], ink = 1
    x = F.interpolate(images[:, None], size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return (x.expand(-1, 3, -1, -1) - 0.5) / 0.5


def pooled_features(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> tuple[np.ndarray, float]:
    """Pre-logits pooled features (what ``ImageEncoder`` returns as ``pooled``) and the seconds taken."""
    start = time.perf_counter()
    with torch.inference_mode():
        chunks = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).numpy(), time.perf_counter() - start


def probe(features: np.ndarray, labels: np.ndarray, seeds: list[int]) -> tuple[list[float], float]:
    """Accuracy of standardised logistic regression per split seed, and the mean fitting seconds."""
    scores, seconds = [], []
    for seed in seeds:
        f_train, f_test, y_train, y_test = train_test_split(
            features, labels, test_size=0.5, stratify=labels, random_state=seed
        )
        start = time.perf_counter()
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000))
        model.fit(f_train, y_train)
        seconds.append(time.perf_counter() - start)
        scores.append(model.score(f_test, y_test))
    return scores, float(np.mean(seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    labels = load_digits().target
    pretrained = timm.create_model(
        f"local-dir:{resolve_source('effnet-lite0')}", pretrained=True, num_classes=0
    )
    torch.manual_seed(0)
    random_init = timm.create_model(EFFNET_LITE0_ARCH, pretrained=False, num_classes=0)
    models = {"imagenet": pretrained.eval(), "random-init": random_init.eval()}

    print(f"torch threads: {torch.get_num_threads()}; split seeds: {args.seeds}; 899 train / 898 test")
    print(f"{'input':>9} {'weights':>12} {'accuracy':>15} {'features s':>11} {'probe s':>8}")
    raw = load_digits().data
    scores, fit = probe(raw, labels, args.seeds)
    print(f"{'8x8 raw':>9} {'-':>12} {np.mean(scores):>8.3f} ± {np.std(scores):.3f} {0.0:>11.1f} {fit:>8.1f}")
    for size in args.sizes:
        x = digit_pictures(size)
        for name, model in models.items():
            features, extract = pooled_features(model, x)
            scores, fit = probe(features, labels, args.seeds)
            print(
                f"{f'{size} px':>9} {name:>12} {np.mean(scores):>8.3f} ± {np.std(scores):.3f} "
                f"{extract:>11.1f} {fit:>8.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
