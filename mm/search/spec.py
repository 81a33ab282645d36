"""Search spec files: what a hyper-parameter search explores, read and checked before anything runs.

A search file is YAML beside the grid files; its first line is the command that runs it::

    # python scripts/search.py configs/search/lr_synthetic.yaml
    base: null                    # config file (relative to this file or the repo root); null = defaults
    overrides: [data.task=color]  # applied to every trial
    space:                        # dotted config key -> how to draw it
      optim.lr: {type: log_uniform, low: 1.0e-5, high: 1.0}
      train.batch_size: {type: int, low: 16, high: 64, step: 16}
      fusion.name: {type: categorical, choices: [concat, late]}
    metric: accuracy              # a validation metric (default: the base config's train.metric)
    direction: maximize           # maximize | minimize (default: from train.metric_mode)
    n_trials: 12
    pruner: {name: median, n_startup_trials: 3}   # none | median | successive_halving | hyperband (+ Optuna's arguments)
    sampler: {name: tpe, seed: 0} # tpe | random (+ Optuna's arguments)
    seed: 0                       # the runs' seed (each trial trains with it)
    name: lr_synthetic            # optional, default: the file's stem; the Optuna study and W&B group
    storage: null                 # null: SQLite in the search folder; or an RDB URL (postgresql://...)
    heartbeat: {interval: 10, grace: 60}   # seconds; a trial silent for longer is failed and retried

Space types: ``log_uniform`` and ``uniform`` (``low``, ``high``), ``int`` (``low``, ``high``,
optional ``step`` and ``log``), ``categorical`` (``choices``: numbers, strings, booleans or null).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm.config import ConfigError, load_config
from mm.experiments.spec import RESERVED_KEYS, check_seeds, override_value, read_spec, resolve_base

KEYS = {"base", "overrides", "space", "metric", "direction", "n_trials", "pruner", "sampler", "seed", "name",
        "storage", "heartbeat"}
SPACE_TYPES = {"log_uniform": {"low", "high"}, "uniform": {"low", "high"}, "int": {"low", "high", "step", "log"},
               "categorical": {"choices"}}
PRUNERS = {"none": "NopPruner", "median": "MedianPruner", "successive_halving": "SuccessiveHalvingPruner",
           "hyperband": "HyperbandPruner"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler"}


@dataclass
class Param:
    """One key of the space: its type and bounds or choices."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: int | None = None
    log: bool = False
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this key."""
        if self.type in ("log_uniform", "uniform"):
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.type == "log_uniform")
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.key, self.choices)

    def extremes(self) -> list[Any]:
        """The values checked against the config schema before the search starts."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


@dataclass
class Search:
    """A parsed search file; ``overrides`` include extra command-line ones."""

    path: Path
    name: str
    base: Path | None
    overrides: list[str]
    space: list[Param]
    metric: str
    direction: str
    n_trials: int
    pruner: dict[str, Any]
    sampler: dict[str, Any]
    seed: int = 0
    storage: str | None = None
    heartbeat: dict[str, int] = field(default_factory=lambda: {"interval": 10, "grace": 60})

    def trial_overrides(self, params: dict[str, Any]) -> list[str]:
        """A trial's drawn values as dotted overrides, in the space's order."""
        return [f"{p.key}={override_value(params[p.key])}" for p in self.space if p.key in params]


