"""Attention fusion: a small transformer over the tokens of all modalities and a fusion token."""

from __future__ import annotations

import torch
from einops import pack, rearrange, repeat
from torch import nn

from mm.encoders.base import EncoderOutput
from mm.fusion.base import register_fusion


@register_fusion("attention")
class AttentionFusion(nn.Module):
    """Transformer encoder over ``[FUSION; tokens of modality 1; ...; tokens of modality M]``.

    Every modality's tokens are layer-normed, projected to ``hidden_dim`` and tagged with a learned
    modality embedding; a learned fusion ([CLS]) token is prepended, and ``num_layers`` pre-norm
    transformer layers run over the concatenation with a key padding mask taken from the encoders'
    masks (an absent modality shows only its single missing-embedding token). Padded positions are
    zeroed after projection, so whatever they hold never reaches the output. The fusion token's final
    state is the output. No positional embedding is added: token order is what the encoders encoded.
    Token counts may differ per modality and per batch.

    Args:
        in_dims: modality -> token feature size.
        hidden_dim: model width of the transformer; must be divisible by ``num_heads``.
        num_layers: transformer layers (at least 1).
        dropout: dropout inside the transformer layers.
        num_heads: attention heads.

    Output size ``out_dim``: ``hidden_dim``.
    """

    def __init__(self, in_dims: dict[str, int], hidden_dim: int = 256, num_layers: int = 1, dropout: float = 0.1,
                 *, num_heads: int = 4):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"attention fusion needs num_layers >= 1, got {num_layers}")
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.modalities = sorted(in_dims)
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(in_dims[m]), nn.Linear(in_dims[m], hidden_dim))
                                   for m in self.modalities})
        self.modality_embedding = nn.ParameterDict({m: nn.Parameter(0.02 * torch.randn(hidden_dim))
                                                    for m in self.modalities})
        self.fusion_token = nn.Parameter(0.02 * torch.randn(hidden_dim))
        layer = nn.TransformerEncoderLayer(hidden_dim, num_heads, dim_feedforward=4 * hidden_dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(hidden_dim),
                                             enable_nested_tensor=False)
        self.out_dim = hidden_dim

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        first = outputs[self.modalities[0]].tokens
        B = first.shape[0]
        seq = [repeat(self.fusion_token, "h -> b 1 h", b=B)]
        keep = [torch.ones(B, 1, dtype=torch.bool, device=first.device)]  # the fusion token is never padding
        for m in self.modalities:
            out = outputs[m]
            embedding = rearrange(self.modality_embedding[m], "h -> 1 1 h")  # the same for every token
            tokens = self.proj[m](out.tokens) + embedding  # [B, T_m, D_m] -> [B, T_m, H]
            seq.append(tokens.masked_fill(~rearrange(out.mask, "b t -> b t 1"), 0.0))
            keep.append(out.mask.to(torch.bool))
        x, _ = pack([s.to(seq[-1].dtype) for s in seq], "b * h")  # [B, 1 + sum_m T_m, H]
        keep_all, _ = pack(keep, "b *")  # [B, 1 + sum_m T_m]
        padding = ~keep_all  # True = ignore
        return self.encoder(x, src_key_padding_mask=padding)[:, 0]  # fusion token: [B, H]
