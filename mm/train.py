"""The one training loop: ``train(cfg) -> dict``.

Reads top to bottom: set-up (seed, device, run folder), data and model, optimizer and schedule,
resume, the loop (accumulate, clip, step, log, validate, checkpoint), then the test of the best
checkpoint. No callbacks: everything a run does is written here.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mm.analysis.evaluation import evaluate
from mm.analysis.reports import write_test_reports
from mm.config import Config, to_dict, to_yaml
from mm.data.validate import check_dataset
from mm.encoders.policies import gradual_blocks, thaw
from mm.features import encode_with_cache
from mm.mixing import Mixing
from mm.model import MultimodalModel, parameter_counts
from mm.prepare import prepare
from mm.run import distributed
from mm.run.checkpoint import (
    WEIGHTS,
    frozen_backbones,
    load_weights,
    resume_point,
    save_checkpoint,
    save_weights,
)
from mm.run.distributed import Dist
from mm.run.optim import NonFiniteGuard, build_optimizer, build_scheduler
from mm.run.preemption import Preempted, StopSignals
from mm.run.resume import apply_learning_rates, check_resume, config_hash
from mm.run.runtime import (
    autocast,
    epoch_batches,
    pick_device,
    seed_everything,
    sort_lengths,
    to_device,
    train_subset,
)
from mm.tracking import Tracker


def default_run_name(cfg: Config) -> str:
    data = cfg.data.task if cfg.data.dataset == "synthetic" else Path(cfg.data.dataset).name
    return f"{data}-{'+'.join(sorted(cfg.data.modalities))}-{cfg.fusion.name}-s{cfg.seed}"


def run_folder(cfg: Config, d: Dist | None = None) -> Path:
    """``out_dir/name``, created; a new run never overwrites an old one (``-2``, ``-3``... are appended)."""
    d = d or Dist()
    base = Path(cfg.train.out_dir) / (cfg.name or default_run_name(cfg))
    if cfg.train.resume:
        if not (base / "checkpoints").is_dir():
            raise FileNotFoundError(f"train.resume: no checkpoint to resume in {base}/checkpoints")
        return base
    run_dir, k = base, 1
    while d.main:  # claimed by creating it: two runs starting at once never share a folder
        try:
            run_dir.mkdir(parents=True)
            break
        except FileExistsError:
            k += 1
            run_dir = base.with_name(f"{base.name}-{k}")
    return distributed.broadcast(run_dir, d)  # rank 0 picks the name; every rank uses it


class NonFiniteError(RuntimeError):
    """Training diverged: non-finite losses or gradients for ``train.max_nonfinite`` steps in a row,
    or non-finite weights about to be checkpointed. Nothing non-finite was saved."""


@dataclass
class EarlyStopping:
    """Tracks the best validation value; ``should_stop`` after ``patience`` validations without an
    improvement larger than ``min_delta`` (``patience`` 0 never stops)."""

    mode: str = "max"
    patience: int = 0
    min_delta: float = 0.0
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record a validation; return True when it is a new best."""
        if self.best is None or (value - self.best if self.mode == "max" else self.best - value) > self.min_delta:
            self.best, self.best_step, self.bad_evals = value, step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_evals >= self.patience


def update_gradual(model: MultimodalModel, cfg: Config, step: int, epoch: int) -> list[str]:
    """Open more blocks of ``gradual`` encoders when their schedule says so; returns what opened."""
    opened = []
    for m, enc in model.encoders.items():
        if enc.policy == "gradual":
            pc = getattr(cfg.encoders, m)
            k = gradual_blocks(step if pc.gradual_unit == "step" else epoch, pc.gradual_every)
            if k > enc.thawed:
                opened += [f"{m}.{name}" for name in thaw(enc, k)]
    return opened


