"""The run folder: ``out_dir/name``, claimed by one process at a time.

A new run never overwrites an old one (``-2``, ``-3``... are appended). A resume (``--resume``) or a
requeued job (``--auto-resume``) works in ``out_dir/name`` itself: a finished run (``results.json``
is written last) is reported as finished and left untouched; a folder with a checkpoint continues;
with ``--auto-resume`` a folder without one (a job stopped during set-up) is started afresh in place,
so requeues converge on one folder whatever the moment of each preemption.

One process per run folder: rank 0 holds an exclusive ``flock`` on ``run_dir/.lock`` (which holds its
pid) from the moment it claims the folder for the rest of the process's life, or until ``train``
returns. The kernel drops the lock when the process dies, however it dies, so a killed job never leaves
a stale lock behind; a second process gets ``RunLocked`` naming the holder's pid.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mm.config import Config
from mm.run import distributed
from mm.run.distributed import Dist
from mm.run.options import RunOptions

LOCK = ".lock"
RESULTS = "results.json"
_HELD: dict[str, int] = {}  # run folder -> the open lock file this process holds


class RunLocked(RuntimeError):
    """Another live process works in this run folder."""


def default_run_name(cfg: Config) -> str:
    data = cfg.data.task if cfg.data.dataset == "synthetic" else Path(cfg.data.dataset).name
    return f"{data}-{'+'.join(sorted(cfg.data.modalities))}-{cfg.fusion.name}-s{cfg.seed}"


def lock(run_dir: Path) -> None:
    """Hold the run folder's lock (again, if this process holds it already).

    Raises:
        RunLocked: naming the pid of the process that holds it.
    """
    key = str(run_dir.resolve())
    if key in _HELD:
        held = _HELD.pop(key)
        try:
            same = os.fstat(held).st_ino == os.stat(run_dir / LOCK).st_ino
        except FileNotFoundError:  # the folder was deleted and made again since (a grid reruns a cell)
            same = False
        if same:
            _HELD[key] = held
            return
        os.close(held)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLocked(f"{run_dir} is in use by another process (pid {holder}): one process per run folder; "
                        "wait for it to end or stop it, then run this again") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd


def unlock(run_dir: Path) -> None:
    """Let the run folder go (closing the lock file drops the lock)."""
    fd = _HELD.pop(str(run_dir.resolve()), None)
    if fd is not None:
        os.close(fd)


def new_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : the first that does not exist, created. Claimed by creating
    it, so two runs starting at once never share a folder."""
    run_dir, k = base, 1
    while True:
        try:
            run_dir.mkdir(parents=True)
            return run_dir
        except FileExistsError:
            k += 1
            run_dir = base.with_name(f"{base.name}-{k}")


def finished(run_dir: Path, cfg: Config, opts: RunOptions, d: Dist) -> bool:
    """The run in ``run_dir`` finished (``results.json`` is written last) as this very experiment would run:
    its last checkpoint has this config and world size. A resume that changes a setting it may change
    (``--allow-changes train.max_steps``) continues the run instead; one it may not is refused.

    Raises:
        ResumeError: the config differs in keys not allowed to change.
    """
    from mm.config import to_dict
    from mm.run.checkpoint import resume_point
    from mm.run.resume import check_resume

    if not (run_dir / RESULTS).is_file():
        return False
    found = resume_point(run_dir / "checkpoints")
    if found is None or found[1].get("world", 1) != d.world:
        return False  # the resume says what is wrong
    return not check_resume(found[1], to_dict(cfg), d, opts.allow_changes)


def has_checkpoint(run_dir: Path) -> bool:
    ckpt = run_dir / "checkpoints"
    return (ckpt / "last").exists() or any(ckpt.glob("step-*"))


def claim(cfg: Config, opts: RunOptions, d: Dist) -> tuple[Path, str]:
    """Rank 0's part of ``run_folder``: the folder, locked, and what to do in it."""
    base = Path(opts.out_dir) / (cfg.name or default_run_name(cfg))
    if opts.resume or opts.auto_resume:
        if finished(base, cfg, opts, d):  # nothing to do, nothing to touch
            return base, "finished"
        if not opts.auto_resume and not (base / "checkpoints").is_dir():
            raise FileNotFoundError(f"--resume: no checkpoint to resume in {base}/checkpoints")
        base.mkdir(parents=True, exist_ok=True)
        lock(base)
        if finished(base, cfg, opts, d):  # it finished while we waited for the folder
            unlock(base)
            return base, "finished"
        return base, "resume" if opts.resume or has_checkpoint(base) else "start"
    run_dir = new_folder(base)
    lock(run_dir)
    return run_dir, "start"


def run_folder(cfg: Config, opts: RunOptions, d: Dist | None = None) -> tuple[Path, str]:
    """The run folder (rank 0 claims and locks it; every rank gets its path) and what to do there:
    ``start`` (a new run, or a folder without checkpoint reused), ``resume`` or ``finished``.

    Raises:
        RunLocked: another process holds the folder.
        FileNotFoundError: ``--resume`` of a folder without checkpoints.
        ResumeError: a finished run resumed with a config it may not change.
    """
    d = d or Dist()
    try:
        picked: tuple[Path, str] | Exception = claim(cfg, opts, d) if d.main else (Path(), "")
    except (RunLocked, FileNotFoundError, ValueError) as err:  # ValueError: ResumeError, CheckpointError
        picked = err
    picked = distributed.broadcast(picked, d)  # rank 0 decides; every rank follows (or fails alike)
    if isinstance(picked, Exception):
        raise picked
    return picked
