"""The contract every encoder keeps: ``EncoderOutput`` and frozen/trainable handling."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mm.checkpoint import weights_digest

TRAINABLE_POLICIES = ("frozen", "full")
FROZEN_POLICIES = ("frozen", "linear_probe")  # the policies that never train the backbone


@dataclass
class EncoderOutput:
    """What an encoder returns for a batch.

    Attributes:
        tokens: ``[B, T, D]`` token / patch / frame features.
        mask: ``[B, T]`` bool, True where a token is real (not padding).
        pooled: ``[B, D]`` one vector per sample.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens [B,T,D]`` over the positions where ``mask [B,T]`` is True."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # [B, T, 1]
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class Encoder(nn.Module):
    """Base for the modality encoders: wraps ``self.backbone`` and applies a trainability policy.

    Subclasses set ``self.backbone`` and ``self.out_dim``, implement ``encode(inputs)`` and call
    ``self.set_trainable(policy)`` at the end of ``__init__``. A frozen backbone has
    ``requires_grad`` off, stays in ``eval()`` while the model trains and runs under ``no_grad``.
    """

    backbone: nn.Module
    out_dim: int

    def set_trainable(self, policy: str) -> None:
        if policy not in TRAINABLE_POLICIES:
            raise ValueError(f"unknown trainable policy {policy!r}; valid: {list(TRAINABLE_POLICIES)}")
        self.policy = policy
        for p in self.backbone.parameters():
            p.requires_grad_(policy == "full")
        self.train(self.training)

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    @property
    def frozen_for_run(self) -> bool:
        """Frozen now and, by its policy, for the whole run (``gradual`` starts frozen but thaws):
        its backbone then always holds exactly the weights it was loaded with."""
        return getattr(self, "policy", None) in FROZEN_POLICIES and self.frozen

    def weights_digest(self) -> str:
        """``mm.checkpoint.weights_digest`` of the backbone, recomputed only when a weight changed:
        the memo is keyed on every tensor's storage and version counter, which any in-place write
        (an optimizer step, ``load_state_dict``, an edit under ``no_grad``) bumps."""
        stamp = tuple((k, t.data_ptr(), t._version) for k, t in self.backbone.state_dict().items())
        if getattr(self, "_digest_stamp", None) != stamp:
            self._digest, self._digest_stamp = weights_digest(self.backbone), stamp
        return self._digest

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # frozen: no dropout, no batch-norm updates, ever
        return self

    def encode(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.encode(inputs)
