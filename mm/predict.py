"""Batched inference with a trained run: labels decoded to names, with probabilities."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from mm.analysis.evaluation import load_run
from mm.data.collate import Collator
from mm.data.manifest import ManifestDataset
from mm.labels import build_codec


def decode(head_name: str, logits: torch.Tensor, batch: dict[str, Any], classes: list,
           words: list[list[str]] | None = None, head: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """One prediction dict per sample of a batch; token tags are decoded as ``head`` decodes them
    (``TokenHead.decode_tags``: Viterbi with a CRF or over the allowed transitions), else each word's
    most likely tag."""
    out = []
    if head_name == "classification":
        probs = logits.float().softmax(-1)
        for p in probs:
            order = p.argsort(descending=True).tolist()
            out.append({"prediction": classes[order[0]],
                        "probabilities": {str(classes[i]): round(float(p[i]), 6) for i in order}})
    elif head_name == "multilabel":
        for p in logits.float().sigmoid():
            out.append({"prediction": [classes[i] for i in range(len(classes)) if p[i] > 0.5],
                        "probabilities": {str(c): round(float(p[i]), 6) for i, c in enumerate(classes)}})
    elif head_name == "regression":
        out = [{"prediction": float(v)} for v in logits.float().reshape(-1)]
    else:  # token: the tag of each word's first piece
        first = batch["label"] != -100  # [B, T] first pieces of words
        if head is not None and hasattr(head, "decode_tags"):
            pred = head.decode_tags(logits, first)
        else:
            pred = [row[mask].tolist() for row, mask in zip(logits.argmax(-1), first, strict=True)]
        for i, ws in enumerate(words or []):
            out.append({"tokens": ws, "prediction": [classes[t] for t in pred[i]]})
    return out


@torch.no_grad()
def predict_rows(run_dir: str | Path, rows: list[dict], root: str | Path, batch_size: int = 64) -> Iterator[dict]:
    """Predictions for manifest ``rows`` (media paths relative to ``root``), in order.

    Rows need no label; a label, if present, is ignored (token tagging reads the words under
    ``tokens``).
    """
    cfg, model, classes = load_run(run_dir)
    codec = build_codec(cfg.head.name, classes)
    encoders = dict(model.encoders)
    ds = ManifestDataset(root, "predict", encoders, "__no_label__", classes, codec=codec, rows=rows,
                         require_labels=False)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=Collator(cfg.data.modalities, encoders, head=cfg.head.name))
    for batch in loader:
        logits = model(batch)
        idx = batch["index"].tolist()
        words = [ds.words[i] for i in idx] if cfg.head.name == "token" else None
        for i, pred in zip(idx, decode(cfg.head.name, logits, batch, classes, words, model.head), strict=True):
            yield {"id": rows[i].get("id", i), **pred}
