"""Rows (a) loop overhead and (b) HF Trainer: the text job trained five ways, interleaved per seed.

Each repetition uses its own seed (0, 1, 2, ...) for every contender, so the accuracy columns are
the spread over seeds and the speed ratios pair runs of the same seed:

- ``hand``: the minimal PyTorch loop over mm's model and random batches (``textjob.run_hand``);
- ``mm``: ``mm.train.train`` with random batches;
- ``mm_bucketed``: ``mm.train.train`` with ``data.bucket_by_length=true``;
- ``hf``: ``transformers.Trainer`` with its defaults (random sampler);
- ``hf_grouped``: ``transformers.Trainer`` with ``group_by_length=True``.
"""

from __future__ import annotations

from typing import Any

from common import interleave, ratios, row
from textjob import TextJob, run_hand, run_mm, run_trainer


def measure(job: TextJob, reps: int, hf: bool = True) -> dict[str, list[dict[str, float]]]:
    contenders = {"hand": lambda rep: run_hand(job, rep), "mm": lambda rep: run_mm(job, rep),
                  "mm_bucketed": lambda rep: run_mm(job, rep, bucket=True)}
    if hf:
        contenders |= {"hf": lambda rep: run_trainer(job, rep, False),
                       "hf_grouped": lambda rep: run_trainer(job, rep, True)}
    return interleave(contenders, reps)


def rows(job: TextJob, results: dict[str, list[dict[str, float]]], command: str,
         settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The loop-overhead row and, when HF Trainer ran, the HF row."""
    loop = {k: results[k] for k in ("mm", "hand")}
    out = [row("loop_overhead", command, loop, {"mm / hand-written loop": ratios(results, "samples_per_s", "mm", "hand"),
                                                "whole run: mm / hand-written loop": ratios(results, "samples_per_s_all", "mm", "hand")},
               settings, notes=f"steady samples/s over steps {job.skip + 1}-{job.steps} (first {job.skip} skipped); "
                               "random batches in both; mm includes its logging, non-finite guard and evaluation-free "
                               "windows; target >= 0.97")]
    if "hf" in results:
        speed = {
            "mm bucketed / HF default": ratios(results, "samples_per_s", "mm_bucketed", "hf"),
            "mm bucketed / HF group_by_length": ratios(results, "samples_per_s", "mm_bucketed", "hf_grouped"),
            "mm random / HF default": ratios(results, "samples_per_s", "mm", "hf"),
            "mm bucketed / mm random": ratios(results, "samples_per_s", "mm_bucketed", "mm"),
            # Whole runs (steps 1-N): with length-grouped batches a step's cost follows its length, and HF
            # walks each mega-batch longest first, so skipping its first steps skips its heaviest batches.
            "whole run: mm bucketed / HF default": ratios(results, "samples_per_s_all", "mm_bucketed", "hf"),
            "whole run: mm bucketed / HF group_by_length": ratios(results, "samples_per_s_all", "mm_bucketed",
                                                                  "hf_grouped"),
        }
        trained = {k: results[k] for k in ("mm", "mm_bucketed", "hf", "hf_grouped")}
        out.append(row("hf_trainer", command, trained, speed, settings,
                       notes="one seed per repetition (accuracy spread = seed noise); targets: mm bucketed >= 2x HF "
                             "default and >= 1.0x HF group_by_length, accuracy within seed noise of random batches"))
    return out
