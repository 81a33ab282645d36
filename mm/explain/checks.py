"""Checks that attributions are true, not just plausible.

- ``deletion_curve``: delete the highest-attributed inputs first (pixels / spectrogram cells set
  to the zero baseline, words to ``[PAD]``) and record the target probability, against the same
  deletion in random orders; ``area_between`` is the mean gap (random minus attributed) over the
  deleted fraction 0..1, by the trapezoid rule: positive when the attribution finds what matters.
- ``randomized_model``: Adebayo et al. (2018) model-randomisation: the trained layers re-initialised
  (fusion and head, and the encoder's trainable layers), whose attributions must differ
  (``rank_correlation`` low).
- ``shape_mask``, ``mass_inside``, ``pointing_game``: on the synthetic pictures the drawn shape is
  where the colour is; the attribution mass must fall inside it.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from mm.explain.attributions import Attribution, _Probe, is_text


def _delete(batch: dict[str, Any], model: torch.nn.Module, att: Attribution, order: torch.Tensor,
            k: torch.Tensor) -> dict[str, torch.Tensor]:
    """The modality's inputs with each sample's first ``k[b]`` units of ``order[b]`` deleted."""
    m = att.modality
    inputs = dict(batch[m])
    encoder = model.encoders[m]
    B = order.shape[0]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand(B, -1).contiguous())  # unit -> its place in order
    drop = rank < k[:, None]  # [B, U]
    if is_text(encoder):
        ids = inputs["input_ids"]
        groups = att.groups  # [B, T] word index, -1 special
        word_drop = torch.zeros_like(ids, dtype=torch.bool)
        for b in range(B):
            sel = groups[b] >= 0
            word_drop[b, sel] = drop[b, groups[b, sel]]
        inputs["input_ids"] = torch.where(word_drop, torch.full_like(ids, encoder.tokenizer.pad_token_id), ids)
    else:
        x = inputs[att.key]
        H, W = x.shape[-2:]
        cell = drop.reshape(B, *([1] * (x.dim() - 3)), H, W)
        inputs[att.key] = torch.where(cell, torch.zeros_like(x), x)
    return inputs


def _units(att: Attribution) -> list[torch.Tensor]:
    """Per sample, the score of each deletable unit (word; position of the map)."""
    if att.words:
        return [torch.tensor([s for _, s in ws]) for ws in att.words]
    return [m.reshape(-1) for m in att.maps]


@torch.no_grad()
def deletion_curve(model: torch.nn.Module, batch: dict[str, Any], att: Attribution, steps: int = 10,
                   random_orders: int = 5, seed: int = 0) -> dict[str, Any]:
    """Target probability as the top-attributed fraction of each sample's units is deleted.

    Returns:
        ``fractions [steps+1]``, ``attributed [steps+1]`` and ``random [steps+1]`` (means over
        the batch; random also over ``random_orders`` orders), and ``area_between`` (random minus
        attributed, trapezoid over fractions 0..1), and its per-sample values ``area_per_sample``.
    """
    model.eval()
    scores = _units(att)
    B = len(scores)
    n_units = max(len(s) for s in scores)
    sizes = torch.tensor([len(s) for s in scores])
    probe = _Probe(model, batch, att.modality)
    g = torch.Generator().manual_seed(seed)

    def curve(orders: torch.Tensor) -> torch.Tensor:  # -> [B, steps+1]
        out = []
        for j in range(steps + 1):
            k = torch.round(sizes.double() * j / steps).long()
            inputs = _delete(batch, model, att, orders, k)
            out.append(probe(inputs, B).gather(1, att.target[:, None])[:, 0].double())
        return torch.stack(out, 1)

    def padded(order_of: list[torch.Tensor]) -> torch.Tensor:
        # Units beyond a sample's own (padding words) go last, so they are never deleted.
        return torch.stack([torch.cat([o, torch.arange(len(o), n_units)]) for o in order_of])

    attributed = curve(padded([torch.argsort(s, descending=True, stable=True) for s in scores]))
    rand = torch.stack([curve(padded([torch.randperm(int(n), generator=g) for n in sizes]))
                        for _ in range(random_orders)]).mean(0)
    fractions = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    per_sample = torch.trapezoid(rand - attributed, fractions, dim=1)
    return {"fractions": fractions.tolist(), "attributed": attributed.mean(0).tolist(), "random": rand.mean(0).tolist(),
            "area_between": float(per_sample.mean()), "area_per_sample": per_sample.tolist()}


def randomized_model(model: torch.nn.Module, seed: int = 0, encoders: bool = True) -> torch.nn.Module:
    """A copy of ``model`` whose trained layers are re-initialised (fusion, head, missing embeddings
    and, with ``encoders``, every encoder layer that trains or is not frozen): the model
    randomisation test's model."""
    rand = copy.deepcopy(model)
    torch.manual_seed(seed)
    parts = [rand.fusion, rand.head] if hasattr(rand, "fusion") else [rand]
    if encoders:
        parts += [e for e in rand.encoders.values() if not getattr(e, "frozen", True)]
    for part in parts:
        for module in part.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    if hasattr(rand, "missing"):
        for p in rand.missing.values():
            torch.nn.init.normal_(p, std=0.02)
    return rand.eval()


def rank_correlation(a: Attribution, b: Attribution, absolute: bool = True) -> list[float]:
    """Per sample, Spearman's rank correlation between two attributions of the same inputs
    (of ``|score|`` by default, as Adebayo et al. compare them)."""
    out = []
    for x, y in zip(_units(a), _units(b), strict=True):
        x, y = (x.abs(), y.abs()) if absolute else (x, y)
        rho = spearmanr(x.numpy(), y.numpy()).statistic
        out.append(float(0.0 if np.isnan(rho) else rho))
    return out


def shape_mask(pixel_values: torch.Tensor, mean: tuple, std: tuple, spread: float = 0.25) -> torch.Tensor:
    """``Bool[B, H, W]``: where the synthetic picture is coloured (channel spread above ``spread``
    of the 0-1 range, after a 3x3 mean filter against pixel noise); the background is grey."""
    rgb = pixel_values * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]  # [B, 3, H, W] in 0..1
    smooth = torch.nn.functional.avg_pool2d(rgb, 3, stride=1, padding=1, count_include_pad=False)
    return (smooth.amax(1) - smooth.amin(1)) > spread


def mass_inside(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample, the share of the absolute attribution mass that falls inside ``mask``."""
    mag = maps.abs()
    return (mag * mask).flatten(1).sum(1) / mag.flatten(1).sum(1).clamp_min(1e-30)


def pointing_game(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sample, whether the position of the largest absolute attribution is inside ``mask``."""
    top = maps.abs().flatten(1).argmax(1)
    return mask.flatten(1).gather(1, top[:, None])[:, 0]
