"""Image encoder: any timm model, with the preprocessing of its own pretrained config.

The input resolution is a setting (``input_size``): a CNN takes any size, so small pictures need
not be upsampled to the checkpoint's 224 px on a CPU. Training-time augmentation is timm's own
(``create_transform(is_training=True)``): random-resized crop, flips, RandAugment, random erasing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import timm.data
import timm.models
import torch
from einops import rearrange
from torch import nn

from mm.config import check_choice, check_range
from mm.data.errors import MediaError
from mm.data.media import decode_image, media_path, read_image
from mm.encoders.base import Encoder, EncoderOutput, add_gaussian
from mm.encoders.policies import PolicySettings
from mm.encoders.sources import resolve_source
from mm.registry import register_encoder

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a hub folder's weights, in timm's order


def parse_image_source(source: str) -> tuple[str, Path | None]:
    """Split an image source into a ``timm.create_model`` name and an optional weights file.

    Accepted forms:

    - a timm name, optionally tagged: ``vit_base_patch16_224.augreg2_in21k_ft_in1k``;
    - a prefixed timm source: ``hf-hub:timm/<name>`` or ``local-dir:/path/to/folder``;
    - a hub repo id ``org/name`` that is not a local path (loaded as ``hf-hub:org/name``);
    - a local folder in timm's hub layout (``config.json`` + ``model.safetensors``);
    - ``<arch>@<file>``: a local ``.safetensors`` / ``.pth`` state dict in timm's native keys for
      the architecture ``arch`` (a timm name, optionally tagged, whose pretrained config supplies
      the preprocessing), e.g. ``vit_small_patch16_224@/data/vit_s.safetensors``.

    Returns:
        ``(model_name, weights_file)``; ``weights_file`` is None unless the ``arch@file`` form.
    """
    if source.startswith(("hf-hub:", "local-dir:")):
        return source, None
    arch, sep, file = source.partition("@")
    if sep and "/" not in arch and "\\" not in arch:
        return arch, Path(file).expanduser()
    path = Path(source).expanduser()
    if path.is_dir():
        return f"local-dir:{path}", None
    if path.is_file():
        raise ValueError(
            f"image source {source!r} is a weights file without an architecture; "
            f"write it as '<timm arch>@{source}', e.g. 'vit_base_patch16_224@{source}'"
        )
    if "/" in source:
        return f"hf-hub:{source}", None
    return source, None


def _check_weights_cover(backbone: nn.Module, weights: Path) -> None:
    """Fail if the local checkpoint lacks some of the backbone's keys.

    timm loads with ``strict=False`` whenever the classifier is replaced (``num_classes=0``), which
    would leave parameters with mismatched names silently at their random initialisation.
    """
    if weights.is_dir():
        weights = next((weights / f for f in _WEIGHT_FILES if (weights / f).is_file()), None)
        if weights is None:
            return
    stored = set(timm.models.load_state_dict(str(weights)))
    missing = sorted(set(backbone.state_dict()) - stored)
    if missing:
        raise ValueError(
            f"{weights} lacks {len(missing)} of the model's weights ({', '.join(missing[:5])}, ...); "
            "convert it to timm's native key names for this architecture"
        )


AUGMENTS = ("none", "light", "rand")
# input_size auto never goes below this: a stride-32 CNN then still ends on a 2x2 map.
MIN_AUTO_SIZE = 64


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A batch of pictures in channels-last layout (NHWC strides, same shape). PyTorch's oneDNN
    (CPU) and cuDNN (GPU) convolutions are faster on it and keep their outputs in it (BENCHMARKS.md,
    row ``channels_last``: EfficientNet-Lite0; a ViT gains nothing, so it keeps NCHW). Only the
    input's layout changes: weights, checkpoints, exports and the feature cache stay as they were.
    (A one-channel spectrogram has no channel order to change, so the spectrogram encoder is left
    as it is.)"""
    return x.contiguous(memory_format=torch.channels_last)


