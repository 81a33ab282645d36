"""Token fusion for tagging: the text's tokens, enriched by the other modalities' tokens.

Unlike the pooled fusions, ``text_tokens`` keeps one vector per text token, ``[B, T_text, out_dim]``,
for the ``token`` head (NER). With image or audio present it is multimodal NER: each text token
attends to the tokens of the other modalities.
"""

from __future__ import annotations

import torch
from einops import pack
from torch import nn

from mm.encoders.base import EncoderOutput
from mm.fusion.base import register_fusion


class CrossAttentionLayer(nn.Module):
    """Queries attend to a context: ``LayerNorm(x + Dropout(MultiheadAttention(x, ctx, ctx)))``."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(x, context, context, key_padding_mask=padding, need_weights=False)
        return self.norm(x + self.dropout(attended))


@register_fusion("text_tokens")
class TextTokensFusion(nn.Module):
    """The text encoder's tokens, projected, then cross-attending to the other modalities' tokens.

    The text tokens ``[B, T, D_text]`` are projected to ``hidden_dim``; the tokens of every other
    modality are layer-normed and projected to ``hidden_dim`` and concatenated into one context
    ``[B, sum_m T_m, hidden_dim]``. Then ``num_layers`` cross-attention layers (text queries, context
    keys and values, residual + LayerNorm) run, with a key padding mask taken from the encoders'
    masks; an absent modality shows only its single missing-embedding token, as the model fills it
    in. With text alone, or ``num_layers=0``, the output is the projection (plus dropout).

    Args:
        in_dims: modality -> token feature size; must contain ``text``.
        hidden_dim: output size; must be divisible by ``num_heads`` when there is cross-attention.
        num_layers: cross-attention layers.
        dropout: dropout after the projection and on the attention.
        num_heads: attention heads.

    Output size ``out_dim``: ``hidden_dim``.
    """

    def __init__(self, in_dims: dict[str, int], hidden_dim: int = 256, num_layers: int = 1, dropout: float = 0.1,
                 *, num_heads: int = 4):
        super().__init__()
        if "text" not in in_dims:
            raise ValueError(f"text_tokens fusion needs the text modality, got {sorted(in_dims)}")
        self.others = sorted(m for m in in_dims if m != "text")
        self.project = nn.Linear(in_dims["text"], hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.context = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(in_dims[m]), nn.Linear(in_dims[m], hidden_dim))
                                      for m in self.others})
        n_layers = num_layers if self.others else 0
        if n_layers and hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim {hidden_dim} is not divisible by num_heads {num_heads}")
        self.layers = nn.ModuleList([CrossAttentionLayer(hidden_dim, num_heads, dropout) for _ in range(n_layers)])
        self.out_dim = hidden_dim

    def forward(self, outputs: dict[str, EncoderOutput], present: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        x = self.dropout(self.project(outputs["text"].tokens))  # [B, T_text, D_text] -> [B, T_text, H]
        if not self.layers:
            return x
        # The other modalities' tokens, one after another: S = sum_m T_m.
        context, _ = pack([self.context[m](outputs[m].tokens).to(x.dtype) for m in self.others], "b * h")  # [B, S, H]
        keep, _ = pack([outputs[m].mask.to(torch.bool) for m in self.others], "b *")  # [B, S]
        padding = ~keep  # True = ignore
        # A sample with no context token at all (never after fill_missing) keeps its first one, so
        # that attention is never over an empty set (which gives NaN).
        padding[:, 0] &= ~padding.all(dim=1)
        for layer in self.layers:
            x = layer(x, context, padding)
        return x
