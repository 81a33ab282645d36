"""Experiment tracking: a local JSONL log, mirrored to Weights & Biases when it is on.

Every ``Tracker.log`` call writes one line to ``run_dir/metrics.jsonl``, whatever happens to
W&B. W&B runs online when an API key is configured and offline otherwise (its files go to
``run_dir/wandb/``, to be uploaded later with ``wandb sync``). W&B must never stop training: a
failing online start falls back to offline, and any later W&B error turns W&B off for the rest
of the run with one warning. A dead network costs at most ``PROBE_TIMEOUT_S``: before an online
start the W&B server (or the proxy in front of it) must accept a TCP connection within that time.
An empty ``WANDB_MODE`` counts as unset. ``wandb`` is imported only when a tracker needs it. The
first tracker of a process starts the wandb-core service; the requirements snapshot W&B would
take at every init is turned off. Besides metrics, a tracker logs tables, images, native W&B charts
(``log_line``, ``log_bar``: custom charts whose tables stay in W&B's run files, their rows in the
caller's CSV files) and the run's checkpoints as model artifacts (``log_model``, ``mm.artifacts``).
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import secrets
import socket
import string
import threading
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, TextIO
from urllib.parse import urlsplit

MODES = ("auto", "online", "offline", "disabled")
METRICS_FILE = "metrics.jsonl"
ID_FILE = "wandb_id.txt"
STEP_METRIC = "global_step"
PROBE_TIMEOUT_S = 3.0  # an online start gives up on a server that accepts no connection within this
ONLINE_INIT_TIMEOUT_S = 30.0  # a server that accepts connections but does not answer

# Values of WANDB_MODE that wandb itself accepts, mapped to the mode they mean.
_WANDB_MODE_ENV = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}
# Hosts a `wandb login` may have written to ~/.netrc when WANDB_BASE_URL is not set.
_DEFAULT_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")
# How wandb-core writes the non-finite floats that JSON cannot hold.
_ID_CHARS = string.ascii_lowercase + string.digits


def resolve_mode(mode: str) -> str:
    """Turns a tracking mode into the W&B mode to run: ``online``, ``offline`` or ``disabled``.

    ``auto`` follows ``WANDB_MODE`` when it is set, else runs online if an API key is configured
    (``WANDB_API_KEY``, or a ``.netrc`` entry for the W&B host) and offline if not. An explicit
    mode always wins over the environment.

    Raises:
        ValueError: ``mode`` or ``WANDB_MODE`` is not a valid mode; the message lists the valid ones.
    """
    if mode not in MODES:
        raise ValueError(f"unknown tracking mode {mode!r}; valid modes: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        if env_mode not in _WANDB_MODE_ENV:
            raise ValueError(f"unknown WANDB_MODE={env_mode!r}; valid values: {', '.join(_WANDB_MODE_ENV)}")
        return _WANDB_MODE_ENV[env_mode]
    return "online" if api_key_configured() else "offline"


def api_key_configured() -> bool:
    """Whether W&B would find an API key, without importing wandb or touching the network."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL")
    hosts = [urlsplit(base_url).netloc] if base_url else list(_DEFAULT_HOSTS)
    netrc_path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
    try:
        entries = netrc.netrc(netrc_path)
    except (OSError, netrc.NetrcParseError):
        return False
    return any((entry := entries.authenticators(host)) is not None and bool(entry[2]) for host in hosts)


