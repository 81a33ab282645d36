"""Image encoder: any timm model, with the preprocessing of its own pretrained config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import timm.data
import timm.models
import torch
from torch import nn

from mm.encoders.base import Encoder, EncoderOutput
from mm.encoders.sources import resolve_source

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


class ImageEncoder(Encoder):
    """A timm backbone without its classifier; patch / pixel tokens plus timm's pre-logits pooling.

    Args:
        source: alias (``tiny-vit``), timm hub name, local folder in hub layout, or
            ``<arch>@<weights file>``; see ``parse_image_source``.
        trainable: ``frozen`` or ``full``.
        model_args: extra ``timm.create_model`` keyword arguments, e.g. the architecture's sizes
            for a weights file of a non-standard variant, or ``drop_path_rate``.

    Attributes:
        transform: PIL image -> ``Tensor[3, H, W]``, the checkpoint's evaluation preprocessing.
        data_config: timm's resolved data config (``input_size``, ``mean``, ``std``, ...).
    """

    def __init__(self, source: str, trainable: str = "frozen", model_args: dict[str, Any] | None = None):
        super().__init__()
        self.source = source
        model_name, weights_file = parse_image_source(resolve_source(source))
        kwargs = dict(model_args or {})
        if weights_file is not None:
            if not weights_file.is_file():
                raise FileNotFoundError(f"image weights file not found: {weights_file}")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(weights_file))
        self.backbone = timm.create_model(model_name, pretrained=True, num_classes=0, **kwargs)
        if weights_file is not None:
            _check_weights_cover(self.backbone, weights_file)
        elif model_name.startswith("local-dir:"):
            _check_weights_cover(self.backbone, Path(model_name.removeprefix("local-dir:")))
        self.data_config = timm.data.resolve_data_config({}, model=self.backbone)
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)
        # Dimension of ``pooled``; equals the token width for ViTs and most CNNs.
        self.out_dim = getattr(self.backbone, "head_hidden_size", self.backbone.num_features)
        self.set_trainable(trainable)

    def encode(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        features = self.backbone.forward_features(inputs["pixel_values"])
        if features.ndim == 3:  # ViT-like: [B, N, D], prefix tokens included
            tokens = features
        elif features.ndim == 4 and features.shape[1] == self.backbone.num_features:
            tokens = features.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]
        elif features.ndim == 4 and features.shape[-1] == self.backbone.num_features:
            tokens = features.flatten(1, 2)  # channels-last maps (Swin, ...): [B, H, W, C] -> [B, H*W, C]
        else:
            raise ValueError(f"unexpected feature shape {tuple(features.shape)} from {self.source}")
        pooled = self.backbone.forward_head(features, pre_logits=True)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)
