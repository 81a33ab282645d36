"""Exact modality Shapley values and pairwise Shapley interactions, one batched forward pass.

The players are a model's modalities; a coalition ``S`` is scored by running the model with the
modalities outside ``S`` absent (``present[m] = False``), so the model sees what it already sees
for a missing modality: its learned missing embedding (``MultimodalModel.fill_missing``). With
``M`` modalities there are ``2^M`` coalitions (at most 8 for text, image and audio); every sample
is encoded once and the fusion and head run once on ``B * 2^M`` rows. Nothing is sampled: the
values below are the exact Shapley values of that game.

A modality the sample lacks in the data stays absent in every coalition, so it is a null player
with value 0, and the values of the others are those of the game over the present ones.

For a sample with value function ``v`` over coalitions of ``N`` (``n = |N|``):

- Shapley value ``phi_i = sum_{S in N\\{i}} |S|! (n-|S|-1)! / n! * (v(S+i) - v(S))``;
- Shapley interaction index (Grabisch 1997) ``I_ij = sum_{S in N\\{i,j}} |S|! (n-|S|-2)! / (n-1)!
  * (v(S+ij) - v(S+i) - v(S+j) + v(S))``: positive when ``i`` and ``j`` together add more than
  apart (the ``match`` task), negative when they are redundant (``count``: text or audio);
- efficiency: ``sum_i phi_i = v(N) - v(empty)``, the model's output minus its all-missing output.

The game is scored in two currencies: the probability of the target class (by default the class
the model predicts with everything present) and its log-odds ``log p - log(1 - p)``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from mm.encoders.base import EncoderOutput

MEASURES = ("prob", "logodds")


def coalitions(n: int) -> torch.Tensor:
    """``Bool[2^n, n]``: row ``k`` holds the players of coalition ``k`` (bit ``i`` of ``k`` is player ``i``)."""
    k = torch.arange(2 ** n)
    return (k[:, None] >> torch.arange(n)[None, :]) & 1 == 1


def shapley_weights(n: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Exact linear maps from the ``2^n`` coalition values to Shapley values and interactions.

    Returns:
        ``W_phi [2^n, n]`` and ``W_int [2^n, P]`` (float64) such that ``phi = v @ W_phi`` and
        ``I = v @ W_int`` for coalition values ``v [.., 2^n]``, and the ``P`` pairs ``(i, j)``, i < j.
    """
    members = coalitions(n).tolist()
    index = {tuple(m): k for k, m in enumerate(members)}
    w_phi = torch.zeros(2 ** n, n, dtype=torch.float64)
    pairs = list(itertools.combinations(range(n), 2))
    w_int = torch.zeros(2 ** n, len(pairs), dtype=torch.float64)
    for k, m in enumerate(members):
        s = sum(m)
        for i in range(n):
            if m[i]:
                continue
            with_i = list(m)
            with_i[i] = True
            w = math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n)
            w_phi[index[tuple(with_i)], i] += w
            w_phi[k, i] -= w
        for p, (i, j) in enumerate(pairs):
            if m[i] or m[j]:
                continue
            w = math.factorial(s) * math.factorial(n - s - 2) / math.factorial(n - 1)
            for add, sign in (((i, j), 1), ((i,), -1), ((j,), -1), ((), 1)):
                other = list(m)
                for a in add:
                    other[a] = True
                w_int[index[tuple(other)], p] += sign * w
    return w_phi, w_int, pairs


def _repeat(out: EncoderOutput, k: int) -> EncoderOutput:
    """Each sample's outputs repeated ``k`` times in a row: ``[B, ...] -> [B*k, ...]``."""
    return EncoderOutput(out.tokens.repeat_interleave(k, 0), out.mask.repeat_interleave(k, 0),
                         out.pooled.repeat_interleave(k, 0))


def _kind(model: torch.nn.Module) -> str:
    if getattr(model, "explain_kind", None) == "classification":  # mm.explain.shallow.ShallowModel
        return "classification"
    name = type(model.head).__name__
    if name == "ClassificationHead":
        return "classification"
    raise ValueError(f"modality Shapley values need a classification head (class probabilities); "
                     f"this model's head is {name}")