class Tracker:
    """Logs metrics to ``run_dir/metrics.jsonl`` and, unless disabled, to a W&B run.

    A tracker without ``resume_step`` starts ``metrics.jsonl`` afresh and a new W&B run. With
    ``resume_step`` it continues the W&B run whose id is kept in ``run_dir/wandb_id.txt`` and
    keeps only the JSONL lines up to that step: later ones were logged after the checkpoint
    being resumed. W&B counts steps on its own axis, ``global_step``, so a resumed run may log
    steps that W&B has already seen. An online start that fails falls back to an offline run
    with a fresh id (wandb's service may still hold the failed one), which ``wandb_id.txt`` then
    names: the file always names the run this folder's W&B data went to last.

    Args:
        run_dir: Folder of the run; created if missing.
        config: The resolved configuration, sent to W&B.
        mode: ``auto``, ``online``, ``offline`` or ``disabled``; see ``resolve_mode``.
        project: W&B project.
        entity: W&B entity (user or team); None for the default one.
        group: W&B group, e.g. the name of an ablation grid.
        name: W&B display name of the run.
        tags: W&B tags.
        job_type: W&B job type.
        resume_step: Step of the checkpoint this run resumes from, or None for a fresh run.
    """

    def __init__(
        self,
        run_dir: Path,
        config: dict,
        *,
        mode: str = "auto",
        project: str = "mm",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        job_type: str = "train",
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._mode = resolve_mode(mode)
        self._wandb: ModuleType | None = None
        self._run: Any = None
        self._wandb_dir: Path | None = None
        self._finished = False
        self._val_keys: set[str] = set()
        self._metrics = self._open_metrics(resume_step)
        if self._mode != "disabled":
            init_args = dict(
                project=project,
                entity=entity,
                group=group,
                name=name,
                tags=list(tags),
                job_type=job_type,
                config=config,
            )
            self._start_wandb(init_args, run_id=self._run_id(resume=resume_step is not None))

    @property
    def mode(self) -> str:
        """The W&B mode in effect: ``online``, ``offline`` or ``disabled`` (also after a failure)."""
        return self._mode

    @property
    def wandb_dir(self) -> Path | None:
        """The folder of this run's W&B files (``run_dir/wandb/offline-run-...``), or None."""
        return self._wandb_dir

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Logs one row of metrics at ``step``; keys are namespaced, like ``train/loss``."""
        if self._finished:
            raise RuntimeError("log() called after finish()")
        reserved = {"step", STEP_METRIC} & metrics.keys()
        if reserved:
            raise ValueError(f"metric names {sorted(reserved)} are reserved for the step")
        values = {key: _plain(value) for key, value in metrics.items()}
        step = _plain(step)
        self._metrics.write(json.dumps({"step": step, **values}) + "\n")
        self._metrics.flush()

        def send(run: Any) -> None:
            # Validation metrics keep their extremes in the summary. Each is defined by name on
            # first sight: a "val/*" glob would overlap "*", and wandb-core picks one at random.
            for key in values:
                if key.startswith("val/") and key not in self._val_keys:
                    run.define_metric(key, step_metric=STEP_METRIC, summary="min,max,last")
                    self._val_keys.add(key)
            run.log({**values, STEP_METRIC: step})

        self._call(send)

    def summary(self, values: dict[str, Any]) -> None:
        """Sets run summary values, e.g. ``best/val/accuracy`` or final test metrics."""
        self._call(lambda run: run.summary.update({key: _plain(value) for key, value in values.items()}))

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        """Logs an image file (e.g. a PNG plot) to W&B; does nothing when W&B is off."""

        def send(run: Any) -> None:
            row = {key: self._wandb.Image(str(path))}
            run.log(row if step is None else {**row, STEP_METRIC: step})

        self._call(send)

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        """Logs a table to W&B; does nothing when W&B is off."""
        self._call(lambda run: run.log({key: self._wandb.Table(columns=columns, data=rows)}))

    def log_line(self, key: str, columns: list[str], rows: list[list], x: str, y: str, stroke: str | None = None,
                 title: str = "") -> None:
        """Logs a table and a native W&B line chart of it: ``y`` against ``x``, one line per ``stroke`` value.

        The chart is a W&B custom chart (``wandb.plot.line``): its spec goes to the run's config
        (``_wandb.visualize.<key>``) and its table to ``<key>_table``. A workspace panel of the
        chart draws the table of every run shown, so runs of one group overlay. Does nothing when
        W&B is off: the rows stay in the caller's CSV files in the run folder.

        Raises:
            ValueError: ``x``, ``y`` or ``stroke`` is not one of ``columns`` (also when W&B is off).
        """
        self._log_chart(key, columns, rows, (x, y, stroke),
                        lambda table: self._wandb.plot.line(table, x, y, stroke=stroke, title=title))

    def log_bar(self, key: str, columns: list[str], rows: list[list], label: str, value: str,
                title: str = "") -> None:
        """Logs a table and a native W&B bar chart of it (``wandb.plot.bar``): one bar of ``value`` per ``label``.

        Keys, spec and table go to W&B as for ``log_line``.

        Raises:
            ValueError: ``label`` or ``value`` is not one of ``columns`` (also when W&B is off).
        """
        self._log_chart(key, columns, rows, (label, value),
                        lambda table: self._wandb.plot.bar(table, label, value, title=title))

    def log_model(self, checkpoints: Path) -> None:
        """Logs the ``best`` and ``last`` checkpoints as W&B artifacts of type ``model``, aliased ``best`` and ``last``.

        The artifact is named ``model-<W&B run id>``; one checkpoint that is both best and last is
        one version with both aliases. Its files are staged in ``run_dir/artifacts/`` (hard links to
        the checkpoint, see ``mm.run.checkpoint.stage_checkpoint``) and logged in place, so an offline
        run's record points into the run folder and ``wandb sync`` uploads them from there. Does
        nothing when W&B is off.

        Args:
            checkpoints: The run's ``checkpoints`` folder, with its ``best`` and ``last`` links.
        """
        if self._run is None:
            return
        from mm.run.checkpoint import stage_checkpoint

        aliases: dict[Path, list[str]] = {}
        for alias in ("best", "last"):
            if (checkpoints / alias).is_dir():
                aliases.setdefault((checkpoints / alias).resolve(), []).append(alias)

        def send(run: Any) -> None:
            for folder, names in aliases.items():
                staged, metadata = stage_checkpoint(self.run_dir, folder)
                artifact = self._wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
                artifact.add_dir(str(staged), policy="immutable")  # no copy: the staged files are the record
                run.log_artifact(artifact, aliases=names)

        self._call(send)

    def use_artifact(self, path: str) -> None:
        """Declares the W&B artifact ``[entity/]project/name:alias`` an input of this run (lineage: the
        model a continued fine-tuning started from). Online only: an offline run cannot reference a
        server's artifact, so it records nothing beyond its config's ``train.init_from``."""
        if self._run is None or self.mode != "online":
            return
        self._call(lambda run: run.use_artifact(path, type="model"))

    def finish(self, exit_code: int = 0) -> None:
        """Closes the JSONL log and the W&B run; calling it again does nothing."""
        if self._finished:
            return
        self._finished = True
        self._metrics.close()
        self._call(lambda run: run.finish(exit_code=exit_code))
        self._run = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # W&B marks the run failed when the block raised.
        self.finish(exit_code=0 if exc_type is None else 1)

    def _log_chart(self, key: str, columns: list[str], rows: list[list], fields: tuple[str | None, ...],
                   chart: Callable[[Any], Any]) -> None:
        """Logs ``chart(table)``, a ``wandb.plot`` chart of the rows, after checking that its fields are columns."""
        missing = [f for f in fields if f is not None and f not in columns]
        if missing:
            raise ValueError(f"chart {key!r}: {missing} not among the table's columns {columns}")
        data = [[_plain(value) for value in row] for row in rows]
        self._call(lambda run: run.log({key: chart(self._wandb.Table(columns=columns, data=data))}))

    def _open_metrics(self, resume_step: int | None) -> TextIO:
        """Opens metrics.jsonl for appending, keeping only the lines a resumed run continues."""
        path = self.run_dir / METRICS_FILE
        kept: list[str] = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    step = json.loads(line)["step"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash
                if step <= resume_step:
                    kept.append(line + "\n")
        path.write_text("".join(kept))
        return path.open("a")

    def _run_id(self, resume: bool) -> str:
        """The W&B run id: the stored one when resuming, else a new one, stored for later."""
        path = self.run_dir / ID_FILE
        if resume and path.exists():
            return path.read_text().strip()
        return self._new_run_id()

    def _new_run_id(self) -> str:
        """A fresh W&B run id, stored in ``run_dir/wandb_id.txt``."""
        run_id = "".join(secrets.choice(_ID_CHARS) for _ in range(8))
        (self.run_dir / ID_FILE).write_text(run_id + "\n")
        return run_id

    def _start_wandb(self, init_args: dict[str, Any], run_id: str) -> None:
        """Starts the W&B run; online falls back to offline, and offline failing turns W&B off."""
        if os.environ.get("WANDB_MODE") == "":
            # Unset, as resolve_mode reads it; wandb itself would refuse the empty value.
            del os.environ["WANDB_MODE"]
        try:
            import wandb

            self._wandb = wandb
            if self._mode == "online":
                check_server(wandb.setup().settings)
            self._run = self._init_wandb(init_args, run_id)
        except Exception as error:
            if self._mode != "online":
                self._disable(error)
                return
            self._mode = "offline"
            _warn(f"W&B could not start online ({error!r}); logging offline under {self.run_dir / 'wandb'}")
            try:
                # A fresh id: wandb's service may still hold the failed one ("run ID is in use").
                self._run = self._init_wandb(init_args, self._new_run_id())
            except Exception as offline_error:
                self._disable(offline_error)
                return
        self._wandb_dir = Path(self._run.dir).parent

        def define_step_axis(run: Any) -> None:
            # One explicit step axis for every metric: a resumed run may go back in steps.
            run.define_metric(STEP_METRIC)
            run.define_metric("*", step_metric=STEP_METRIC)

        self._call(define_step_axis)

    def _init_wandb(self, init_args: dict[str, Any], run_id: str) -> Any:
        wandb = self._wandb
        if self._mode == "offline":
            # wandb's own telemetry follows the process-wide settings, not the run's: make those
            # offline too, or it reaches for the network when the process exits.
            wandb.setup(settings=wandb.Settings(mode="offline", silent=True))
        settings = wandb.Settings(silent=True, x_save_requirements=False, init_timeout=ONLINE_INIT_TIMEOUT_S)
        # create_new: by default wandb.init hands back a run that is still open in this process
        # (one that a crashed trial never finished), and this tracker would log into it.
        return wandb.init(
            dir=str(self.run_dir),
            mode=self._mode,
            id=run_id,
            resume="allow",
            reinit="create_new",
            settings=settings,
            **init_args,
        )

    def _call(self, send: Callable[[Any], None]) -> None:
        """Runs one W&B call; an error turns W&B off for the rest of the run."""
        if self._run is None:
            return
        try:
            send(self._run)
        except Exception as error:
            self._disable(error)

    def _disable(self, error: Exception) -> None:
        _warn(f"W&B failed ({error!r}); W&B is off for the rest of this run, {METRICS_FILE} continues")
        run, self._run, self._mode = self._run, None, "disabled"
        if run is not None:
            # Close the W&B run so that what it got so far is written out.
            with contextlib.suppress(Exception):
                run.finish()


def probe_server(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a TCP connection to the host and port of ``url`` does not open within ``timeout`` s; None if it does.

    The name lookup counts against ``timeout`` too (the connection is tried in a daemon thread,
    left behind if it hangs), so a machine without DNS or network answers within the limit.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        return None  # nothing to probe: leave it to wandb
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    failure: dict[str, str | None] = {}
    done = threading.Event()

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            failure["reason"] = None
        except OSError as error:  # refused, unreachable, no such host, timed out
            failure["reason"] = repr(error)
        finally:
            done.set()

    threading.Thread(target=connect, daemon=True).start()
    if not done.wait(timeout):
        return f"no answer within {timeout:g} s"
    return failure["reason"]


def check_server(settings: Any) -> None:
    """Raises ``ConnectionError`` unless the W&B server, or the proxy wandb goes through, accepts a connection.

    Args:
        settings: wandb's resolved settings (``base_url``, ``https_proxy``, ``http_proxy``).
    """
    url = settings.base_url
    scheme, host = urlsplit(url).scheme, urlsplit(url).hostname or ""
    proxy = (settings.https_proxy if scheme == "https" else settings.http_proxy) or urllib.request.getproxies().get(scheme)
    target = proxy if proxy and not urllib.request.proxy_bypass(host) else url
    failure = probe_server(target)
    if failure is not None:
        raise ConnectionError(f"no connection to {target}: {failure}")


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _plain(value: Any) -> Any:
    """A JSON-ready scalar from a Python, NumPy or 0-d tensor value."""
    return value.item() if hasattr(value, "item") else value


def _check_mode(cfg: Any) -> None:
    """``wandb.mode``: one of ``MODES`` (a check of the config, registered in ``mm.registry.CHECKS``)."""
    from mm.config import check_choice

    check_choice("wandb.mode", cfg.wandb.mode, MODES)


def _register() -> None:
    from mm.registry import CHECKS

    CHECKS.register("wandb.mode", _check_mode)


_register()