def read_search(path: str | Path, extra_overrides: list[str] | None = None) -> Search:
    """Reads and checks a search file: keys, space, metric, pruner, sampler, and every bound of the
    space loaded into the base config, so a wrong key or value fails here, naming the file.

    Raises:
        ConfigError: anything wrong, the message naming the file and the key.
    """
    path, raw = read_spec(path, "search", KEYS)
    where = str(path)
    base = resolve_base(raw.get("base"), path, "search")
    overrides = [*(raw.get("overrides") or []), *(extra_overrides or [])]
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise ConfigError(f"{where}: 'overrides' must be a list of key=value strings")
    try:
        cfg = load_config(base, overrides)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None

    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError(f"{where}: 'space' must map dotted config keys to {{type: ...}}; types: {sorted(SPACE_TYPES)}")
    space = [_param(key, value, where) for key, value in space_raw.items()]
    for p in space:
        if p.key in RESERVED_KEYS:
            raise ConfigError(f"{where}: space.{p.key}: set by the search for every trial; cannot be searched")
        for value in p.extremes():
            try:
                load_config(base, [*overrides, f"{p.key}={override_value(value)}"])
            except ConfigError as err:
                raise ConfigError(f"{where}: space.{p.key}: {err}") from None

    metric = raw.get("metric", cfg.train.metric)
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{where}: 'metric' must be a validation metric name such as accuracy")
    direction = raw.get("direction", "maximize" if cfg.train.metric_mode == "max" else "minimize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{where}: invalid value for 'direction': {direction!r}; valid: ['maximize', 'minimize']")
    n_trials = raw.get("n_trials")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"{where}: 'n_trials' must be a positive integer, got {n_trials!r}")
    pruner = _named(raw.get("pruner", {"name": "median"}), "pruner", PRUNERS, where, "pruners")
    sampler = _named(raw.get("sampler", {"name": "tpe"}), "sampler", SAMPLERS, where, "samplers")
    seed = check_seeds([raw.get("seed", 0)], path)[0]
    storage = raw.get("storage")
    if storage is not None and (not isinstance(storage, str) or "://" not in storage):
        raise ConfigError(f"{where}: 'storage' must be null (SQLite in the search folder) or an RDB URL such as "
                          f"postgresql://user:password@host/db, got {storage!r}")
    heartbeat = {"interval": 10, "grace": 60, **(raw.get("heartbeat") or {})}
    if set(heartbeat) != {"interval", "grace"} or not all(isinstance(v, int) and v > 0 for v in heartbeat.values()) \
            or heartbeat["grace"] <= heartbeat["interval"]:
        raise ConfigError(f"{where}: 'heartbeat' must be {{interval: s, grace: s}}, positive integers, grace > interval")
    name = raw.get("name") or path.stem
    return Search(path, str(name), base, overrides, space, metric, direction, n_trials, pruner, sampler, seed,
                  storage, heartbeat)


def _param(key: Any, value: Any, where: str) -> Param:
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(f"{where}: space key {key!r} must be a dotted config key such as optim.lr")
    if not isinstance(value, dict) or value.get("type") not in SPACE_TYPES:
        raise ConfigError(f"{where}: space.{key}: needs 'type', one of {sorted(SPACE_TYPES)}")
    kind = value["type"]
    fields = set(value) - {"type"}
    need = SPACE_TYPES[kind] - {"step", "log"}
    if not need <= fields or not fields <= SPACE_TYPES[kind]:
        raise ConfigError(f"{where}: space.{key}: type {kind} takes {sorted(SPACE_TYPES[kind])}, got {sorted(fields)}")
    if kind == "categorical":
        choices = value["choices"]
        if not isinstance(choices, list) or not choices or \
                not all(c is None or isinstance(c, bool | int | float | str) for c in choices):
            raise ConfigError(f"{where}: space.{key}: 'choices' must be a non-empty list of numbers, strings, "
                              f"booleans or null")
        return Param(key, kind, choices=list(choices))
    low, high = value["low"], value["high"]
    number = int if kind == "int" else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ConfigError(f"{where}: space.{key}: need numbers low < high"
                          f"{' (integers)' if kind == 'int' else ''}, got {low!r} and {high!r}")
    if (kind == "log_uniform" or value.get("log")) and low <= 0:
        raise ConfigError(f"{where}: space.{key}: a log scale needs low > 0, got {low!r}")
    step = value.get("step")
    if step is not None and (not isinstance(step, int) or step < 1):
        raise ConfigError(f"{where}: space.{key}: 'step' must be a positive integer")
    return Param(key, kind, low, high, step, bool(value.get("log", False)))


def _named(value: Any, what: str, valid: dict[str, str], where: str, module: str) -> dict[str, Any]:
    """A ``{name: ..., <Optuna argument>: ...}`` mapping whose arguments the Optuna class accepts."""
    import optuna

    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or value.get("name") not in valid:
        raise ConfigError(f"{where}: '{what}' needs a name, one of {sorted(valid)}; got {value!r}")
    value = copy.deepcopy(value)
    cls = getattr(getattr(optuna, module), valid[value["name"]])
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    for arg in value:
        if arg != "name" and arg not in accepted:
            raise ConfigError(f"{where}: {what}.{arg}: not an argument of optuna.{module}.{cls.__name__}; "
                              f"valid: {sorted(accepted)}")
    return value


def build(kind: str, value: dict[str, Any], seed_offset: int = 0) -> Any:
    """The Optuna pruner or sampler a spec names; a sampler's ``seed`` is offset per worker."""
    import optuna

    args = {k: v for k, v in value.items() if k != "name"}
    if kind == "pruner":
        return getattr(optuna.pruners, PRUNERS[value["name"]])(**args)
    if args.get("seed") is not None:
        args["seed"] += seed_offset
    return getattr(optuna.samplers, SAMPLERS[value["name"]])(**args)