def measures(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The target class's probability and log-odds from ``logits [N, C]`` (float64, stable:
    log-odds = ``logit_t - logsumexp(other logits)``)."""
    logits = logits.double()
    lsm = torch.log_softmax(logits, -1)
    log_p = lsm.gather(1, target[:, None])[:, 0]
    others = lsm.scatter(1, target[:, None], float("-inf"))
    return {"prob": log_p.exp(), "logodds": log_p - torch.logsumexp(others, -1)}


@torch.no_grad()
def coalition_logits(model: torch.nn.Module, batch: dict[str, Any],
                     outputs: dict[str, EncoderOutput] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every sample under every coalition of the model's modalities, in one forward.

    Returns:
        ``logits [B, 2^M, C]`` and the effective presence ``Bool[B, 2^M, M]`` (a coalition's
        modalities that the sample has).
    """
    mods = model.modalities
    n, B = len(mods), len(batch["label"])
    K = 2 ** n
    encoded = model.encode(batch, outputs)  # each modality encoded once: [B, ...]
    device = next(iter(encoded.values())).pooled.device
    given = batch.get("present", {})
    present = torch.stack([given.get(m, torch.ones(B, dtype=torch.bool)).to(device).bool() for m in mods], 1)  # [B, M]
    members = coalitions(n).to(device)  # [K, M]
    effective = present[:, None, :] & members[None, :, :]  # [B, K, M]
    rows = {m: _repeat(o, K) for m, o in encoded.items()}  # [B*K, ...]
    flat = effective.reshape(B * K, n)
    big = {"label": batch["label"].repeat_interleave(K, 0), "present": {m: flat[:, i] for i, m in enumerate(mods)}}
    was_training = model.training
    model.eval()
    try:
        logits = model(big, outputs=rows)  # [B*K, C]
    finally:
        model.train(was_training)
    return logits.float().reshape(B, K, -1), effective


def modality_shapley(model: torch.nn.Module, batch: dict[str, Any], target: torch.Tensor | None = None,
                     outputs: dict[str, EncoderOutput] | None = None) -> dict[str, Any]:
    """Exact Shapley values of each modality (and pairwise interactions) for every sample of a batch.

    Args:
        model: a ``MultimodalModel`` with a classification head (or anything with ``modalities``,
            ``encode(batch, outputs)``, ``forward(batch, outputs)`` and the same missing-modality
            contract, such as ``mm.explain.shallow.ShallowModel``).
        batch: a collated batch (``present`` masks optional: missing means present).
        target: ``Long[B]`` class to explain; default the class predicted with all present modalities.
        outputs: precomputed encoder outputs of some modalities (as ``model.forward`` takes).

    Returns:
        A dict of plain tensors (CPU, float64 for the values):

        - ``modalities``: the players, in the model's order; ``pairs``: ``(a, b)`` name pairs;
        - ``target`` ``Long[B]``, ``predicted`` ``Long[B]``, ``present`` ``Bool[B, M]``;
        - ``prob`` and ``logodds``: each ``{"shapley" [B, M], "interaction" [B, P], "output" [B],
          "baseline" [B], "coalitions" [B, 2^M]}``: ``output`` is the value with every present
          modality, ``baseline`` with none (the all-missing model), and
          ``shapley.sum(1) == output - baseline`` up to float error;
        - ``forward_rows``: ``B * 2^M``, the rows of the one fusion-and-head pass (each sample's
          encoders run once).
    """
    _kind(model)
    mods = model.modalities
    logits, effective = coalition_logits(model, batch, outputs)
    B, K, _ = logits.shape
    predicted = logits[:, K - 1].argmax(-1)  # the last coalition holds every modality
    target = predicted if target is None else torch.as_tensor(target, device=logits.device).long()
    flat = logits.reshape(B * K, -1)
    values = measures(flat, target.repeat_interleave(K, 0))
    w_phi, w_int, pairs = shapley_weights(len(mods))
    result: dict[str, Any] = {
        "modalities": list(mods), "pairs": [(mods[i], mods[j]) for i, j in pairs],
        "target": target.cpu(), "predicted": predicted.cpu(), "present": effective[:, K - 1].cpu(),
        "forward_rows": B * K,
    }
    for name, v in values.items():
        v = v.reshape(B, K).cpu()  # [B, 2^M]
        result[name] = {"shapley": v @ w_phi, "interaction": v @ w_int, "output": v[:, K - 1],
                        "baseline": v[:, 0], "coalitions": v}
    return result


def per_sample_rows(result: dict[str, Any], classes: list | None = None,
                    labels: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """One flat row per sample (JSON-friendly): target class, and for each measure the output,
    baseline, each modality's Shapley value and each pair's interaction."""
    rows = []
    for b in range(len(result["target"])):
        t = int(result["target"][b])
        row: dict[str, Any] = {"target": classes[t] if classes else t,
                               "predicted": classes[int(result["predicted"][b])] if classes else int(result["predicted"][b])}
        if labels is not None:
            row["label"] = classes[int(labels[b])] if classes else int(labels[b])
        for name in MEASURES:
            r = result[name]
            row[f"{name}/output"], row[f"{name}/baseline"] = float(r["output"][b]), float(r["baseline"][b])
            for i, m in enumerate(result["modalities"]):
                row[f"{name}/{m}"] = float(r["shapley"][b, i])
            for p, (a, c) in enumerate(result["pairs"]):
                row[f"{name}/{a}:{c}"] = float(r["interaction"][b, p])
        rows.append(row)
    return rows
