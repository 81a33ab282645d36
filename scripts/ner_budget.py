#!/usr/bin/env python
"""Size an NER config's CPU budget against a reference run of known wall time, by ratios.

    python scripts/ner_budget.py DATASET --config configs/ner.yaml [--reps 6] [--set OVERRIDE ...] \
        [--ref-steps 300 --ref-minutes 6 --ref OVERRIDE ...]

A full CoNLL-2003-sized run takes too long to time on a shared machine, and an absolute timing
there says little. This measures, on the same machine and in the same process, alternating the two
so that load drifts cancel: the seconds per optimizer step of the config (its own batches: length
bucketed or not) and of the reference (the README's earlier NER command: no word features, no CRF,
random batches), and the seconds per evaluation batch of each. From the reference's known wall time
(``--ref-minutes`` for ``--ref-steps`` steps plus the evaluation of val and test), it solves the
reference machine's seconds per step, then predicts the config's full run there: its steps
(``train.epochs`` x batches per epoch, or ``train.max_steps``), a validation per epoch (or per
``train.eval_every``) and the final test. DATASET is a folder of the corpus's shape
(``scripts/make_ner_lengths.py`` writes one with CoNLL-2003's sizes and sentence lengths).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from mm.config import load_config
from mm.data import build_splits, training_classes
from mm.data.collate import Collator
from mm.model import build_model
from mm.run.optim import build_optimizer
from mm.run.runtime import epoch_batches

REFERENCE = ["data.modalities=[text]", "head.name=token", "fusion.name=text_tokens", "encoders.text.trainable=full",
             "train.metric=entity_f1", "encoders.text.word_features=false", "head.constrained=false"]


def setup(cfg, dataset: str):
    classes = training_classes(cfg.data, "token")
    model = build_model(cfg, len(classes), classes)
    splits, _ = build_splits(cfg.data, dict(model.encoders), classes, head="token")
    collate = Collator(["text"], dict(model.encoders), head="token")
    return model, splits, collate


def step_seconds(model, optimizer, batch) -> float:
    model.train()
    start = time.perf_counter()
    optimizer.zero_grad()
    model.head.loss(model(batch), batch).backward()
    optimizer.step()
    return time.perf_counter() - start


@torch.no_grad()
def eval_seconds(model, batch) -> float:
    model.eval()
    start = time.perf_counter()
    model.head.decode_tags(model(batch), batch["label"] != -100)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--config", required=True)
    parser.add_argument("--reps", type=int, default=6, help="timed steps (and eval batches) of each, alternating")
    parser.add_argument("--ref-steps", type=int, default=300)
    parser.add_argument("--ref-minutes", type=float, default=6.0)
    parser.add_argument("--ref", nargs="*", default=[], help="more overrides of the reference")
    parser.add_argument("--set", nargs="*", default=[], help="overrides of the config")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    common = [f"data.dataset={args.dataset}", "wandb.mode=disabled"]
    cfgs = {"config": load_config(args.config, [*common, *args.set]), "reference": load_config(None, [*REFERENCE, *common, *args.ref])}
    runs = {}
    for name, cfg in cfgs.items():
        model, splits, collate = setup(cfg, args.dataset)
        n = len(splits["train"])
        lengths = splits["train"].lengths()["text"] if cfg.data.bucket_by_length else None
        train_batches = epoch_batches(n, cfg.train.batch_size, cfg.seed, 0, lengths)
        eval_size = cfg.train.eval_batch_size
        runs[name] = {"cfg": cfg, "model": model, "optimizer": build_optimizer(model, cfg.optim), "splits": splits,
                      "collate": collate, "train_batches": train_batches,
                      "val_batches": [list(range(i, min(i + eval_size, len(splits["val"])))) for i in range(0, len(splits["val"]), eval_size)],
                      "test_batches": [list(range(i, min(i + eval_size, len(splits["test"])))) for i in range(0, len(splits["test"]), eval_size)],
                      "step": [], "eval": []}
    # warm-up, then alternate: a step of each, an eval batch of each
    for run in runs.values():
        step_seconds(run["model"], run["optimizer"], run["collate"]([run["splits"]["train"][i] for i in run["train_batches"][0]]))
    g = torch.Generator().manual_seed(1)
    for _ in range(args.reps):
        for run in runs.values():
            k = int(torch.randint(len(run["train_batches"]), (1,), generator=g))
            batch = run["collate"]([run["splits"]["train"][i] for i in run["train_batches"][k]])
            run["step"].append(step_seconds(run["model"], run["optimizer"], batch))
        for run in runs.values():
            k = int(torch.randint(len(run["val_batches"]), (1,), generator=g))
            batch = run["collate"]([run["splits"]["val"][i] for i in run["val_batches"][k]])
            run["eval"].append(eval_seconds(run["model"], batch))
    out = {}
    for name, run in runs.items():
        step, per_eval = sum(run["step"]) / len(run["step"]), sum(run["eval"]) / len(run["eval"])
        cfg = run["cfg"]
        per_epoch = len(run["train_batches"])
        steps = cfg.train.max_steps or cfg.train.epochs * per_epoch
        validations = (math.ceil(steps / cfg.train.eval_every) if cfg.train.eval_every
                       else math.ceil(steps / per_epoch))
        out[name] = {"steps": steps if name == "config" else args.ref_steps, "s_per_step_here": step,
                     "s_per_eval_batch_here": per_eval, "val_batches": len(run["val_batches"]),
                     "test_batches": len(run["test_batches"]), "validations": validations if name == "config" else 1}
    ref, mine = out["reference"], out["config"]
    # the reference's wall time in units of its own step here: steps + one validation + test
    ref_units = ref["steps"] + (ref["val_batches"] + ref["test_batches"]) * ref["s_per_eval_batch_here"] / ref["s_per_step_here"]
    s_per_unit = args.ref_minutes * 60 / ref_units  # seconds of the reference machine per reference step
    mine_units = (mine["steps"] * mine["s_per_step_here"]
                  + (mine["validations"] * mine["val_batches"] + mine["test_batches"]) * mine["s_per_eval_batch_here"]) / ref["s_per_step_here"]
    out["step_ratio"] = mine["s_per_step_here"] / ref["s_per_step_here"]
    out["predicted_minutes"] = mine_units * s_per_unit / 60
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