def train_step(model: MultimodalModel, batch: dict, device: torch.device, precision: str, scale: float,
               mixing: Mixing | None = None, forward: torch.nn.Module | None = None,
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """Forward and backward of one micro-batch (mixed, when mixup/cutmix is on); the loss is scaled
    for gradient accumulation (and by fp16's GradScaler). ``forward`` is what runs the model: the
    DDP / FSDP / compiled wrapper of ``model``, or ``model`` itself. Returns the unscaled loss,
    detached and left on the device (no host sync per step)."""
    batch = to_device(batch, device)
    if mixing is not None and mixing.active:
        batch = mixing(batch)
    with autocast(device, precision):
        logits = (model if forward is None else forward)(batch, outputs=encode_with_cache(model, batch))
    loss = model.head.loss(logits, batch)
    scaled = loss * scale
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss.detach()


def train(cfg: Config) -> dict[str, Any]:
    """Train the model a config describes; return the final metrics and where everything went.

    Returns:
        ``{"run_dir", "best_step", "val": {...}, "test": {...}, "params": {...}, ...}``, also
        written to ``run_dir/results.json``.
    """
    t_start = time.perf_counter()
    # Under torchrun every rank runs this function; rank 0 alone writes the run folder, checkpoints
    # and W&B (``mm.run.distributed``). All ranks seed alike, so they build the same initial model.
    d = distributed.init(pick_device(cfg.train.device))
    seed_everything(cfg.seed, cfg.train.deterministic)
    # The data, checked before any model is built: every problem at once, naming file and line. The
    # val and test files are decoded now too (training files are read as training goes).
    if cfg.data.dataset != "synthetic":
        data_report = check_dataset(cfg.data, cfg.data.modalities, cfg.head.name, deep=("val", "test"))
        if data_report.warnings and d.main:
            print(data_report.format(), file=sys.stderr)
    run_dir = run_folder(cfg, d)
    ckpt_dir = run_dir / "checkpoints"
    config = to_dict(cfg)
    # Resume from the newest complete checkpoint (a damaged one is skipped, with a warning), and only
    # with the config it was trained with, unless train.resume_allow_changes names the keys.
    resume_from, resume_state, changes = None, None, {}
    if cfg.train.resume:
        found = resume_point(ckpt_dir)
        if found is None:
            raise FileNotFoundError(f"train.resume: no complete checkpoint in {ckpt_dir}")
        resume_from, resume_state = found
        changes = check_resume(resume_state, config, d)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        if changes:  # allowed with train.resume_allow_changes: recorded, then applied
            with (run_dir / "resume_changes.jsonl").open("a") as f:
                f.write(json.dumps({"step": resume_state["step"], "changes": changes}, default=str) + "\n")

    # Model, data (decoded by the encoders), collate and feature cache: ``mm.prepare``. The class
    # list comes from the training split (or the checkpoint, on resume). Rank 0 builds the feature
    # cache first; the other ranks then find it on disk.
    with distributed.main_first(d):
        job = prepare(cfg, classes=resume_state["classes"] if resume_state else None,
                      device=distributed.rank_device(pick_device(cfg.train.device), d), dist=d)
    model, splits, classes, device, loader = job.model, job.splits, job.classes, job.device, job.loader
    bad_samples = {s: len(getattr(ds, "bad", ())) for s, ds in splits.items()}  # data.on_error=skip
    if d.main:
        (run_dir / "classes.json").write_text(json.dumps(classes))

    # Schedule length: optimizer steps per epoch (accumulated micro-batches) x epochs. A micro-batch
    # holds batch_size samples per rank: the global batch is batch_size x ranks x accumulation.
    accum, global_micro = cfg.optim.grad_accum_steps, cfg.train.batch_size * d.world
    train_idx = train_subset(len(splits["train"]), cfg.data.train_fraction, cfg.seed)
    n_train = len(train_idx)

    # data.bucket_by_length: batches of samples of similar length (read once from the tokenizer and
    # file headers), so that less of each batch is padding.
    lengths = sort_lengths(splits["train"].lengths(), train_idx) if cfg.data.bucket_by_length else None

    def epoch_micro(epoch: int) -> list[list[int]]:
        """The global micro-batches of an epoch (a pure function of seed, epoch and the lengths, so a
        resumed run sees the same batches); each rank reads its slice of each."""
        micro = epoch_batches(n_train, global_micro, cfg.seed, epoch, lengths)
        return distributed.usable([[train_idx[i] for i in b] for b in micro], d)

    steps_per_epoch = math.ceil(len(epoch_micro(0)) / accum)
    total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs
    eval_every = cfg.train.eval_every or steps_per_epoch
    mixing = Mixing(cfg.train.mixup, cfg.train.cutmix, cfg.train.mix_prob)
    metric_key = f"val/{cfg.train.metric}"
    stopper = EarlyStopping(cfg.train.metric_mode, cfg.train.patience, cfg.train.min_delta)

    # Resume: weights, optimizer, schedule, counters and the RNG all continue where they stopped.
    # Backbones frozen for the whole run are not written to checkpoints: they reload from their source.
    omit = frozen_backbones(model)
    step = 0
    if resume_state:
        load_weights(model, resume_from / WEIGHTS)
    # Wrap for the ranks (DDP / FSDP), compile if asked, then the optimizer over the wrapped
    # parameters (FSDP's are sharded). fp16 scales the loss so small gradients survive.
    strategy = cfg.train.strategy
    forward = wrap(model, d, cfg, device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    base_lrs = list(scheduler.base_lrs)  # the config's, applied after a resume loads the saved ones
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    if resume_state:
        distributed.load_optimizer_state(model, optimizer, resume_state["optimizer"], strategy, d)
        scheduler.load_state_dict(resume_state["scheduler"])
        if "scaler" in resume_state:
            scaler.load_state_dict(resume_state["scaler"])
        step = resume_state["step"]
        apply_learning_rates(optimizer, scheduler, base_lrs, step)
        stopper = EarlyStopping(**resume_state["early_stopping"])
        rngs = resume_state.get("rng_ranks") or [resume_state["rng"]]
        torch.set_rng_state(rngs[d.rank] if len(rngs) == d.world else rngs[0])
    if d.enabled and not resume_state:
        torch.manual_seed(cfg.seed + 7919 * d.rank)  # dropout masks differ between ranks
    counts = parameter_counts(model)
    tracker = Tracker(
        run_dir, to_dict(cfg), mode=cfg.wandb.mode, project=cfg.wandb.project, entity=cfg.wandb.entity,
        group=cfg.wandb.group, name=run_dir.name, tags=cfg.wandb.tags, job_type=cfg.wandb.job_type,
        resume_step=step if resume_state else None,
    ) if d.main else Silent()
    tracker.summary(counts)

    def diverged(message: str) -> NonFiniteError:
        tracker.finish(exit_code=1)
        return NonFiniteError(message)

    def checkpoint(best: bool) -> None:
        """One complete checkpoint (weights + state), switched in atomically as ``last`` (and ``best``)."""
        check_finite()
        bad = [n for n, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]
        if bad:  # never saved: the previous checkpoint stays the one to resume
            raise diverged(f"step {step}: non-finite weights in {bad[:3]} ({len(bad)} tensors); "
                                 f"nothing saved, the last good checkpoint is {ckpt_dir / 'last'}")
        weights = distributed.model_state(model, strategy, d)  # a collective under FSDP
        optim_state = distributed.optimizer_state(model, optimizer, strategy, d)
        rngs = distributed.gather(torch.get_rng_state(), d)
        if d.main:
            state = {"optimizer": optim_state, "scheduler": scheduler.state_dict(), "step": step,
                     "early_stopping": vars(stopper), "rng": rngs[0], "rng_ranks": rngs,
                     "scaler": scaler.state_dict(), "world": d.world, "strategy": strategy,
                     "global_batch": global_micro * accum, "classes": classes, "nonfinite": nonfinite,
                     "config": config, "config_hash": config_hash(config)}
            save_checkpoint(ckpt_dir, step, lambda path: save_weights(model, path, omit, weights), state, best,
                            cfg.train.keep_last_n)

    progress = _progress(total_steps, step, cfg.train.progress and d.main)
    postfix: dict[str, str] = {}
    model.train()
    optimizer.zero_grad(set_to_none=True)
    window_loss, window_n, window_t, samples = 0.0, 0, time.perf_counter(), 0
    # Non-finite guard (mm.run.optim.NonFiniteGuard): a step whose gradients are not finite is skipped and
    # counted, on the device where it can be (no host sync per step); the counts come to the host once
    # per logging window and before each checkpoint, and the run stops there once train.max_nonfinite
    # steps in a row were skipped (fp16's GradScaler skips its own overflows: it then gets 32 more
    # steps, enough to lower its scale from 2^16 below 2^-16, before the run stops).
    nonfinite = {"skipped": resume_state.get("nonfinite", {}).get("skipped", 0) if resume_state else 0, "run": 0}
    guard = NonFiniteGuard(optimizer, scaler, device, nonfinite["skipped"])
    patience_nonfinite = cfg.train.max_nonfinite + (32 if cfg.train.precision == "fp16" else 0)

    def check_finite() -> None:
        """Read the guard's counts (a host sync); stop when too many steps in a row were skipped."""
        nonfinite["skipped"], nonfinite["run"] = guard.read()
        if nonfinite["run"] >= patience_nonfinite:
            raise diverged(
                f"by step {step}: {nonfinite['run']} optimizer steps in a row had non-finite losses or "
                f"gradients (train.max_nonfinite={cfg.train.max_nonfinite}); lower optim.lr / "
                f"optim.backbone_lr or turn on optim.max_grad_norm. Nothing non-finite was saved; "
                f"the last good checkpoint is {ckpt_dir / 'last'}")
    with StopSignals() as signals:  # SIGTERM / SIGINT / SIGUSR1: checkpoint at the next step, then exit
        while step < total_steps and not stopper.should_stop:
            # One epoch's batches, grouped into optimizer steps; a resumed run skips those done.
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            micro = epoch_micro(epoch)
            groups = [micro[i : i + accum] for i in range(0, len(micro), accum)][done_in_epoch:]
            splits["train"].set_epoch(epoch)  # augmentation drawn from (seed, epoch, sample)
            batches = iter(loader("train", [distributed.shard(b, d) for group in groups for b in group]))
            for group in groups:
                # Gradual unfreezing: open more backbone blocks when the schedule says so.
                opened = update_gradual(model, cfg, step, step // steps_per_epoch)
                if opened:
                    forward = wrap(model, d, cfg, device) if d.enabled else forward  # DDP must see the new set
                    tracker.log({"train/trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}, step)
                # Accumulate gradients over the group's micro-batches (ranks average them on the last
                # one), then clip and step. Each rank's loss is weighted by its share of the global
                # micro-batch, so uneven shards average exactly like one process would.
                for i, micro_batch in enumerate(group):
                    batch = next(batches)
                    weight = len(batch["label"]) * d.world / len(micro_batch)  # 1 when shards are even
                    with distributed.no_sync(forward, sync=i == len(group) - 1):
                        window_loss += train_step(model, batch, device, cfg.train.precision, weight / len(group),
                                                  mixing, forward, scaler)
                    window_n += 1
                    samples += len(batch["label"]) * d.world
                # Clip (or just measure) the gradient norm; a non-finite one skips the update (the guard).
                # Ranks agree: their gradients are already averaged.
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                      cfg.optim.max_grad_norm or math.inf)
                guard.step(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                progress.update(1)

                # Log the running train loss and learning rates every 10 steps and before each
                # validation (so a resumed run's windows line up with an uninterrupted one's).
                is_eval = step % eval_every == 0 or step == total_steps
                if step % 10 == 0 or is_eval:
                    elapsed = time.perf_counter() - window_t
                    lrs = {f"train/lr/{g['name'].split('/')[0]}": g["lr"] for g in optimizer.param_groups}
                    # The summed loss and the guard's counts come back to the host here, once per window.
                    check_finite()
                    mean_loss = distributed.mean(float(window_loss) / window_n, d)
                    tracker.log({"train/loss": mean_loss, "train/epoch": step / steps_per_epoch,
                                 "train/samples_per_s": samples / elapsed, "train/nonfinite_skipped": nonfinite["skipped"],
                                 **lrs}, step)
                    postfix["loss"] = f"{mean_loss:.3f}"
                    progress.set_postfix(postfix)
                    window_loss, window_n, window_t, samples = 0.0, 0, time.perf_counter(), 0

                # Validate; keep the best weights by the chosen metric; checkpoint for --resume.
                if is_eval:
                    val = {f"val/{k}": v for k, v in evaluate(model, loader("val"), device, cfg.train.precision, dist=d).items()}
                    model.train()
                    tracker.log(val, step)
                    if metric_key not in val:
                        raise KeyError(f"train.metric: {cfg.train.metric!r} is not a val metric; have {sorted(val)}")
                    improved = stopper.update(val[metric_key], step)
                    postfix[f"val_{cfg.train.metric}"] = f"{val[metric_key]:.3f}"
                    progress.set_postfix(postfix)
                    checkpoint(best=improved)
                # A stop signal: checkpoint this step (unless validation just did), flush, exit 128 + signal.
                stop = signals.requested is not None
                if distributed.mean(float(stop), d) > 0 if d.enabled else stop:
                    if not is_eval:
                        checkpoint(best=False)
                    progress.close()
                    tracker.finish(exit_code=1)
                    raise Preempted(signals.requested or signal.SIGTERM, step, str(run_dir))
                if step >= total_steps or stopper.should_stop:  # done, or early stopping
                    break
    progress.close()

    # Test the best checkpoint (the one validation chose), never the last one by default.
    distributed.barrier(d)  # rank 0 has written it
    best = ckpt_dir / "best" / WEIGHTS
    if strategy == "fsdp" and d.enabled:
        distributed.load_model_state(model, load_file(str(best)), strategy, d)
    else:
        load_weights(model, best, verify=False)  # same model, same frozen weights
    val = evaluate(model, loader("val"), device, cfg.train.precision, dist=d)
    outputs: dict[str, list] = {}
    test = evaluate(model, loader("test"), device, cfg.train.precision, outputs, dist=d)
    if not d.main:  # the other ranks are done: rank 0 writes the reports and results, then all close together
        distributed.close(d)
        return {"run_dir": str(run_dir), "rank": d.rank, "best_step": stopper.best_step, "val": val, "test": test}
    tracker.log({**{f"test/{k}": v for k, v in test.items()}}, step)
    # The test reports in run_dir/report (and W&B tables): per class, label or entity type; the
    # predictions in split order (scripts/compare.py pairs two runs on them); the 95 % bootstrap
    # interval of the metric; for classification, calibration (ECE, reliability diagram).
    extra = write_test_reports(model.head, cfg.head.name, outputs, classes, cfg.train.metric, run_dir / "report",
                               tracker, step, plot=cfg.train.plots)
    results = {
        "run_dir": str(run_dir), "best_step": stopper.best_step, "steps": step, "stopped_early": stopper.should_stop,
        "val": val, "test": test, **extra, "classes": len(classes), "params": counts,
        "wall_time_s": round(time.perf_counter() - t_start, 2), "feature_cache": job.feature_cache,
        "nonfinite_skipped": nonfinite["skipped"], "bad_samples": bad_samples,
    }
    tracker.summary({f"best/{metric_key}": stopper.best, "best/step": stopper.best_step,
                     "nonfinite_skipped": nonfinite["skipped"], **{f"bad_samples/{k}": v for k, v in bad_samples.items()},
                     "stopped_early": stopper.should_stop, **{f"test/{k}": v for k, v in test.items()}})
    if cfg.wandb.log_model:  # the best and last checkpoints as W&B model artifacts
        tracker.log_model(ckpt_dir)
    tracker.finish()
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    distributed.close(d)
    return results


def wrap(model: MultimodalModel, d: Dist, cfg: Config, device: torch.device) -> torch.nn.Module:
    """What the loop runs forward through: DDP / FSDP under torchrun, compiled when asked."""
    if d.enabled and cfg.train.strategy == "fsdp" and any(e.policy == "gradual" for e in model.encoders.values()):
        raise ValueError("train.strategy=fsdp cannot follow gradual unfreezing (FSDP fixes the trainable set)")
    forward = distributed.wrap(model, d, cfg.train.strategy, device, cfg.train.sync_batchnorm)
    return torch.compile(forward) if cfg.train.compile else forward


class Silent:
    """The tracker of ranks other than 0: they log nothing (rank 0 logs the job)."""

    def log(self, *args: Any, **kwargs: Any) -> None: ...
    def summary(self, *args: Any, **kwargs: Any) -> None: ...
    def log_image(self, *args: Any, **kwargs: Any) -> None: ...
    def log_table(self, *args: Any, **kwargs: Any) -> None: ...
    def finish(self, *args: Any, **kwargs: Any) -> None: ...


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True)
