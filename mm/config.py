"""Typed configuration: dataclass defaults, then one YAML file, then dotted ``key=value`` overrides.

Unknown keys and wrong types are errors that name the key (OmegaConf structured configs do the
checking). ``load_config`` returns a plain ``Config`` dataclass; ``to_dict`` turns it back into
the nested dict that is written to ``config.yaml`` and sent to W&B.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


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
    modality_dropout: float = 0.0  # train-time probability of dropping each modality of a sample
    train_fraction: float = 1.0  # use this fraction of the training split (a fixed, seeded subset)
    cache_features: str = "auto"  # auto: frozen encoders' outputs come from mm.features' cache | off
    allow_outside_paths: bool = False  # manifest media paths may point outside the dataset folder
    on_error: str = "raise"  # a sample that cannot be read: raise (stop the run) | skip (count it)
    max_bad_fraction: float = 0.01  # on_error=skip: stop when more than this share of a split is bad
    bucket_by_length: bool = False  # training batches of similar length (text, audio): less padding (mm.run.runtime.epoch_batches)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class PolicyConfig:
    """How much of a pretrained backbone trains (``mm.encoders.policies``), the same for every encoder."""

    trainable: str = "frozen"  # frozen | linear_probe | last_n | gradual | lora | full
    last_n: int = 2  # last_n: top blocks (plus the final norm) that train
    gradual_every: int = 1  # gradual: one more block opens every this many...
    gradual_unit: str = "epoch"  # ...epochs or steps
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)  # empty: per-family defaults
    grad_checkpointing: bool = False  # recompute the backbone's activations in backward (memory for time)


@dataclass
class TextEncoderConfig(PolicyConfig):
    encoder: str = "transformers"  # the encoder kind (mm.encoders.ENCODERS["text"])
    source: str = "minilm"  # alias, hub id or local folder
    max_length: int = 64  # word pieces per window; classification texts are truncated here
    pooling: str = "mean"  # mean | cls
    stride: int = 16  # token tagging: pieces shared by the overlapping windows over a longer sentence
    prompt_tokens: int = 20  # trainable=prompt: learned vectors in front of the input (mm.encoders.prompt)
    word_features: bool | None = None  # token head: word-shape (casing) features; None = auto: on where the tokenizer lowercases


@dataclass
class ImageEncoderConfig(PolicyConfig):
    encoder: str = "timm"  # the encoder kind (mm.encoders.ENCODERS["image"])
    source: str = "effnet-lite0"  # alias (effnet-lite0: ImageNet, packaged), timm name, local folder, or arch@file
    trainable: str = "full"
    input_size: int = 0  # side in pixels the pictures are resized to; 0 = auto: the pictures' own (<= checkpoint's)
    augment: str = "none"  # training-time augmentation: none | light | rand (RandAugment)
    hflip: float = 0.5  # horizontal-flip probability when augmenting
    pretrained: bool = True  # false: the source's architecture from random weights (from scratch)


@dataclass
class AudioEncoderConfig(PolicyConfig):
    encoder: str = "spectrogram"  # spectrogram (log-mel into a timm CNN) | wav2vec2
    source: str = "effnet-lite0"  # spectrogram: any image source (effnet-lite0, tiny-cnn); wav2vec2: HF
    trainable: str = "full"
    max_seconds: float = 10.0
    freeze_feature_encoder: bool = True  # wav2vec2, full: the conv feature encoder stays frozen
    n_mels: int = 64  # spectrogram: mel bins
    spec_augment: bool = False  # spectrogram, training: SpecAugment frequency and time masks
    gain_db: float = 0.0  # training: random gain within +-gain_db
    shift_s: float = 0.0  # training: random circular time shift within +-shift_s seconds
    snr_db: list[float] = field(default_factory=list)  # training: [low, high] SNR of added white noise
    pretrained: bool = True  # spectrogram, false: the source's architecture from random weights


@dataclass
class EncodersConfig:
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)


# A modality is a section of EncodersConfig (and an entry of mm.encoders.ENCODERS).
MODALITIES = tuple(sorted(f.name for f in fields(EncodersConfig)))


@dataclass
class FusionConfig:
    name: str = "concat"
    hidden_dim: int = 256
    num_layers: int = 1  # hidden layers of the fusion MLP (attention: transformer layers)
    dropout: float = 0.1
    num_heads: int = 4  # attention: heads
    rank: int = 4  # lowrank: rank-1 terms
    tensor_dim: int = 8  # tensor: per-modality size before the outer product
    late_weights: str = "mean"  # late: mean | learned


@dataclass
class HeadConfig:
    name: str = "classification"  # classification | multilabel | regression | token (see mm.heads)
    top_k: list[int] = field(default_factory=lambda: [5])  # classification: top-k accuracies (k < classes)
    loss: str = "mse"  # regression: mse | l1
    crf: bool = False  # token: a linear-chain CRF trained jointly (log-likelihood), decoded by Viterbi (mm.crf)
    constrained: bool = True  # token: decode only the tag transitions the scheme (BIO / IOBES) allows


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
    label_smoothing: float = 0.0  # classification cross-entropy
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
    resume_allow_changes: list[str] = field(default_factory=list)  # --resume: config keys allowed to differ
    deterministic: bool = True
    out_dir: str = "runs"
    resume: bool = False
    progress: bool = True
    plots: bool = True  # confusion-matrix PNG at the end (the text report is always written)


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline | disabled
    project: str = "mm"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    log_model: bool = False  # the best and last checkpoints as W&B model artifacts (aliases best, last)


@dataclass
class Config:
    """One experiment. Every field has a default; a YAML file and overrides change some."""

    name: str | None = None  # run name; default: derived from the config
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and key."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a ``Config`` from defaults, an optional YAML file and dotted overrides.

    Args:
        path: YAML file with any subset of the schema's keys.
        overrides: ``["optim.lr=3e-4", "data.modalities=[text,image]"]``.

    Raises:
        ConfigError: on a missing file, unknown key, wrong type or invalid value.
    """
    merged = OmegaConf.structured(Config)
    where = "defaults"
    try:
        if path is not None:
            where = str(path)
            if not Path(path).is_file():
                raise ConfigError(f"config file not found: {path}")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        where = "command-line overrides"
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{where}: invalid config key '{key}': {msg}") from None
    validate(cfg)
    return cfg


