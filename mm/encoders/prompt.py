"""Prompt tuning (Lester et al., 2021): learned vectors prepended to a frozen text backbone's input.

``SoftPrompt`` holds ``n`` vectors of the word-embedding width, initialised as the embeddings of
``n`` random vocabulary tokens (peft's ``SAMPLE_VOCAB``: they start at the scale the backbone
expects). A forward pass embeds the input pieces with the backbone's own word embeddings, puts
the prompt in front, extends the attention mask with ones over it (and ``token_type_ids`` with
zeros), runs the backbone on ``inputs_embeds`` and returns the hidden states of the input
positions only: ``[B, T, D]``, aligned with ``input_ids``. So every piece attends to the prompt,
while pooling (mean over the real pieces, or [CLS]) and token tagging see exactly the positions
they see without one; the pooled vector stays a sentence embedding. The input pieces sit after
the prompt, at positions ``n`` to ``n + T - 1``: the window of the encoder gives up ``n``
positions (``add_prompt``).

Ours, not peft's ``PromptTuningConfig``: peft serves prompt tuning only through
``get_peft_model``, which wraps the backbone in a ``PeftModel`` of a task type (none fails; for a
bare encoder it is ``FEATURE_EXTRACTION``). Checked with peft 0.21 on a BERT: that wrapper owns the
forward, drops ``token_type_ids`` (with a warning), returns the virtual positions among the hidden
states (``[B, n + T, D]``, so mean pooling and [CLS] would read them), and replaces
``encoder.backbone``, which mm's layer grouping, export, weight digests and checkpoints read as
the Hugging Face model itself. ``SoftPrompt`` does the same computation in one small module and
leaves the backbone as it is.
"""

from __future__ import annotations

import torch
from torch import nn


class SoftPrompt(nn.Module):
    """``tokens`` trainable input vectors, run in front of every sequence.

    Args:
        word_embeddings: the backbone's input embedding table; ``tokens`` random rows of it
            (torch's global RNG, seeded by the run) are the initial prompt.
        tokens: the number of virtual tokens.
    """

    def __init__(self, word_embeddings: nn.Embedding, tokens: int):
        super().__init__()
        if tokens < 1:
            raise ValueError(f"a soft prompt needs at least one token, got {tokens}")
        ids = torch.randint(0, word_embeddings.num_embeddings, (tokens,))
        self.vectors = nn.Parameter(word_embeddings.weight[ids].detach().clone().float())  # [n, D]

    def __len__(self) -> int:
        return len(self.vectors)

    def forward(self, backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The last hidden states ``[B, T, D]`` of the input positions, read with the prompt in front.

        Args:
            backbone: a Hugging Face encoder (``get_input_embeddings``, ``inputs_embeds``).
            inputs: ``input_ids`` and ``attention_mask`` (and ``token_type_ids``), each ``[B, T]``.
        """
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        embeds = backbone.get_input_embeddings()(ids)  # [B, T, D]
        batch, n = ids.shape[0], len(self)
        prompt = self.vectors.to(embeds.dtype).expand(batch, n, -1)  # [B, n, D]
        kwargs = {"inputs_embeds": torch.cat([prompt, embeds], 1),  # [B, n + T, D]
                  "attention_mask": torch.cat([attention.new_ones(batch, n), attention], 1)}
        if "token_type_ids" in inputs:
            kwargs["token_type_ids"] = torch.cat([inputs["token_type_ids"].new_zeros(batch, n), inputs["token_type_ids"]], 1)
        return backbone(**kwargs).last_hidden_state[:, n:]  # [B, n + T, D] -> [B, T, D]


def add_prompt(encoder: nn.Module, tokens: int) -> None:
    """Give a text encoder (one with a ``prompt`` slot, ``mm.encoders.text.TextEncoder``) a new
    ``SoftPrompt``; its backbone stays frozen. The encoder's window shrinks by ``tokens`` where the
    backbone's positions would not hold both.

    Raises:
        ValueError: the encoder has no prompt slot (image, audio), or no room is left for text.
    """
    if not hasattr(encoder, "prompt"):
        raise ValueError(f"trainable=prompt needs a text encoder; {type(encoder).__name__} ({encoder.modality}) "
                         "has no input embeddings to prepend a prompt to")
    encoder.prompt = SoftPrompt(encoder.backbone.get_input_embeddings(), tokens)
    positions = getattr(encoder.backbone.config, "max_position_embeddings", None)
    if positions is not None:
        encoder.window = min(encoder.window, positions - tokens)
        if encoder.window - encoder.n_prefix - encoder.n_suffix < 1:
            raise ValueError(f"prompt_tokens={tokens} leaves no room for text in {positions} positions")
