"""The text-classification job the loop and HF Trainer rows share, and its three ways of training.

Data: real English sentences that install offline (``scripts/make_fortunes.py``): Debian's
``fortunes`` package ships its cookies by topic; four topics with distinct vocabulary make the
classes: computers, politics, science and songs-poems, one cookie per line of 2 to 120 words like
the issue's news sentences, 570 per class, split 2,000 train / 80 val / 200 test. Length goes
with the label here too (songs-poems are twice as long as the rest, median 36 words against
16-19), the trap that makes naive length grouping hurt accuracy. Without the package (CI), the
synthetic benchmark's captions stand in (``--text synthetic``: the ``shape`` task, text only).

Training, the same model (``mm.model.build_model``: MiniLM, mean pooling, concat fusion MLP,
classification head; the same initial weights from the seed), batch size, learning rate (one for
all parameters), linear decay without warm-up, no weight decay, clipping at 1.0, steps and
sequence limit, in three loops: ``mm.train.train``; a minimal hand-written PyTorch loop over mm's
own batches; Hugging Face's ``Trainer`` over the same sentences tokenized by the same tokenizer,
padded per batch by ``DataCollatorWithPadding``, with the mm model inside a small adapter (so only
the loop and the batching differ).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import steady_rate


@dataclass
class TextJob:
    """One training job: where its data is, the model and the optimisation settings."""

    dataset: str  # a manifest folder, or "synthetic" (the shape task's captions)
    source: str = "minilm"
    batch_size: int = 32
    steps: int = 60
    lr: float = 1e-4
    max_length: int = 128
    skip: int = 10  # warm-up steps left out of the throughput

    def overrides(self, seed: int, out: Path, bucket: bool = False) -> list[str]:
        data = (["data.task=shape"] if self.dataset == "synthetic"
                else [f"data.dataset={self.dataset}", "data.label_key=label"])
        return [*data, "data.modalities=[text]", f"encoders.text.source={self.source}", "encoders.text.trainable=full",
                f"encoders.text.max_length={self.max_length}", f"optim.lr={self.lr}", f"optim.backbone_lr={self.lr}",
                "optim.weight_decay=0", "optim.schedule=linear", "optim.warmup_ratio=0", "optim.max_grad_norm=1.0",
                f"train.batch_size={self.batch_size}", f"train.max_steps={self.steps}",
                "wandb.mode=disabled", "data.cache_features=off", f"seed={seed}",
                f"data.bucket_by_length={str(bucket).lower()}", f"name=s{seed}"]

    def config(self, seed: int, out: Path, bucket: bool = False):
        from mm.config import load_config

        return load_config(None, self.overrides(seed, out, bucket))

    def options(self, out: Path):
        """How the job's runs go: into ``out``, no progress bar, no plots."""
        from mm.run.options import RunOptions

        return RunOptions(out_dir=str(out), progress=False, plots=False)


@contextmanager
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_mm(job: TextJob, seed: int, bucket: bool = False) -> dict[str, float]:
    """``mm.train.train``: steady samples/s (its logging windows after the first) and test accuracy."""
    import mm.train as mm_train

    with scratch() as out:
        results = mm_train.train(job.config(seed, out, bucket), job.options(out))
        rows = [json.loads(x) for x in (Path(results["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    every = [r for r in rows if "train/samples_per_s" in r]
    windows = [r for r in every if r["step"] > job.skip]
    # Equal windows of samples (10 steps): the overall rate is the harmonic mean of the windows' rates.
    rate = len(windows) / sum(1 / r["train/samples_per_s"] for r in windows)
    whole = len(every) / sum(1 / r["train/samples_per_s"] for r in every)
    return {"samples_per_s": rate, "samples_per_s_all": whole, "accuracy": results["test"]["accuracy"]}


def _prepared(job: TextJob, seed: int, out: Path):
    from mm.prepare import prepare
    from mm.run.runtime import seed_everything

    cfg = job.config(seed, out)
    seed_everything(cfg.seed, cfg.train.deterministic)  # as mm.train does: the same initial weights
    return cfg, prepare(cfg, device=torch.device("cpu"))


def run_hand(job: TextJob, seed: int) -> dict[str, float]:
    """The simplest correct loop: mm's model and batches, forward, loss, backward, clip, step."""
    from mm.run.runtime import epoch_batches

    with scratch() as out:
        cfg, prep = _prepared(job, seed, out)
        model = prep.model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        # The same optimizer as mm and HF Trainer (fused AdamW), so the row measures the loop alone.
        optimizer = torch.optim.AdamW(params, lr=job.lr, weight_decay=0.0, fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / job.steps))
        batches = epoch_batches(len(prep.splits["train"]), job.batch_size, seed, 0)[: job.steps]
        times = [time.perf_counter()]
        for batch in prep.loader("train", batches):
            loss = model.head.loss(model(batch), batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter())
    return {"samples_per_s": steady_rate(times, job.batch_size, job.skip),
            "samples_per_s_all": steady_rate(times, job.batch_size, 0)}


class TrainerAdapter(torch.nn.Module):
    """The mm model behind the keyword interface ``transformers.Trainer`` calls: tokens in, loss out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        text = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            text["token_type_ids"] = token_type_ids
        batch = {"text": text, "label": labels, "index": torch.arange(len(labels)),
                 "present": {"text": torch.ones(len(labels), dtype=torch.bool)}}
        logits = self.model(batch)
        return {"loss": self.model.head.loss(logits, batch), "logits": logits}


def run_trainer(job: TextJob, seed: int, group_by_length: bool) -> dict[str, float]:
    """HF ``Trainer`` (default sampler, or ``group_by_length=True``): steady samples/s, test accuracy."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from mm.data import resolve_dataset
    from mm.data.manifest import read_split
    from mm.labels import label_at

    class StepTimes(TrainerCallback):
        """When training began, then when each optimizer step ended."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter())

    with scratch() as out:
        cfg, prep = _prepared(job, seed, out)
        tokenizer = prep.model.encoders["text"].tokenizer
        root, label_key = resolve_dataset(cfg.data)

        def encoded(split: str) -> list[dict[str, Any]]:
            rows = read_split(root, split)
            enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=job.max_length)
            return [{**{k: v[i] for k, v in enc.items()}, "labels": prep.classes.index(label_at(r, label_key))}
                    for i, r in enumerate(rows)]

        args = TrainingArguments(
            output_dir=str(out / "hf"), per_device_train_batch_size=job.batch_size, per_device_eval_batch_size=128,
            learning_rate=job.lr, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=0,
            max_steps=job.steps, group_by_length=group_by_length, seed=seed, save_strategy="no", eval_strategy="no",
            logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
            remove_unused_columns=False)
        timer = StepTimes()
        trainer = Trainer(model=TrainerAdapter(prep.model), args=args, train_dataset=encoded("train"),
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                          callbacks=[timer])
        trainer.train()
        test = trainer.predict(encoded("test"))
    accuracy = float((test.predictions.argmax(-1) == test.label_ids).mean())
    return {"samples_per_s": steady_rate(timer.times, job.batch_size, job.skip),
            "samples_per_s_all": steady_rate(timer.times, job.batch_size, 0), "accuracy": accuracy}


def padding_share(batches: list[list[int]], lengths: list[int]) -> float:
    """The share of a batch's positions (padded to its longest) that are padding, over all batches."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / max(1, padded)