def _choice(key: str, value: Any, valid: Iterable[str]) -> None:
    valid = list(valid)
    if value not in valid:
        raise ConfigError(f"invalid value for '{key}': {value!r}; valid: {valid}")


def validate(cfg: Config) -> None:
    """Checks the schema cannot express: choices, ranges, combinations, modality names, encoder sources.

    Everything here runs before any model, dataset or hub is touched, so a bad value fails in
    milliseconds with a message that names its key and what is allowed.

    Choices that have a registry are read from it (fusions, heads, trainable policies, synthetic
    tasks, ...), so a new entry there is valid here with no change. The registries are imported
    here rather than at the top, so that this module stays importable without torch.
    """
    from mm.data.synthetic_tasks import TASKS
    from mm.encoders import ENCODERS
    from mm.encoders.image import AUGMENTS
    from mm.encoders.policies import POLICIES
    from mm.encoders.text import POOLINGS
    from mm.fusion import FUSIONS
    from mm.fusion.weighted import LATE_WEIGHTS
    from mm.heads import HEADS, RegressionHead
    from mm.tracking import MODES

    if not cfg.data.modalities:
        raise ConfigError("'data.modalities' is empty; choose from " + ", ".join(MODALITIES))
    for m in cfg.data.modalities:
        _choice("data.modalities", m, MODALITIES)
    for m in MODALITIES:
        enc = getattr(cfg.encoders, m)
        _choice(f"encoders.{m}.trainable", enc.trainable, POLICIES)
        _choice(f"encoders.{m}.gradual_unit", enc.gradual_unit, ("epoch", "step"))
        _choice(f"encoders.{m}.encoder", enc.encoder, list(ENCODERS.get(m, {})))
    _choice("encoders.image.augment", cfg.encoders.image.augment, AUGMENTS)
    _choice("encoders.text.pooling", cfg.encoders.text.pooling, POOLINGS)
    if cfg.data.dataset == "synthetic":
        _choice("data.task", cfg.data.task, sorted(TASKS))
    _choice("fusion.name", cfg.fusion.name, sorted(FUSIONS))
    _choice("fusion.late_weights", cfg.fusion.late_weights, LATE_WEIGHTS)
    _choice("optim.name", cfg.optim.name, ("adamw", "adam", "sgd", "rmsprop"))
    _choice("optim.schedule", cfg.optim.schedule, ("cosine", "linear", "constant"))
    if cfg.data.cache_features == "False":  # YAML reads a bare `off` as false
        cfg.data.cache_features = "off"
    _choice("data.cache_features", cfg.data.cache_features, ("auto", "off"))
    _choice("train.metric_mode", cfg.train.metric_mode, ("max", "min"))
    _choice("head.name", cfg.head.name, sorted(HEADS))
    _choice("head.loss", cfg.head.loss, RegressionHead.LOSSES)
    _choice("train.precision", cfg.train.precision, ("auto", "bf16", "fp16", "fp32"))
    _choice("train.strategy", cfg.train.strategy, ("ddp", "fsdp"))
    _choice("data.on_error", cfg.data.on_error, ("raise", "skip"))
    _choice("wandb.mode", cfg.wandb.mode, MODES)
    if (cfg.train.mixup > 0 or cfg.train.cutmix > 0) and (cfg.head.name != "classification"
                                                          or "text" in cfg.data.modalities):
        raise ConfigError("'train.mixup' / 'train.cutmix' need head.name=classification and no text modality "
                          "(token ids cannot be blended)")
    _check_ranges(cfg)
    _check_fusion(cfg)
    _check_sources(cfg)


