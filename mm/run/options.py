"""Run options: how a run is carried out, not what it computes.

Where the run folder goes, whether it continues an earlier run, which config changes a resume may
make, and what it shows (progress bar, plots). They come from the command line (``scripts/train.py``
flags) or from the caller of ``mm.train.train``, never from the experiment config: a resume compares
the experiment's settings alone, and no list of keys that "may differ" is needed. A config file or
override that still spells one of them as a config key is refused, naming the flag
(``mm.config.MOVED``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mm.config import MOVED


@dataclass(frozen=True)
class RunOptions:
    """How to run an experiment.

    Attributes:
        out_dir: where run folders go (``out_dir/name``).
        resume: continue ``out_dir/name`` from its newest complete checkpoint (``--resume``).
        auto_resume: continue ``out_dir/name`` if it holds a checkpoint, else start it there; a finished
            run is reported as finished (``--auto-resume``: what a requeued cluster job runs).
        allow_changes: config keys a resume may change (``--allow-changes``); each must be a config key.
        progress: a progress bar on stderr.
        plots: the confusion-matrix picture at the end (the text report is always written).
    """

    out_dir: str = "runs"
    resume: bool = False
    auto_resume: bool = False
    allow_changes: tuple[str, ...] = field(default_factory=tuple)
    progress: bool = True
    plots: bool = True



def check_allowed(allow: tuple[str, ...] | list[str], config: dict) -> None:
    """Every ``--allow-changes`` entry must be a dotted key of the resolved config (a typo would allow nothing).

    Raises:
        ValueError: naming the entries that are no config key.
    """
    keys = set(_flatten(config))
    unknown = [k for k in allow if k not in keys]
    if unknown:
        raise ValueError(f"--allow-changes: {', '.join(unknown)}: not a config key (dotted keys of the resolved "
                         "config, e.g. optim.lr, train.max_steps)")


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys += _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


__all__ = ["MOVED", "RunOptions", "check_allowed"]