@dataclass
class ImageSettings(PolicySettings):
    """``encoders.image``: the image encoder's settings (``ImageEncoder``'s arguments)."""

    name: str = "timm"  # the encoder kind (mm.registry.ENCODERS["image"])
    source: str = "effnet-lite0"  # alias (effnet-lite0: ImageNet, packaged), timm name, local folder, or arch@file
    trainable: str = "full"
    input_size: int = 0  # side in pixels the pictures are resized to; 0 = auto: the pictures' own (<= checkpoint's)
    augment: str = "none"  # training-time augmentation: none | light | rand (RandAugment)
    hflip: float = 0.5  # horizontal-flip probability when augmenting
    pretrained: bool = True  # false: the source's architecture from random weights (from scratch)

    @staticmethod
    def check(s: ImageSettings, key: str, encoder: type[Encoder]) -> None:
        PolicySettings.check(s, key, encoder)
        check_choice(f"{key}.augment", s.augment, AUGMENTS)
        check_range(f"{key}.input_size", s.input_size, 0)  # 0 = auto
        check_range(f"{key}.hflip", s.hflip, 0, 1)


def picture_side(path: Path | None) -> int | None:
    """The longer side, in pixels, of the picture at ``path`` (None: no picture)."""
    if path is None:
        return None
    from PIL import Image

    try:
        with Image.open(path) as img:
            return max(img.size)
    except OSError as err:
        raise MediaError(f"{path}: {err}") from err


