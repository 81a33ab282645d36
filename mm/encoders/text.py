"""Text encoder: a Hugging Face transformer (BERT family) and the tokenizer of the same checkpoint."""

from __future__ import annotations

import inspect
import warnings

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from mm.encoders.base import Encoder, EncoderOutput, masked_mean
from mm.encoders.sources import resolve_source

POOLINGS = ("mean", "cls")


def load_text_backbone(path: str) -> torch.nn.Module:
    """``AutoModel.from_pretrained(path)`` without the BERT pooler where the architecture has one.

    The pooler (a dense layer on [CLS] trained for next-sentence prediction) is never used by
    ``TextEncoder``; leaving it out means every trainable parameter gets a gradient.
    """
    config = AutoConfig.from_pretrained(path)
    model_class = AutoModel._model_mapping[type(config)]
    kwargs = {}
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    # Load quietly, then report what matters ourselves: the dropped pooler's unused weights are
    # expected; a backbone weight missing from the checkpoint (left at random init) is not.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModel.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        warnings.warn(f"{path}: {len(info['missing_keys'])} backbone weights not in the checkpoint, "
                      f"randomly initialised: {sorted(info['missing_keys'])[:5]}...", stacklevel=2)
    return model


class TextEncoder(Encoder):
    """A pretrained transformer over tokens, mean- or [CLS]-pooled.

    Args:
        source: alias (``minilm``, ``tiny-bert``), hub id (``bert-base-uncased``) or a local folder
            holding a ``save_pretrained`` checkpoint with its tokenizer. Never runs remote code.
        trainable: ``frozen`` or ``full``.
        max_length: tokens per text, longer texts are truncated.
        pooling: ``mean`` (masked mean over real tokens, as sentence-transformers models such as
            all-MiniLM-L6-v2 were trained) or ``cls`` (the first token's final state).
    """

    def __init__(self, source: str, trainable: str = "frozen", max_length: int = 64, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
        path = resolve_source(source)
        self.source = source
        self.max_length = max_length
        self.pooling = pooling
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.backbone = load_text_backbone(path)
        self.out_dim = self.backbone.config.hidden_size
        self.set_trainable(trainable)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize a batch, padded to its longest text and truncated at ``max_length``.

        Returns:
            ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` where the model uses
            them), each ``Long[B, T]``.
        """
        return dict(
            self.tokenizer(
                list(texts),
                padding="longest",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )

    def tokenize_words(self, words_batch: list[list[str]]) -> tuple[dict[str, torch.Tensor], list[list[int | None]]]:
        """Tokenize pre-split words (token tagging), padded and truncated like ``tokenize``.

        Returns:
            The encoding (as ``tokenize``) and, per sample, the word index of every word piece
            (None for [CLS], [SEP] and padding), to align word-level labels with the pieces.
        """
        if not self.tokenizer.is_fast:
            raise ValueError(f"{self.source}: word alignment needs a fast tokenizer (tokenizer.json)")
        encoding = self.tokenizer(
            [list(words) for words in words_batch],
            is_split_into_words=True,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return dict(encoding), [encoding.word_ids(i) for i in range(len(words_batch))]

    def encode(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        model_inputs = {
            k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs
        }
        tokens = self.backbone(**model_inputs).last_hidden_state  # [B, T, D]
        mask = inputs["attention_mask"].bool()
        pooled = masked_mean(tokens, mask) if self.pooling == "mean" else tokens[:, 0]
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)
