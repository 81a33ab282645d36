"""Typed configuration: dataclass defaults, then one YAML file, then dotted ``key=value`` overrides.

Unknown keys and wrong types are errors that name the key (OmegaConf structured configs do the
checking). ``load_config`` returns a plain ``Config`` dataclass; ``to_dict`` turns it back into
the nested dict that is written to ``config.yaml`` and sent to W&B.

This module sits below every implementation and imports none (``mm.registry`` is its only ``mm``
import). The sections that belong to implementations are assembled from their registries when a
config is made: ``encoders.<modality>`` from the encoders registered for that modality (each
encoder class carries its settings dataclass and its checks), ``fusion`` from the fusions and
``head`` from the heads; the checks an implementation registers in ``mm.registry.CHECKS`` run in
``validate``. Implementations import this module's building blocks (``ConfigError``,
``check_range``, ``check_choice``), never the reverse.

Every key renamed by the configuration redesign is in ``RENAMED``: an old spelling in a file or an
override fails at once with a message naming the new key.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mm.registry import CHECKS, ENCODERS, FUSIONS, HEADS, TASKS, settings_of, union_settings


@dataclass
class SyntheticConfig:
    """Parameters of the generated tri-modal benchmark (see ``mm.data.synthetic``)."""

    seed: int = 0
    n_train: int = 2000
    n_val: int = 400
    n_test: int = 400
    image_size: int = 32
    image_noise: float = 0.08
    text_noise: float = 0.3
    audio_snr_db: float = 10.0
    audio_seconds: float = 1.0
    sample_rate: int = 16000


@dataclass
class DataConfig:
    """Which data, which modalities, which label."""

    dataset: str = "synthetic"  # "synthetic" or a folder with train/val/test.jsonl
    task: str = "color_animal"  # synthetic task; its label key is labels.<task>
    label_key: str = "label"  # dotted key of the label in a manifest row (own data)
    modalities: list[str] = field(default_factory=lambda: ["text", "image"])
    num_workers: int = 0
    train_fraction: float = 1.0  # use this fraction of the training split (a fixed, seeded subset)
    cache_features: str = "auto"  # auto: frozen encoders' outputs come from mm.features' cache | off
    allow_outside_paths: bool = False  # manifest media paths may point outside the dataset folder
    on_error: str = "raise"  # a sample that cannot be read: raise (stop the run) | skip (count it)
    max_bad_fraction: float = 0.01  # on_error=skip: stop when more than this share of a split is bad
    bucket_by_length: bool = False  # training batches of similar length (text, audio): less padding (mm.run.runtime.epoch_batches)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class OptimConfig:
    """Optimizer and schedule. ``lr`` is for new modules (fusion, head), ``backbone_lr`` for encoders."""

    name: str = "adamw"  # adamw | adam | sgd | rmsprop
    lr: float = 1e-3
    backbone_lr: float = 3e-4
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = False  # sgd
    layer_decay: float = 1.0  # backbone lr x layer_decay^(depth from the top); 1 = off
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0  # 0 disables clipping
    grad_accum_steps: int = 1


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 32
    eval_batch_size: int = 128
    eval_every: int = 0  # optimizer steps between validations; 0 = once per epoch
    metric: str = "accuracy"  # val metric that picks the best checkpoint (and drives early stopping)
    patience: int = 0  # early stopping: validations without improvement before stopping; 0 = off
    min_delta: float = 0.0  # early stopping: smallest change that counts as an improvement
    mixup: float = 0.0  # classification: mixup's Beta alpha (0 = off; e.g. 0.2); blends pictures, audio
    cutmix: float = 0.0  # classification: cutmix's Beta alpha on pictures (0 = off; e.g. 1.0)
    mix_prob: float = 1.0  # probability that a training batch is mixed
    metric_mode: str = "max"  # max | min
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 (with a GradScaler) | fp32
    strategy: str = "ddp"  # under torchrun: ddp (DistributedDataParallel) | fsdp (FSDP2 fully_shard)
    sync_batchnorm: bool = True  # under torchrun on GPUs: BatchNorm statistics over all ranks
    compile: bool = False  # torch.compile the model's forward
    keep_last_n: int = 2  # checkpoints kept besides the best one (each validation writes one)
    max_nonfinite: int = 3  # consecutive non-finite losses / gradients (steps skipped) before the run stops
    deterministic: bool = True
    init_from: str | None = None  # continued fine-tuning: start from this run's (or artifact:...'s) best weights


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline | disabled
    project: str = "mm"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    log_model: bool = False  # the best and last checkpoints as W&B model artifacts (aliases best, last)


def encoders_section() -> Any:
    """The ``encoders`` section: one field per registered modality, each that modality's settings
    (its default encoder's dataclass, plus the fields its other encoder kinds add, ``name`` first)."""
    key = tuple((m, tuple(kinds.items())) for m, kinds in ENCODERS.items())
    if key not in _SECTIONS:
        spec = []
        for m, kinds in ENCODERS.items():
            section = union_settings(f"{m.capitalize()}Section",
                                     {k: cls.settings for k, cls in kinds.items()},
                                     [("name", str, field(default=next(iter(kinds))))])
            spec.append((m, section, field(default_factory=section)))
        _SECTIONS[key] = make_dataclass("EncodersConfig", spec)
    return _SECTIONS[key]()


def fusion_section() -> Any:
    """The ``fusion`` section: ``name``, ``modality_dropout`` and every registered fusion's settings."""
    key = ("fusion", tuple(FUSIONS.items()))
    if key not in _SECTIONS:
        _SECTIONS[key] = union_settings("FusionConfig", {n: settings_of(c, skip=1) for n, c in FUSIONS.items()}, [
            ("name", str, field(default="concat")),
            # The model drops modalities before they reach the fusion (MultimodalModel.presence): a
            # regulariser of what the fusion learns to combine, so it lives in the fusion's section.
            ("modality_dropout", float, field(default=0.0)),  # train-time probability of dropping each modality of a sample
        ])
    return _SECTIONS[key]()


def head_section() -> Any:
    """The ``head`` section: ``name`` and every registered head's settings."""
    key = ("head", tuple(HEADS.items()))
    if key not in _SECTIONS:
        _SECTIONS[key] = union_settings("HeadConfig", {n: settings_of(c) for n, c in HEADS.items()},
                                        [("name", str, field(default="classification"))])
    return _SECTIONS[key]()


_SECTIONS: dict[tuple, type] = {}  # assembled section classes, per registry content (equal configs compare equal)


@dataclass
class Config:
    """One experiment. Every field has a default; a YAML file and overrides change some."""

    name: str | None = None  # run name; default: derived from the config
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    encoders: Any = field(default_factory=encoders_section)  # assembled from mm.registry.ENCODERS
    fusion: Any = field(default_factory=fusion_section)  # assembled from mm.registry.FUSIONS
    head: Any = field(default_factory=head_section)  # assembled from mm.registry.HEADS
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and key."""


# Keys renamed by the configuration redesign: old dotted key -> new one. ``*`` stands for any one
# section name (a modality). An old key in a file or an override is an error naming the new key.
RENAMED = {
    "encoders.*.encoder": "encoders.*.name",  # one word picks a kind in every section (fusion.name, head.name, optim.name)
    "encoders.*.max_seconds": "encoders.*.max_s",  # one unit suffix: _s as shift_s
    "train.label_smoothing": "head.label_smoothing",  # the head's loss uses it
    "data.modality_dropout": "fusion.modality_dropout",  # drops the fusion's inputs
}


# Command-line switches that were config keys: they are run options now (``mm.run.options.RunOptions``,
# flags of scripts/train.py), never part of the experiment. Old key -> the flag.
MOVED = {
    "train.out_dir": "--out-dir",
    "train.resume": "--resume / --auto-resume",
    "train.resume_allow_changes": "--allow-changes",
    "train.progress": "--no-progress",
    "train.plots": "--no-plots",
}


def renamed_key(key: str) -> str | None:
    """The new spelling of a renamed dotted key (``encoders.audio.encoder`` -> ``encoders.audio.name``), else None."""
    parts = key.split(".")
    for old, new in RENAMED.items():
        pattern = old.split(".")
        if len(pattern) == len(parts) and all(p in ("*", k) for p, k in zip(pattern, parts, strict=True)):
            return ".".join(k if p == "*" else n for p, k, n in zip(pattern, parts, new.split("."), strict=True))
    return None


def _dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a nested mapping, leaves and sections."""
    keys = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = f"{prefix}{k}"
            keys.append(key)
            keys += _dotted_keys(v, key + ".")
    return keys


def _is_resolved(tree: Any) -> bool:
    """Whether a loaded YAML is a whole resolved config, as ``to_yaml`` writes it into a run folder
    (every top-level section and key), rather than an experiment file someone wrote."""
    return isinstance(tree, dict) and set(tree) == {f.name for f in fields(Config)}


def upgrade_resolved(tree: dict[str, Any]) -> dict[str, Any]:
    """A resolved config written before a rename, with its renamed keys moved to their new names and
    the keys that became run options (``MOVED``) left out.

    Only for what mm wrote itself (a run folder's ``config.yaml``, so that old runs still evaluate and
    resume); a config file or an override with an old spelling is refused (``check_renamed``).
    """
    tree = copy.deepcopy(tree)
    for key in _dotted_keys(tree):
        *path, leaf = key.split(".")
        if key in MOVED:
            functools.reduce(lambda d, k: d[k], path, tree).pop(leaf)
            continue
        new = renamed_key(key)
        if new is None:
            continue
        *old_path, old_leaf = key.split(".")
        parent = functools.reduce(lambda d, k: d[k], old_path, tree)
        value = parent.pop(old_leaf)
        *new_path, new_leaf = new.split(".")
        functools.reduce(lambda d, k: d.setdefault(k, {}), new_path, tree)[new_leaf] = value
    return tree


def check_renamed(keys: Iterable[str], where: str) -> None:
    """Raise on the first old spelling among dotted ``keys``, naming the new key."""
    for key in keys:
        if key in MOVED:
            raise ConfigError(f"{where}: '{key}' is not a config key any more: it is a run option, the "
                              f"scripts/train.py flag {MOVED[key]} (mm.run.options.RunOptions in code)")
        new = renamed_key(key)
        if new is not None:
            raise ConfigError(f"{where}: '{key}' was renamed to '{new}' (see 'Renamed keys' in README.md)")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a ``Config`` from defaults, an optional YAML file and dotted overrides.

    Args:
        path: YAML file with any subset of the schema's keys.
        overrides: ``["optim.lr=3e-4", "data.modalities=[text,image]"]``.

    Raises:
        ConfigError: on a missing file, unknown or renamed key, wrong type or invalid value.
    """
    where, loaded = "defaults", None
    try:
        if path is not None:
            where = str(path)
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            loaded = OmegaConf.to_container(OmegaConf.load(path))
            if _is_resolved(loaded):  # a run folder's config.yaml, written by mm before a rename: read it renamed
                loaded = upgrade_resolved(loaded)
            check_renamed(_dotted_keys(loaded), where)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
        check_renamed([item.split("=", 1)[0].lstrip("+~") for item in overrides], "command-line overrides")
        _ranges_before_registries(loaded, overrides)
        merged = OmegaConf.structured(Config)  # reads the registries: imports every implementation
        if loaded is not None:
            merged = OmegaConf.merge(merged, loaded)
        where = "command-line overrides"
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{where}: invalid config key '{key}': {msg}") from None
    validate(cfg)
    return cfg


@dataclass
class _OwnFusion:
    modality_dropout: float = 0.0


@dataclass
class _OwnSections:
    """The sections this module owns, alone: what ``_check_ranges`` reads (of the fusion section only
    ``modality_dropout``), without the sections assembled from the registries."""

    name: str | None = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    fusion: _OwnFusion = field(default_factory=_OwnFusion)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _ranges_before_registries(loaded: Any, overrides: list[str] | tuple[str, ...]) -> None:
    """Refuse an out-of-range value of the sections this module owns before the registries are read:
    reading them imports torch and every implementation (seconds; tens of seconds on a busy machine),
    so ``optim.lr=-1`` is refused in well under a second. Anything else wrong (an unknown key, a wrong
    type, a registry section's value) is left to the full pass, which names it."""
    own = {f.name for f in fields(_OwnSections)} - {"fusion"}
    try:
        merged = OmegaConf.structured(_OwnSections)
        if isinstance(loaded, dict):
            mine = {k: v for k, v in loaded.items() if k in own}
            fusion = loaded.get("fusion")
            if isinstance(fusion, dict) and "modality_dropout" in fusion:
                mine["fusion"] = {"modality_dropout": fusion["modality_dropout"]}
            merged = OmegaConf.merge(merged, mine)
        keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
        mine = [o for o, k in zip(overrides, keys, strict=True) if k.split(".")[0] in own or k == "fusion.modality_dropout"]
        cfg = OmegaConf.to_object(OmegaConf.merge(merged, OmegaConf.from_dotlist(mine)))
        _check_ranges(cfg)  # type: ignore[arg-type]
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001  (the full pass reports it, with its key)
        return


def check_choice(key: str, value: Any, valid: Iterable[str]) -> None:
    """Raise unless ``value`` is one of ``valid``; the message names the key and lists the valid values."""
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"invalid value for '{key}': {value!r}; valid: {valid}")


def check_range(key: str, value: float, low: float | None = None, high: float | None = None, *,
                open_low: bool = False, open_high: bool = False) -> None:
    """Raise unless ``value`` is a finite number in the interval; the message names the key and the interval.

    Args:
        key: dotted config key, for the message.
        value: the configured number.
        low: lower bound (None: unbounded), excluded when ``open_low``.
        high: upper bound (None: unbounded), excluded when ``open_high``.

    Raises:
        ConfigError: ``invalid value for 'optim.lr': -1.0; allowed: > 0``.
    """
    above = low is None or (value > low if open_low else value >= low)
    below = high is None or (value < high if open_high else value <= high)
    if above and below and math.isfinite(value):
        return
    if low is not None and high is not None:
        allowed = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    elif low is not None:
        allowed = f"{'>' if open_low else '>='} {low:g}"
    elif high is not None:
        allowed = f"{'<' if open_high else '<='} {high:g}"
    else:
        allowed = "a finite number"
    raise ConfigError(f"invalid value for '{key}': {value!r}; allowed: {allowed}")


_choice, _range = check_choice, check_range


def validate(cfg: Config) -> None:
    """Checks the schema cannot express: choices, ranges, combinations, modality names, encoder sources.

    Everything here runs before any model, dataset or hub is touched, so a bad value fails in
    milliseconds with a message that names its key and what is allowed.

    Choices that have a registry are read from it (encoders, fusions, heads, trainable policies,
    synthetic tasks), and each implementation checks its own settings (an encoder class's
    ``settings.check``, a fusion's or head's registered ``CHECKS``), so a new entry needs no change here.
    """
    modalities = list(ENCODERS)
    if not cfg.data.modalities:
        raise ConfigError("'data.modalities' is empty; choose from " + ", ".join(modalities))
    for m in cfg.data.modalities:
        check_choice("data.modalities", m, modalities)
    for m in modalities:
        section, key = getattr(cfg.encoders, m), f"encoders.{m}"
        check_choice(f"{key}.name", section.name, list(ENCODERS[m]))
        encoder = ENCODERS.kind(m, section.name)
        encoder.settings.check(section, key, encoder)
        if m in cfg.data.modalities:
            encoder.check_source(section.source, f"{key}.source")
    if cfg.data.dataset == "synthetic":
        check_choice("data.task", cfg.data.task, sorted(TASKS))
    check_choice("fusion.name", cfg.fusion.name, sorted(FUSIONS))
    check_choice("head.name", cfg.head.name, sorted(HEADS))
    check_choice("optim.name", cfg.optim.name, ("adamw", "adam", "sgd", "rmsprop"))
    check_choice("optim.schedule", cfg.optim.schedule, ("cosine", "linear", "constant"))
    if cfg.data.cache_features == "False":  # YAML reads a bare `off` as false
        cfg.data.cache_features = "off"
    check_choice("data.cache_features", cfg.data.cache_features, ("auto", "off"))
    check_choice("train.metric_mode", cfg.train.metric_mode, ("max", "min"))
    check_choice("train.precision", cfg.train.precision, ("auto", "bf16", "fp16", "fp32"))
    check_choice("train.strategy", cfg.train.strategy, ("ddp", "fsdp"))
    check_choice("data.on_error", cfg.data.on_error, ("raise", "skip"))
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:  # each encoder says whether its inputs can be blended
        unmixable = [m for m in cfg.data.modalities if not ENCODERS.kind(m, getattr(cfg.encoders, m).name).mixable]
        if cfg.head.name != "classification" or unmixable:
            raise ConfigError(f"'train.mixup' / 'train.cutmix' need head.name=classification (not {cfg.head.name!r}) "
                              f"and modalities whose inputs can be blended (not {unmixable}: token ids cannot be)")
    _check_ranges(cfg)
    for check in CHECKS.values():  # each implementation's own checks (fusion, head, synthetic data, tracking)
        check(cfg)


def _check_ranges(cfg: Config) -> None:
    """Every numeric field of the sections this module owns: its allowed interval, and the combinations."""
    check_range("seed", cfg.seed, 0)  # numpy's SeedSequence takes no negative seed
    syn = cfg.data.synthetic
    check_range("data.synthetic.seed", syn.seed, 0)
    for split in ("n_train", "n_val", "n_test"):
        check_range(f"data.synthetic.{split}", getattr(syn, split), 1)
    check_range("data.synthetic.image_size", syn.image_size, 15)  # below 15 px the shape cannot keep its margins
    check_range("data.synthetic.image_noise", syn.image_noise, 0)
    check_range("data.synthetic.text_noise", syn.text_noise, 0, 1)  # a probability
    check_range("data.synthetic.audio_snr_db", syn.audio_snr_db)  # any finite SNR, negative too
    check_range("data.synthetic.audio_seconds", syn.audio_seconds, 0.05)  # a beep must outlast its 5 ms ramps
    # data.synthetic.sample_rate: checked by mm.data.synthetic_tasks (its beeps' pitches decide the limit)

    data = cfg.data
    check_range("data.num_workers", data.num_workers, 0)
    check_range("fusion.modality_dropout", cfg.fusion.modality_dropout, 0, 1, open_high=True)
    check_range("data.train_fraction", data.train_fraction, 0, 1, open_low=True)
    check_range("data.max_bad_fraction", data.max_bad_fraction, 0, 1, open_high=True)

    optim = cfg.optim
    check_range("optim.lr", optim.lr, 0, open_low=True)
    check_range("optim.backbone_lr", optim.backbone_lr, 0)
    check_range("optim.weight_decay", optim.weight_decay, 0)
    check_range("optim.momentum", optim.momentum, 0, 1, open_high=True)
    if optim.name == "sgd" and optim.nesterov and optim.momentum == 0:
        raise ConfigError("invalid value for 'optim.nesterov': True; needs 'optim.momentum' > 0 "
                          "(torch's SGD has no Nesterov without momentum)")
    check_range("optim.layer_decay", optim.layer_decay, 0, 1, open_low=True)
    if len(optim.betas) != 2:
        raise ConfigError(f"invalid value for 'optim.betas': {optim.betas}; allowed: [beta1, beta2]")
    for i, beta in enumerate(optim.betas):
        check_range(f"optim.betas[{i}]", beta, 0, 1, open_high=True)
    check_range("optim.warmup_ratio", optim.warmup_ratio, 0, 1)
    check_range("optim.max_grad_norm", optim.max_grad_norm, 0)  # 0 = no clipping
    check_range("optim.grad_accum_steps", optim.grad_accum_steps, 1)

    train = cfg.train
    check_range("train.max_steps", train.max_steps, 0)  # 0 = run train.epochs
    if train.max_steps == 0:
        check_range("train.epochs", train.epochs, 1)
    check_range("train.batch_size", train.batch_size, 1)
    check_range("train.eval_batch_size", train.eval_batch_size, 1)
    check_range("train.eval_every", train.eval_every, 0)  # 0 = once per epoch
    check_range("train.patience", train.patience, 0)  # 0 = no early stopping
    check_range("train.min_delta", train.min_delta, 0)
    check_range("train.mixup", train.mixup, 0)
    check_range("train.cutmix", train.cutmix, 0)
    check_range("train.mix_prob", train.mix_prob, 0, 1)
    check_range("train.max_nonfinite", train.max_nonfinite, 1)
    check_range("train.keep_last_n", train.keep_last_n, 1)
    if cfg.name is not None and (cfg.name in ("", ".", "..") or Path(cfg.name).name != cfg.name or "\\" in cfg.name):
        raise ConfigError(f"invalid value for 'name': {cfg.name!r}; allowed: one folder name (no '/', '..' or "
                          "absolute path): the run folder is OUT_DIR/name (--out-dir)")
    if cfg.name is not None:
        _check_name_length(cfg.name, getattr(train, "out_dir", "."))
    _check_device(train.device)


# Room kept in a run folder's name for the "-<k>" a new run gets when its name is taken (up to -999).
_SUFFIX_ROOM = 4


def _check_name_length(name: str, out_dir: str | Path) -> None:
    """``name``: a folder name the file system of ``out_dir`` (or its nearest existing parent) can hold."""
    folder = Path(out_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255  # what every common file system holds
    size = len(name.encode())
    if size + _SUFFIX_ROOM > name_max:
        raise ConfigError(f"invalid value for 'name': {name[:40]!r}... is {size} bytes; allowed: at most "
                          f"{name_max - _SUFFIX_ROOM} bytes (the file system of {folder} holds names of {name_max}, "
                          "and a run folder may get a '-<k>' suffix)")


def _check_device(name: str) -> None:
    """``train.device``: ``auto``, ``cpu`` or a device that exists on this machine (torch is imported
    only for a named accelerator, and CUDA is asked for its device count, not started)."""
    if name in ("auto", "cpu"):
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"invalid value for 'train.device': {name!r}; {err}") from None
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = ["mps"] if torch.backends.mps.is_available() else []
    exist = ["auto", "cpu", *(["cuda"] if cuda else []), *cuda, *mps]
    if device.type == "cpu" or (device.type == "cuda" and (device.index or 0) < len(cuda)) or (
            device.type == "mps" and mps):
        return
    why = ("this machine has no CUDA device" if device.type == "cuda" and not cuda
           else f"this machine has {len(cuda)} CUDA device(s)" if device.type == "cuda"
           else f"no {device.type} device here")
    raise ConfigError(f"invalid value for 'train.device': {name!r}; {why}; devices that exist: {exist}")


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as a plain nested dict."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