def create_backbone(source: str, model_args: dict[str, Any] | None = None, pretrained: bool = True) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``) loaded from any image source.

    Args:
        source: alias, timm name, hub id, local folder or ``arch@file`` (``parse_image_source``).
        model_args: extra ``timm.create_model`` arguments (``in_chans=1`` adapts a pretrained stem
            to one-channel inputs by summing its RGB filters, as timm does for spectrograms).
        pretrained: False builds the same architecture with random weights (the from-scratch
            side of a transfer comparison); the source's preprocessing config is kept.

    Raises:
        ValueError: a local checkpoint does not cover every backbone weight.
    """
    model_name, weights_file = parse_image_source(resolve_source(source))
    kwargs = dict(model_args or {})
    if weights_file is not None:
        if not weights_file.is_file():
            raise FileNotFoundError(f"image weights file not found: {weights_file}")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights_file))
    backbone = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
    if not pretrained:
        return backbone
    if weights_file is not None:
        _check_weights_cover(backbone, weights_file)
    elif model_name.startswith("local-dir:"):
        _check_weights_cover(backbone, Path(model_name.removeprefix("local-dir:")))
    return backbone


def feature_tokens(backbone: nn.Module, features: torch.Tensor, source: str) -> torch.Tensor:
    """``forward_features`` output as tokens ``[B, N, D]`` (ViT tokens, or CNN map positions)."""
    if features.ndim == 3:  # ViT-like: [B, N, D], prefix tokens included
        return features
    if features.ndim == 4 and features.shape[1] == backbone.num_features:
        return rearrange(features, "b c h w -> b (h w) c")
    if features.ndim == 4 and features.shape[-1] == backbone.num_features:  # channels-last (Swin, ...)
        return rearrange(features, "b h w c -> b (h w) c")
    raise ValueError(f"unexpected feature shape {tuple(features.shape)} from {source}")


@register_encoder("timm")
class ImageEncoder(Encoder):
    """A timm backbone without its classifier; patch / pixel tokens plus timm's pre-logits pooling.

    Args:
        source: alias (``effnet-lite0``, ``tiny-vit``, ``tiny-cnn``), timm hub name, local folder in
            hub layout, or ``<arch>@<weights file>``; see ``parse_image_source``.
        trainable: ``frozen`` or ``full``.
        model_args: extra ``timm.create_model`` keyword arguments, e.g. the architecture's sizes
            for a weights file of a non-standard variant, or ``drop_path_rate``.
        input_size: side in pixels the pictures are resized to; 0 (auto): the pictures' own side
            (``data_side``) rounded up to a multiple of 32, at least 64 (a stride-32 CNN then ends
            on a 2x2 map, not a single pixel) and at most the checkpoint's size, so small pictures
            are not upsampled to 224 px (a model with a fixed input size, such as a ViT, keeps its own). Set or auto, the checkpoint's centre crop is dropped
            (``crop_pct`` 1), so nothing is cut off.
        augment: training-time augmentation: ``none``, ``light`` (random-resized crop of 80-100 %
            of the area, aspect 0.9-1.1, random erasing 25 %) or ``rand`` (``light`` + RandAugment m9).
        hflip: probability of a horizontal flip when augmenting (0 for digits, text, ...).
        pretrained: False: the source's architecture with random weights (training from scratch).
        first_file: returns the dataset's first training picture (``mm.data.first_file``), whose
            longer side ``input_size`` 0 resizes to (called only then, and only for a model without
            a fixed input size).

    Attributes:
        transform: PIL image -> ``Tensor[3, H, W]``, the checkpoint's evaluation preprocessing.
        train_transform: the augmented training preprocessing (``transform`` when ``augment=none``).
        data_config: timm's resolved data config (``input_size``, ``mean``, ``std``, ...).
    """

    modality = "image"
    settings = ImageSettings
    media = True
    picture_keys = ("pixel_values",)
    source_library = "timm"

    def __init__(self, source: str, trainable: str = "frozen", model_args: dict[str, Any] | None = None,
                 input_size: int = 0, augment: str = "none", hflip: float = 0.5, pretrained: bool = True,
                 first_file: Callable[[], Path | None] | None = None):
        super().__init__()
        if augment not in AUGMENTS:
            raise ValueError(f"unknown image augment {augment!r}; valid: {list(AUGMENTS)}")
        self.source = source
        self.backbone = create_backbone(source, model_args, pretrained)
        self.data_config = timm.data.resolve_data_config({}, model=self.backbone)
        own = self.data_config["input_size"][-1]
        fixed = getattr(self.backbone, "pretrained_cfg", {}).get("fixed_input_size", False)
        self.convolutional = not hasattr(self.backbone, "patch_embed")  # a CNN: channels-last input
        side = picture_side(first_file()) if not input_size and first_file is not None and not fixed else None
        if side:
            input_size = min(own, max(MIN_AUTO_SIZE, -(-side // 32) * 32))
        if input_size:
            self.data_config.update(input_size=(3, input_size, input_size), crop_pct=1.0)
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)
        self.augment = augment != "none"
        self.train_transform = self.transform
        if self.augment:
            cfg = self.data_config
            self.train_transform = timm.data.create_transform(
                cfg["input_size"], is_training=True, scale=(0.8, 1.0), ratio=(0.9, 1.1), hflip=hflip, color_jitter=0.0,
                auto_augment="rand-m9-mstd0.5-inc1" if augment == "rand" else None,
                interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"], re_prob=0.25, re_mode="pixel",
            )
        # Dimension of ``pooled``; equals the token width for ViTs and most CNNs.
        self.out_dim = getattr(self.backbone, "head_hidden_size", self.backbone.num_features)
        self.set_trainable(trainable)

    @classmethod
    def decode_file(cls, path: Path) -> list[str]:
        return decode_image(path)[1]

    def load(self, value: Any, root: Path, train: bool = False) -> torch.Tensor:
        picture = read_image(media_path(value, root))  # 8-bit RGB: 16-bit grey scaled, transparency on black
        return (self.train_transform if train else self.transform)(picture)

    def collate(self, values: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Stacked pictures; a missing one is a zero picture of the input size."""
        zeros = torch.zeros(self.data_config["input_size"])
        return {"pixel_values": torch.stack([zeros if v is None else v for v in values])}

    def fingerprint(self) -> dict[str, Any]:
        return {"data_config": self.data_config, "transform": repr(self.transform),
                "global_pool": str(getattr(self.backbone, "global_pool", None)), "library": timm.__version__}

    def corrupt(self, inputs: dict[str, torch.Tensor], strength: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Gaussian noise of standard deviation ``2 * strength`` on the normalised pixels."""
        return add_gaussian(inputs, "pixel_values", strength, generator)

    def export(self, out_dir: Path, backbone: nn.Module) -> None:
        """timm's hub layout (architecture, arguments, pretrained_cfg), as ``save_for_hf`` writes it."""
        timm.models.save_for_hf(backbone, str(out_dir), safe_serialization=True)

    def encode(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        pixels = inputs["pixel_values"]
        features = self.backbone.forward_features(channels_last(pixels) if self.convolutional else pixels)
        tokens = feature_tokens(self.backbone, features, self.source)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)
