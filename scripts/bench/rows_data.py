"""Rows (c) padding waste and (d) the data path.

Padding: from the lengths the collate pads to (text: word pieces with the special tokens, cut at
``max_length``; audio: samples at 16 kHz, cut at 10 s, of the text job's sentences spoken by
``espeak-ng``), the share of each batch's padded positions
that are padding, over an epoch's batches: random batches, mm's length-grouped batches (pools of
4 to 32 batches) and HF's ``get_length_grouped_indices`` (``group_by_length``: mega-batches of 50
batches sorted longest first). One repetition per epoch (0, 1, 2). Beside it, how much a batch's
lengths stand in for its labels: the mean share of a batch held by its most common label.

Data path: per modality, samples/s of dataset + collate alone (DataLoader, 0 and 2 workers)
against the model step (forward, backward, optimizer) on collated batches, and how many times each
training picture is decoded in one epoch of ``mm.train.train``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from common import interleave, ratios, row, summary
from textjob import padding_share

POOLS = (4, 8, 16, 32)


def label_share(batches: list[list[int]], labels: list[Any]) -> float:
    """Mean over batches of the share of the batch held by its most common label (1 = one label per batch)."""
    return sum(Counter(labels[i] for i in b).most_common(1)[0][1] / len(b) for b in batches) / len(batches)


def padding_rows(lengths: list[int], labels: list[Any] | None, batch_size: int, reps: int) -> dict[str, Any]:
    """Per way of batching: padding share (and label share) per epoch, with median and range."""
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from mm.run.runtime import epoch_batches

    def hf(epoch: int) -> list[list[int]]:
        order = get_length_grouped_indices(lengths, batch_size, generator=torch.Generator().manual_seed(epoch))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    ways = {"random": lambda e: epoch_batches(len(lengths), batch_size, 0, e),
            **{f"mm pool {p}": (lambda e, p=p: epoch_batches(len(lengths), batch_size, 0, e, lengths, p)) for p in POOLS},
            "hf group_by_length": hf}
    out: dict[str, Any] = {}
    for name, batches_of in ways.items():
        epochs = [batches_of(e) for e in range(reps)]
        out[name] = {"padding": summary([padding_share(b, lengths) for b in epochs])}
        if labels is not None:
            out[name]["label_share"] = summary([label_share(b, labels) for b in epochs])
    return out


def text_lengths(dataset: str, source: str, max_length: int) -> tuple[list[int], list[Any]]:
    from mm.config import load_config
    from mm.data import build_splits
    from mm.encoders import TextEncoder

    data = (["data.task=shape"] if dataset == "synthetic" else [f"data.dataset={dataset}", "data.label_key=label"])
    cfg = load_config(None, [*data, "data.modalities=[text]"])
    encoder = TextEncoder(source, max_length=max_length)
    splits, _ = build_splits(cfg.data, {"text": encoder})
    return splits["train"].lengths()["text"], splits["train"].labels


def speak(texts: list[str], labels: list[Any], out: Path) -> Path:
    """A manifest folder of spoken sentences (``espeak-ng``, 16 kHz): recordings whose lengths vary like
    the sentences', the audio padding row's data (no recording of varied length installs offline)."""
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        wav = out / "audio" / f"{i}.wav"
        if not wav.is_file():
            subprocess.run(["espeak-ng", "-w", str(wav), text], check=True, capture_output=True)
        rows.append(json.dumps({"audio": f"audio/{i}.wav", "label": label}) + "\n")
    (out / "train.jsonl").write_text("".join(rows))
    return out


def audio_lengths(folder: Path) -> tuple[list[int], list[Any]]:
    """Samples at 16 kHz (cut at 10 s) of a manifest folder's training recordings, from file headers."""
    from mm.data.manifest import read_split
    from mm.encoders.audio import clip_samples

    rows = [r for r in read_split(folder, "train") if r.get("audio")]
    return [clip_samples(r["audio"], folder, 16000, 160000) for r in rows], [r.get("label") for r in rows]


def data_path(modality: str, overrides: list[str], batches: int, reps: int) -> dict[str, Any]:
    """Loader samples/s (0 and 2 workers) and model-step samples/s for one modality, interleaved."""
    from mm.config import load_config
    from mm.prepare import prepare
    from mm.run.optim import build_optimizer
    from mm.run.runtime import epoch_batches

    cfg = load_config(None, [*overrides, f"data.modalities=[{modality}]", f"encoders.{modality}.trainable=full",
                             "data.cache_features=off", "wandb.mode=disabled"])
    prep = prepare(cfg, device=torch.device("cpu"))
    size = cfg.train.batch_size
    plan = epoch_batches(len(prep.splits["train"]), size, 0, 0)[:batches]
    model = prep.model.train()
    optimizer = build_optimizer(model, cfg.optim)
    collated = list(prep.loader("train", plan[:3]))

    def load(workers: int):
        def measure(rep: int) -> dict[str, float]:
            prep.cfg.data.num_workers = workers
            start = time.perf_counter()
            n = sum(len(b["label"]) for b in prep.loader("train", plan))  # worker start-up included
            return {"samples_per_s": n / (time.perf_counter() - start)}
        return measure

    def step(rep: int) -> dict[str, float]:
        start = time.perf_counter()
        for batch in collated:
            model.head.loss(model(batch), batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {"samples_per_s": sum(len(b["label"]) for b in collated) / (time.perf_counter() - start)}

    step(-1)  # warm-up, not timed
    results = interleave({"loader_w0": load(0), "loader_w2": load(2), "model_step": step}, reps)
    return {"results": results, "ratios": {f"{modality} loader w{w} / model step":
                                           ratios(results, "samples_per_s", f"loader_w{w}", "model_step") for w in (0, 2)}}


def decodes_per_epoch(overrides: list[str], n_train: int) -> dict[str, int]:
    """Pictures decoded by one epoch of ``mm.train.train`` (image trainable: no feature cache), per split."""
    import mm.encoders.image as image
    import mm.train as mm_train
    from mm.config import load_config

    counts: Counter[str] = Counter()
    real = image.read_image

    def counting(path: Path):
        counts[Path(path).parent.name] += 1
        return real(path)

    image.read_image = counting
    try:
        mm_train.train(load_config(None, [*overrides, "data.modalities=[image]", "train.epochs=1",
                                          f"data.synthetic.n_train={n_train}", "wandb.mode=disabled"]),
                       mm_train.RunOptions(progress=False, plots=False))
    finally:
        image.read_image = real
    return dict(counts)


def data_rows(settings: dict[str, Any], command: str, per_modality: dict[str, dict[str, Any]],
              decodes: dict[str, int], n_train: int) -> dict[str, Any]:
    results = {f"{m} {k}": v for m, r in per_modality.items() for k, v in r["results"].items()}
    all_ratios = {k: v for r in per_modality.values() for k, v in r["ratios"].items()}
    return row("data_path", command, results, all_ratios, settings,
               notes="loader = dataset + collate through a DataLoader (worker start-up included); model step = "
                     "forward + backward + optimizer on 3 collated batches; ratio > 1: the data keeps up",
               image_decodes_one_epoch={"by_split": decodes, "train_samples": n_train})