def _range(key: str, value: float, low: float | None = None, high: float | None = None, *,
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


def _check_ranges(cfg: Config) -> None:
    """Every numeric field: its allowed interval, and the combinations that depend on another field."""
    from mm.data.synthetic_render import PITCH_HZ
    from mm.encoders.policies import PROMPT_MODALITIES

    _range("seed", cfg.seed, 0)  # numpy's SeedSequence takes no negative seed
    syn = cfg.data.synthetic
    _range("data.synthetic.seed", syn.seed, 0)
    for split in ("n_train", "n_val", "n_test"):
        _range(f"data.synthetic.{split}", getattr(syn, split), 1)
    _range("data.synthetic.image_size", syn.image_size, 15)  # below 15 px the shape cannot keep its margins
    _range("data.synthetic.image_noise", syn.image_noise, 0)
    _range("data.synthetic.text_noise", syn.text_noise, 0, 1)  # a probability
    _range("data.synthetic.audio_snr_db", syn.audio_snr_db)  # any finite SNR, negative too
    _range("data.synthetic.audio_seconds", syn.audio_seconds, 0.05)  # a beep must outlast its 5 ms ramps
    nyquist = 2 * max(high for _, high in PITCH_HZ.values())
    _range("data.synthetic.sample_rate", syn.sample_rate, nyquist, open_low=True)  # the high beeps must be representable

    data = cfg.data
    _range("data.num_workers", data.num_workers, 0)
    _range("data.modality_dropout", data.modality_dropout, 0, 1, open_high=True)
    _range("data.train_fraction", data.train_fraction, 0, 1, open_low=True)
    _range("data.max_bad_fraction", data.max_bad_fraction, 0, 1, open_high=True)

    for m in MODALITIES:
        enc, key = getattr(cfg.encoders, m), f"encoders.{m}"
        _range(f"{key}.last_n", enc.last_n, 1)
        _range(f"{key}.gradual_every", enc.gradual_every, 1)
        _range(f"{key}.lora_r", enc.lora_r, 1)
        _range(f"{key}.lora_alpha", enc.lora_alpha, 0, open_low=True)
        _range(f"{key}.lora_dropout", enc.lora_dropout, 0, 1, open_high=True)
    text, image, audio = cfg.encoders.text, cfg.encoders.image, cfg.encoders.audio
    _range("encoders.text.max_length", text.max_length, 2)
    _range("encoders.text.stride", text.stride, 0, text.max_length, open_high=True)  # < max_length
    _range("encoders.text.prompt_tokens", text.prompt_tokens, 1)
    for m in MODALITIES:  # prompt tuning prepends to input embeddings: the text encoder has them
        if getattr(cfg.encoders, m).trainable == "prompt" and m not in PROMPT_MODALITIES:
            raise ConfigError(f"invalid value for 'encoders.{m}.trainable': 'prompt'; prompt tuning is for "
                              f"{', '.join(PROMPT_MODALITIES)} encoders only (it prepends learned vectors to input "
                              "token embeddings)")
    _range("encoders.image.input_size", image.input_size, 0)  # 0 = auto
    _range("encoders.image.hflip", image.hflip, 0, 1)
    _range("encoders.audio.max_seconds", audio.max_seconds, 0, open_low=True)
    _range("encoders.audio.n_mels", audio.n_mels, 1)
    _range("encoders.audio.gain_db", audio.gain_db, 0)
    _range("encoders.audio.shift_s", audio.shift_s, 0)
    if len(audio.snr_db) not in (0, 2):
        raise ConfigError(f"invalid value for 'encoders.audio.snr_db': {audio.snr_db}; allowed: [] or [low, high]")
    if audio.snr_db:
        low, high = audio.snr_db
        _range("encoders.audio.snr_db[0]", low)
        _range("encoders.audio.snr_db[1]", high, low)  # [low, high]: high >= low

    for k in cfg.head.top_k:  # k >= the class count is left out by the head (see ClassificationHead)
        _range("head.top_k", k, 1)

    optim = cfg.optim
    _range("optim.lr", optim.lr, 0, open_low=True)
    _range("optim.backbone_lr", optim.backbone_lr, 0)
    _range("optim.weight_decay", optim.weight_decay, 0)
    _range("optim.momentum", optim.momentum, 0, 1, open_high=True)
    if optim.name == "sgd" and optim.nesterov and optim.momentum == 0:
        raise ConfigError("invalid value for 'optim.nesterov': True; needs 'optim.momentum' > 0 "
                          "(torch's SGD has no Nesterov without momentum)")
    _range("optim.layer_decay", optim.layer_decay, 0, 1, open_low=True)
    if len(optim.betas) != 2:
        raise ConfigError(f"invalid value for 'optim.betas': {optim.betas}; allowed: [beta1, beta2]")
    for i, beta in enumerate(optim.betas):
        _range(f"optim.betas[{i}]", beta, 0, 1, open_high=True)
    _range("optim.warmup_ratio", optim.warmup_ratio, 0, 1)
    _range("optim.max_grad_norm", optim.max_grad_norm, 0)  # 0 = no clipping
    _range("optim.grad_accum_steps", optim.grad_accum_steps, 1)

    train = cfg.train
    _range("train.max_steps", train.max_steps, 0)  # 0 = run train.epochs
    if train.max_steps == 0:
        _range("train.epochs", train.epochs, 1)
    _range("train.batch_size", train.batch_size, 1)
    _range("train.eval_batch_size", train.eval_batch_size, 1)
    _range("train.eval_every", train.eval_every, 0)  # 0 = once per epoch
    _range("train.patience", train.patience, 0)  # 0 = no early stopping
    _range("train.min_delta", train.min_delta, 0)
    _range("train.label_smoothing", train.label_smoothing, 0, 1, open_high=True)
    _range("train.mixup", train.mixup, 0)
    _range("train.cutmix", train.cutmix, 0)
    _range("train.mix_prob", train.mix_prob, 0, 1)
    _range("train.max_nonfinite", train.max_nonfinite, 1)
    _range("train.keep_last_n", train.keep_last_n, 1)
    if cfg.name is not None and (cfg.name in ("", ".", "..") or Path(cfg.name).name != cfg.name or "\\" in cfg.name):
        raise ConfigError(f"invalid value for 'name': {cfg.name!r}; allowed: one folder name (no '/', '..' or "
                          "absolute path): the run folder is train.out_dir/name")


def _check_fusion(cfg: Config) -> None:
    """Fusion sizes, and the attention widths that must split evenly into heads."""
    fusion = cfg.fusion
    probes = [m for m in cfg.data.modalities if getattr(cfg.encoders, m).trainable == "linear_probe"]
    if probes and fusion.name != "concat":  # one linear map of the frozen features: no fusion to learn
        raise ConfigError(f"invalid value for 'encoders.{probes[0]}.trainable': 'linear_probe'; "
                          f"needs fusion.name=concat, not {fusion.name!r}")
    if fusion.name == "text_tokens" and "text" not in cfg.data.modalities:
        raise ConfigError(f"invalid value for 'fusion.name': 'text_tokens'; needs the text modality, "
                          f"not only {cfg.data.modalities}")
    _range("fusion.hidden_dim", fusion.hidden_dim, 1)
    # attention is a transformer (at least one layer); the others take 0 (no MLP / no cross-attention).
    _range("fusion.num_layers", fusion.num_layers, 1 if fusion.name == "attention" else 0)
    _range("fusion.dropout", fusion.dropout, 0, 1, open_high=True)
    _range("fusion.num_heads", fusion.num_heads, 1)
    _range("fusion.rank", fusion.rank, 1)
    _range("fusion.tensor_dim", fusion.tensor_dim, 1)
    # Multi-head attention splits hidden_dim into num_heads equal parts: attention always attends,
    # text_tokens only with cross-attention layers and another modality to attend to.
    attends = fusion.name == "attention" or (
        fusion.name == "text_tokens" and fusion.num_layers > 0 and set(cfg.data.modalities) != {"text"})
    if attends and fusion.hidden_dim % fusion.num_heads:
        raise ConfigError(f"invalid value for 'fusion.hidden_dim': {fusion.hidden_dim}; fusion.name={fusion.name} "
                          f"needs a multiple of 'fusion.num_heads' ({fusion.num_heads})")


# The library that loads an encoder kind's ``source``: what a valid source name looks like.
_SOURCE_LIBRARIES = {"transformers": "hf", "wav2vec2": "hf", "timm": "timm", "spectrogram": "timm"}


def _check_sources(cfg: Config) -> None:
    """Each used encoder's source: an alias, a local path or a plausible hub / timm name, before any lookup."""
    from mm.encoders.sources import SourceError, check_source

    for m in cfg.data.modalities:
        enc = getattr(cfg.encoders, m)
        try:
            check_source(enc.source, _SOURCE_LIBRARIES.get(enc.encoder))
        except SourceError as err:
            raise ConfigError(f"invalid value for 'encoders.{m}.source': {err}") from None


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as a plain nested dict."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
