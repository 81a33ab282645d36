"""Typed configuration: dataclass defaults, then one YAML file, then dotted ``key=value`` overrides.

Unknown keys and wrong types are errors that name the key (OmegaConf structured configs do the
checking). ``load_config`` returns a plain ``Config`` dataclass; ``to_dict`` turns it back into
the nested dict that is written to ``config.yaml`` and sent to W&B.
"""

from __future__ import annotations

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
    """Checks the schema cannot express: choices, ranges, modality names.

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
    if len(cfg.encoders.audio.snr_db) not in (0, 2):
        raise ConfigError("'encoders.audio.snr_db' must be [] or [low, high]")
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
    if not 0 < cfg.data.train_fraction <= 1:
        raise ConfigError("'data.train_fraction' must be in (0, 1]")
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
    if cfg.optim.grad_accum_steps < 1:
        raise ConfigError("'optim.grad_accum_steps' must be >= 1")
    if cfg.train.batch_size < 1:
        raise ConfigError("'train.batch_size' must be >= 1")


def to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as a plain nested dict."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
