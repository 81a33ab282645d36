"""Pictures of attributions: heatmap overlays for pictures and spectrograms, highlighted words
(PNG and HTML), modality contributions of one sample as bars."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def picture(pixel_values: torch.Tensor, mean: tuple, std: tuple) -> np.ndarray:
    """``[3, H, W]`` normalised pixels back to an ``[H, W, 3]`` 0..1 picture."""
    rgb = pixel_values * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return rgb.clamp(0, 1).permute(1, 2, 0).numpy()


def overlay(background: np.ndarray, heat: torch.Tensor, path: Path, title: str = "", spectrogram: bool = False) -> Path:
    """The input beside it with the signed attribution map over it (red: for the class, blue: against).

    Args:
        background: ``[H, W, 3]`` picture in 0..1, or ``[n_mels, T]`` spectrogram.
        heat: ``[H, W]`` attribution map at the input's resolution.
    """
    plt = _plt()
    heat = heat.numpy()
    lim = float(np.abs(heat).max()) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.2) if spectrogram else (6.0, 3.2))
    kw = {"origin": "lower", "aspect": "auto", "cmap": "magma"} if spectrogram else {}
    grey = background if spectrogram else background.mean(-1)  # the map over a grey copy: colours stay readable
    for ax, show_heat in zip(axes, (False, True), strict=True):
        if show_heat:
            ax.imshow(grey, **(kw if spectrogram else {"cmap": "gray", "vmin": 0, "vmax": 1}))
        else:
            ax.imshow(background, **kw)
        if show_heat:
            im = ax.imshow(heat, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.6,
                           **({"origin": "lower", "aspect": "auto"} if spectrogram else {}))
            fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_xticks([]) if not spectrogram else ax.set_xlabel("frame")
        ax.set_yticks([]) if not spectrogram else ax.set_ylabel("mel bin")
    axes[0].set_title("input", fontsize=9)
    axes[1].set_title(title or "attribution", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _colour(score: float, lim: float) -> tuple[float, float, float, float]:
    a = min(1.0, abs(score) / lim) if lim else 0.0
    return (0.85, 0.1, 0.1, a) if score >= 0 else (0.1, 0.25, 0.85, a)


def words_html(words: list[tuple[str, float]], path: Path, title: str = "") -> Path:
    """The words with a background of their score (red: for the class, blue: against), and the
    score in each word's tooltip."""
    lim = max((abs(s) for _, s in words), default=0.0)
    spans = []
    for w, s in words:
        r, g, b, a = _colour(s, lim)
        spans.append(f'<span title="{s:+.4g}" style="background: rgba({int(r * 255)},{int(g * 255)},{int(b * 255)},{a:.2f});'
                     f' padding: 2px 3px; margin: 1px; border-radius: 3px">{html.escape(w)}</span>')
    path.write_text(f"<!doctype html>\n<meta charset='utf-8'>\n<p style='font: 13px sans-serif'>{html.escape(title)}</p>\n"
                    f"<p style='font: 16px/2 sans-serif'>{' '.join(spans)}</p>\n")
    return path


def words_png(words: list[tuple[str, float]], path: Path, title: str = "", width: int = 60) -> Path:
    """The same highlighted words as a picture, wrapped at about ``width`` characters a line."""
    plt = _plt()
    lines, line, n = [], [], 0
    for w, s in words:
        if line and n + len(w) + 1 > width:
            lines.append(line)
            line, n = [], 0
        line.append((w, s))
        n += len(w) + 1
    lines.append(line)
    lim = max((abs(s) for _, s in words), default=0.0)
    fig = plt.figure(figsize=(0.11 * width + 0.6, 0.42 * len(lines) + 0.6))
    fig.text(0.01, 1 - 0.25 / (0.42 * len(lines) + 0.6), title, fontsize=9, va="top")
    renderer = fig.canvas.get_renderer()
    for i, line in enumerate(lines):
        x = 0.01
        y = 1 - (0.55 + 0.42 * i) / (0.42 * len(lines) + 0.6)
        for w, s in line:
            t = fig.text(x, y, w, fontsize=12, va="top", family="monospace",
                         bbox={"facecolor": _colour(s, lim), "edgecolor": "none", "pad": 1.5})
            x += t.get_window_extent(renderer).width / fig.bbox.width + 0.012
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def contribution_bars(modalities: list[str], values: list[float], pairs: list[str], interactions: list[float],
                      path: Path, title: str = "", unit: str = "log-odds") -> Path:
    """One sample's modality Shapley values and pairwise interactions as horizontal bars."""
    plt = _plt()
    names = [f"phi {m}" for m in modalities] + [f"I {p}" for p in pairs]
    vals = list(values) + list(interactions)
    fig, ax = plt.subplots(figsize=(5.0, 0.4 * len(names) + 1.0))
    ax.barh(range(len(names)), vals, color=["tab:red" if v >= 0 else "tab:blue" for v in vals])
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
