"""The one training loop: ``train(cfg) -> dict``.

Reads top to bottom: set-up (seed, ranks, data check, run folder, resume point), model and data,
optimizer and schedule, resume, the loop (accumulate, clip, step, log, validate, checkpoint, stop on
a signal), then the test of the best checkpoint. Each concern is a small piece of ``mm.run``:
``plan`` (which batches), ``step`` (one optimizer step), ``guard`` (non-finite steps), ``unfreeze``
(gradual unfreezing), ``state`` (checkpoints), ``resume``, ``preemption`` (signals), ``distributed``
(ranks), ``progress`` (the loss window) and ``results``. No callbacks: everything a run does is called here.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import torch

from mm.analysis.evaluation import evaluate
from mm.analysis.reports import write_test_reports
from mm.config import Config, to_dict, to_yaml
from mm.mixing import Mixing
from mm.model import parameter_counts
from mm.prepare import check_data, prepare
from mm.run import distributed, resume
from mm.run.folder import default_run_name, run_folder, unlock
from mm.run.guard import Divergence, NonFiniteError, NonFiniteGuard
from mm.run.init_from import init_source, start_classes, start_from
from mm.run.optim import build_optimizer, build_scheduler
from mm.run.options import RunOptions
from mm.run.plan import Plan
from mm.run.preemption import Preempted, StopSignals
from mm.run.progress import Progress, learning_rates
from mm.run.results import load_best, open_tracker, write_results
from mm.run.runtime import pick_device, seed_everything, train_subset
from mm.run.state import Checkpointer, TrainState
from mm.run.step import forward_module, optimizer_step, train_step
from mm.run.stopping import EarlyStopping
from mm.run.unfreeze import open_blocks, trainable_params

# What callers (scripts, tests) reach through this module besides train().
__all__ = ["EarlyStopping", "NonFiniteError", "RunOptions", "default_run_name", "evaluate", "run_folder", "train",
           "train_step", "train_subset"]

DEFAULTS = RunOptions()  # runs/<name>, fresh, with a progress bar and plots


def train(cfg: Config, opts: RunOptions = DEFAULTS) -> dict[str, Any]:
    """Train the experiment ``cfg`` describes, as ``opts`` says (where, resume, what to show); return
    ``{"run_dir", "best_step", "val", "test", "params", ...}`` (``run_dir/results.json``), the same on every rank."""
    t_start = time.perf_counter()
    # Every rank of a torchrun job runs this; rank 0 alone writes. All seed alike: the same initial model.
    d = distributed.init(pick_device(cfg.train.device))
    seed_everything(cfg.seed, cfg.train.deterministic)
    check_data(cfg, warn=d.main)  # every problem at once, naming file and line, before any model is built
    source = init_source(cfg.train.init_from) if cfg.train.init_from else None  # continued fine-tuning
    # The run folder, locked; a finished run is reported as it is; a resume checks its checkpoints and config.
    run_dir, todo = run_folder(cfg, opts, d)
    if todo == "finished":
        return resume.finished(run_dir, d)
    ckpt_dir, config = run_dir / "checkpoints", to_dict(cfg)
    found = resume.find(ckpt_dir, config, d, opts.allow_changes) if todo == "resume" else None
    if d.main:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        resume.record_changes(run_dir, found)  # the config changes a resume was allowed to make

    # Model, data, collate, feature cache (``mm.prepare``; rank 0 first: it builds the cache); a resume's classes.
    with distributed.main_first(d):
        job = prepare(cfg, classes=found.state["classes"] if found else start_classes(cfg, source),
                      device=distributed.rank_device(pick_device(cfg.train.device), d), dist=d)
    model, splits, device = job.model, job.splits, job.device
    bad_samples = {s: len(getattr(ds, "bad", ())) for s, ds in splits.items()}  # data.on_error=skip
    if d.main:
        (run_dir / "classes.json").write_text(json.dumps(job.classes))
    plan = Plan.build(cfg, splits["train"], d)  # steps per epoch, total steps, validation interval
    mixing = Mixing(cfg.train.mixup, cfg.train.cutmix, cfg.train.mix_prob)
    metric_key = f"val/{cfg.train.metric}"
    checkpointer = Checkpointer.build(ckpt_dir, model, cfg, config, job.classes, plan.global_batch, d)

    # A resume's weights, then wrap for the ranks (DDP / FSDP) and compile; the optimizer over the wrapped model.
    resume.load_resumed_weights(model, found)
    if source and not found:  # the source's weights; a grown head keeps the old classes' rows
        start_from(model, source, job.classes, run_dir, d)
    forward = forward_module(model, d, cfg.train, device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, plan.total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    s = TrainState(model, optimizer, scheduler, scaler,
                   EarlyStopping(cfg.train.metric_mode, cfg.train.patience, cfg.train.min_delta))
    # Resume: optimizer, schedule (the config's learning rates), counters, loss window and RNG continue.
    if found:
        resume.restore(s, found, cfg.train.strategy, d, list(scheduler.base_lrs))
    else:
        distributed.seed_ranks(cfg.seed, d)  # dropout masks differ between ranks
    counts = parameter_counts(model)
    tracker = open_tracker(run_dir, cfg, d, s.step if found else None)
    tracker.summary(counts)
    # The non-finite guard skips and counts bad steps on the device; ``divergence`` stops a diverging run.
    guard = NonFiniteGuard(optimizer, scaler, device, resume.skipped_steps(found))
    divergence = Divergence(guard, cfg.train.max_nonfinite, cfg.train.precision, ckpt_dir, tracker)

    progress = Progress(plan.total_steps, s.step, enabled=opts.progress and d.main)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with StopSignals() as signals:  # SIGTERM / SIGINT / SIGUSR1: checkpoint at the next step, then exit
        # One optimizer step per group of micro-batches, until done or early stopping; a resume starts at its step.
        for group, batches in plan.steps(s, splits["train"], job.loader):
            # Gradual unfreezing: open more backbone blocks when the schedule says so (DDP must see them).
            if open_blocks(model, cfg.encoders, s.step, plan.epoch_of(s.step)):
                forward = forward_module(model, d, cfg.train, device) if d.enabled else forward
                tracker.log({"train/trainable_params": trainable_params(model)}, s.step)
            # Accumulate gradients (ranks average them on the last micro-batch), weighted by each rank's share.
            for i, micro in enumerate(group):
                batch = next(batches)
                weight = len(batch["label"]) * d.world / len(micro)  # 1 when shards are even
                with distributed.no_sync(forward, sync=i == len(group) - 1):
                    loss = train_step(model, batch, device, cfg.train.precision, weight / len(group), mixing,
                                      forward, scaler)
                s.window.add(loss, len(batch["label"]) * d.world)
            # Clip, step unless the gradients are not finite (the guard), advance the schedule.
            optimizer_step(model, optimizer, scheduler, scaler, guard, cfg.optim.max_grad_norm)
            s.step += 1
            progress.update(1)

            # Log the running loss and learning rates (the loss and the guard's counts reach the host here).
            if plan.is_log(s.step):
                divergence.check(s.step)
                mean_loss, rate = s.window.flush(d)
                tracker.log({"train/loss": mean_loss, "train/epoch": s.step / plan.steps_per_epoch, "train/samples_per_s": rate,
                             "train/nonfinite_skipped": divergence.skipped, **learning_rates(optimizer)}, s.step)
                progress.show("loss", mean_loss)
            # Validate; keep the best weights by the chosen metric; checkpoint for --resume.
            if plan.is_eval(s.step):
                val = {f"val/{k}": v for k, v in evaluate(model, job.loader("val"), device, cfg.train.precision, dist=d).items()}
                model.train()
                tracker.log(val, s.step)
                if metric_key not in val:
                    raise KeyError(f"train.metric: {cfg.train.metric!r} is not a val metric; have {sorted(val)}")
                improved = s.stopper.update(val[metric_key], s.step)
                progress.show(f"val_{cfg.train.metric}", val[metric_key])
                checkpointer.save(s, divergence, best=improved)
            # A stop signal (on any rank): checkpoint this step (unless validation just did), flush, exit 128 + signal.
            if signals.agreed(d):
                if not plan.is_eval(s.step):
                    checkpointer.save(s, divergence, best=False)
                progress.close()
                tracker.finish(exit_code=1)
                raise Preempted(signals.requested or signal.SIGTERM, s.step, str(run_dir))
    progress.close()

    # Test the best checkpoint (the one validation chose), never the last one.
    load_best(model, ckpt_dir, cfg.train.strategy, d)
    val = evaluate(model, job.loader("val"), device, cfg.train.precision, dist=d)
    outputs: dict[str, list] = {}
    test = evaluate(model, job.loader("test"), device, cfg.train.precision, outputs, dist=d)
    results = None
    if d.main:  # rank 0 writes the test reports (per class, predictions, bootstrap interval, calibration) and results
        tracker.log({f"test/{k}": v for k, v in test.items()}, s.step)
        extra = write_test_reports(model.head, cfg.head.name, outputs, job.classes, cfg.train.metric,
                                   run_dir / "report", tracker, s.step, plot=opts.plots)
        results = {
            "run_dir": str(run_dir), "best_step": s.stopper.best_step, "steps": s.step,
            "stopped_early": s.stopper.should_stop, "val": val, "test": test, **extra, "classes": len(job.classes),
            "params": counts, "wall_time_s": round(time.perf_counter() - t_start, 2),
            "feature_cache": job.feature_cache, "nonfinite_skipped": divergence.skipped, "bad_samples": bad_samples,
        }
        write_results(run_dir, results, tracker, metric_key, s.stopper.best, cfg.wandb.log_model)
    results = distributed.broadcast(results, d)  # one result, the same on every rank
    unlock(run_dir)
    distributed.close(d)
    return results
