"""Explain samples end to end: modality contributions, Captum attributions of every modality with
every method, the shallow baseline beside them, written as PNG / HTML / JSON (``scripts/explain.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from mm.explain.attributions import attribute, is_text
from mm.explain.render import contribution_bars, overlay, picture, words_html, words_png
from mm.explain.shapley import modality_shapley


def _name(classes: list | None, i: int) -> str:
    return str(classes[i]) if classes else str(i)


def render_attribution(model: torch.nn.Module, batch: dict[str, Any], att: Any, b: int, out_dir: Path,
                       prefix: str, classes: list | None = None) -> list[Path]:
    """Sample ``b``'s attribution as pictures: an overlay (pictures, spectrograms) or highlighted
    words (PNG and HTML)."""
    title = f"{prefix}: {att.modality} {att.method}, class {_name(classes, int(att.target[b]))}"
    stem = out_dir / f"{prefix}_{att.modality}_{att.method}"
    if att.words:
        return [words_png(att.words[b], stem.with_suffix(".png"), title), words_html(att.words[b], stem.with_suffix(".html"), title)]
    x = batch[att.modality][att.key][b]
    encoder = model.encoders[att.modality]
    if att.key == "pixel_values":
        cfg = encoder.data_config
        return [overlay(picture(x, cfg["mean"], cfg["std"]), att.maps[b], stem.with_suffix(".png"), title)]
    frames = int(batch[att.modality].get("frames", torch.tensor([x.shape[-1]] * (b + 1)))[b])
    return [overlay(x[0, :, :frames].numpy(), att.maps[b][:, :frames], stem.with_suffix(".png"), title, spectrogram=True)]


def explain_batch(model: torch.nn.Module, batch: dict[str, Any], out_dir: Path, classes: list | None = None,
                  methods: tuple[str, ...] = ("ig", "occlusion"), texts: list[str] | None = None,
                  n_steps: int = 32, prefix: str = "fused") -> dict[str, Any]:
    """Explain every sample of a (small) batch: its exact modality Shapley values and, for each
    present modality and method, the attribution, rendered into ``out_dir``.

    Returns:
        A JSON-friendly summary per sample (predicted class, contributions, top words, files) and
        the cost: seconds and model rows run per part.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    cost: dict[str, Any] = {}
    t0 = time.perf_counter()
    shap = modality_shapley(model, batch)
    cost["shapley"] = {"seconds": time.perf_counter() - t0, "rows": shap["forward_rows"], "encoder_passes": 1}
    samples = []
    for b in range(len(batch["label"])):
        r = shap["logodds"]
        pairs = [f"{a}:{c}" for a, c in shap["pairs"]]
        bars = contribution_bars(shap["modalities"], r["shapley"][b].tolist(), pairs, r["interaction"][b].tolist(),
                                 out_dir / f"{prefix}_contributions_{b}.png",
                                 f"{prefix}: exact modality Shapley values, class {_name(classes, int(shap['target'][b]))}")
        samples.append({
            "predicted": _name(classes, int(shap["predicted"][b])),
            "label": _name(classes, int(batch["label"][b])) if batch["label"].dim() == 1 else None,
            "probability": float(shap["prob"]["output"][b]),
            "contributions": {measure: {"shapley": dict(zip(shap["modalities"], shap[measure]["shapley"][b].tolist(), strict=True)),
                                        "interaction": dict(zip(pairs, shap[measure]["interaction"][b].tolist(), strict=True)),
                                        "output": float(shap[measure]["output"][b]), "baseline": float(shap[measure]["baseline"][b])}
                              for measure in ("prob", "logodds")},
            "files": [str(bars)], "attributions": {},
        })
    for m in model.modalities:
        present = batch.get("present", {}).get(m, torch.ones(len(batch["label"]), dtype=torch.bool))
        if not bool(present.any()):
            continue
        for method in methods:
            t0 = time.perf_counter()
            att = attribute(model, batch, m, method, target=shap["target"], n_steps=n_steps,
                            texts=texts if is_text(model.encoders[m]) else None)
            cost[f"{m}/{method}"] = {"seconds": time.perf_counter() - t0, "rows": att.forward_rows}
            for b, sample in enumerate(samples):
                if not bool(present[b]):
                    continue
                files = render_attribution(model, batch, att, b, out_dir, f"{prefix}_{b}", classes)
                entry: dict[str, Any] = {"files": [str(f) for f in files]}
                if att.words:
                    entry["words"] = att.words[b]
                else:
                    entry["max_abs"] = float(att.maps[b].abs().max())
                if att.delta is not None:
                    entry["ig_delta"] = float(att.delta[b])
                sample["attributions"][f"{m}/{method}"] = entry
                sample["files"] += entry["files"]
    return {"samples": samples, "cost": cost}


def explain_shallow(shallow: torch.nn.Module, batch: dict[str, Any], out_dir: Path, classes: list | None = None,
                    texts: list[str] | None = None, n_steps: int = 32) -> dict[str, Any]:
    """The shallow baseline's side: everything ``explain_batch`` gives (Integrated Gradients only),
    plus its exact per-block logit contributions and coefficient norms."""
    result = explain_batch(shallow, batch, out_dir, classes, methods=("ig",), texts=texts, n_steps=n_steps, prefix="shallow")
    lin = shallow.contributions(batch)
    for b, sample in enumerate(result["samples"]):
        sample["linear"] = {"intercept": float(lin["intercept"][b]), "score": float(lin["score"][b]),
                            "blocks": {m: float(v[b]) for m, v in lin["blocks"].items()},
                            "top_features": {m: sorted(((int(j - a), float(lin["features"][b, j])) for j in range(a, z)),
                                                       key=lambda t: -abs(t[1]))[:5]
                                             for m, (a, z) in lin["columns"].items()}}
    result["coefficient_norms"] = shallow.coefficient_norms()
    return result


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path
