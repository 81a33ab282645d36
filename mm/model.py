"""``MultimodalModel(encoders, fusion, head)`` and ``build_model(cfg)``, where config meets modules."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from mm.config import Config
from mm.data import first_file
from mm.encoders import build_encoder
from mm.encoders.base import EncoderOutput
from mm.encoders.policies import POLICY_KEYS, apply_policy, enable_grad_checkpointing
from mm.encoders.word_features import SHAPE_DIM
from mm.fusion import build_fusion
from mm.heads import build_head


class MultimodalModel(nn.Module):
    """Encoders -> (missing-modality handling) -> fusion -> head.

    A sample whose modality is absent (``batch["present"][m]`` False: missing in the manifest,
    removed at test time, or dropped by modality dropout) has that modality's pooled feature
    replaced by a learned "missing" embedding and its tokens by that embedding as a single token.
    Fusions also receive the presence masks, so averaging fusions can skip absent modalities.

    Args:
        encoders: modality -> encoder (keys are the model's modalities).
        fusion: maps ``dict[str, EncoderOutput]`` (and presence masks) to fused features.
        head: maps fused features to logits and owns loss and metrics.
        modality_dropout: during training, the probability of dropping each modality of each
            sample (never all of a sample's present modalities).
    """

    def __init__(self, encoders: dict[str, nn.Module], fusion: nn.Module, head: nn.Module,
                 modality_dropout: float = 0.0):
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.fusion = fusion
        self.head = head
        self.modality_dropout = modality_dropout
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(e.out_dim)) for m, e in encoders.items()})

    @property
    def modalities(self) -> list[str]:
        return sorted(self.encoders)

    def presence(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-sample presence masks ``{m: Bool[B]}``, after modality dropout when training."""
        B = len(batch["label"])
        present = {m: batch.get("present", {}).get(m, torch.ones(B, dtype=torch.bool, device=batch["label"].device))
                   for m in self.modalities}
        if self.training and self.modality_dropout > 0 and len(self.modalities) > 1:
            stacked = torch.stack([present[m] for m in self.modalities], 1)  # [B, M]
            keep = torch.rand(stacked.shape, device=stacked.device) >= self.modality_dropout
            dropped = stacked & keep
            # A sample that would lose every modality keeps what it had.
            dropped = torch.where(dropped.any(1, keepdim=True), dropped, stacked)
            present = {m: dropped[:, i] for i, m in enumerate(self.modalities)}
        return present

    def encode(self, batch: dict[str, Any], given: dict[str, EncoderOutput] | None = None) -> dict[str, EncoderOutput]:
        """Every modality's outputs, in modality order: those ``given`` (cached), the others encoded."""
        given = given or {}
        return {m: given[m] if m in given else self.encoders[m](batch[m]) for m in self.modalities}

    def fill_missing(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor]) -> dict[str, EncoderOutput]:
        """Absent samples get the learned missing embedding as pooled feature and as their one token."""
        filled = {}
        for m, out in outputs.items():
            p = present[m]
            if bool(p.all()):
                filled[m] = out
                continue
            emb = self.missing[m].to(out.pooled.dtype)
            pooled = torch.where(p[:, None], out.pooled, emb)
            tokens = torch.where(p[:, None, None], out.tokens, emb.expand_as(out.tokens))
            first = torch.zeros_like(out.mask)
            first[:, 0] = True
            mask = torch.where(p[:, None], out.mask, first)
            filled[m] = EncoderOutput(tokens, mask, pooled)
        return filled

    def forward(self, batch: dict[str, Any], outputs: dict[str, EncoderOutput] | None = None) -> torch.Tensor:
        """Logits for a batch; ``outputs`` may pass precomputed encoder outputs for some or all of
        its modalities."""
        present = self.presence(batch)
        outputs = self.fill_missing(self.encode(batch, outputs), present)
        fused = self.fusion(outputs, present)
        # a head may read more of the batch (the token head's word shapes): it names the keys
        return self.head(fused, **{k: batch[k] for k in getattr(self.head, "batch_keys", ())})


def build_model(cfg: Config, num_classes: int, classes: list | None = None) -> MultimodalModel:
    """Build the model a config describes: its modalities' encoders, the fusion and the head.

    ``num_classes`` is the head's output size (``mm.labels`` codec's ``num_outputs``); ``classes``
    the class names, which the token head needs for its entity metrics.
    """
    encoders = {}
    for m in sorted(cfg.data.modalities):
        enc_cfg = vars(getattr(cfg.encoders, m))
        settings = {k: v for k, v in enc_cfg.items() if k not in POLICY_KEYS and k != "name"}
        # the dataset's first file of the modality, for an encoder that sizes itself on the data
        # (ImageEncoder with input_size 0 asks for it; build_encoder passes it only to those that declare it)
        settings["first_file"] = functools.partial(first_file, cfg.data, m)
        encoder = build_encoder(m, enc_cfg["name"], trainable="frozen", **settings)
        apply_policy(encoder, enc_cfg["trainable"], last_n=enc_cfg["last_n"], lora_r=enc_cfg["lora_r"],
                     lora_alpha=enc_cfg["lora_alpha"], lora_dropout=enc_cfg["lora_dropout"],
                     lora_targets=enc_cfg["lora_targets"])
        if enc_cfg["grad_checkpointing"]:
            enable_grad_checkpointing(encoder)
        encoders[m] = encoder
    fusion_kwargs = {k: v for k, v in vars(cfg.fusion).items() if k not in ("name", "modality_dropout")}
    if any(e.policy == "linear_probe" for e in encoders.values()):
        # A linear probe learns one linear map of the frozen features: no fusion MLP.
        if cfg.fusion.name != "concat":
            raise ValueError(f"linear_probe needs fusion.name=concat, not {cfg.fusion.name!r}")
        fusion_kwargs["num_layers"] = 0
    fusion = build_fusion(cfg.fusion.name, {m: e.out_dim for m, e in encoders.items()}, **fusion_kwargs)
    # the token head joins word-shape features where the text encoder resolved them on (an uncased tokenizer)
    shape_dim = SHAPE_DIM if getattr(encoders.get("text"), "word_features", False) else 0
    head = build_head(cfg.head.name, fusion.out_dim, num_classes, classes=classes, top_k=cfg.head.top_k,
                      loss=cfg.head.loss, label_smoothing=cfg.head.label_smoothing, word_features=shape_dim,
                      crf=cfg.head.crf, constrained=cfg.head.constrained)
    return MultimodalModel(encoders, fusion, head, modality_dropout=cfg.fusion.modality_dropout)


def parameter_counts(model: MultimodalModel) -> dict[str, int]:
    """Total and trainable parameter counts, overall and per encoder."""
    counts = {
        "params/total": sum(p.numel() for p in model.parameters()),
        "params/trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for m, enc in model.encoders.items():
        counts[f"params/{m}/total"] = sum(p.numel() for p in enc.parameters())
        counts[f"params/{m}/trainable"] = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    return counts
