"""Text encoder: a Hugging Face transformer (BERT family) and the tokenizer of the same checkpoint."""

from __future__ import annotations

import hashlib
import inspect
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from mm.config import check_choice, check_range
from mm.data.media import text_value
from mm.encoders.base import Encoder, EncoderOutput, masked_mean
from mm.encoders.policies import PolicySettings
from mm.encoders.prompt import SoftPrompt
from mm.encoders.sources import resolve_source
from mm.encoders.word_features import lowercases, piece_shapes
from mm.registry import register_encoder

POOLINGS = ("mean", "cls")


@dataclass
class TextSettings(PolicySettings):
    """``encoders.text``: the text encoder's settings (``TextEncoder``'s arguments)."""

    name: str = "transformers"  # the encoder kind (mm.registry.ENCODERS["text"])
    source: str = "minilm"  # alias, hub id or local folder
    max_length: int = 64  # word pieces per window; classification texts are truncated here
    pooling: str = "mean"  # mean | cls
    stride: int = 16  # token tagging: pieces shared by the overlapping windows over a longer sentence
    prompt_tokens: int = 20  # trainable=prompt: learned vectors in front of the input (mm.encoders.prompt)
    pretrained: bool = True  # false: the source's architecture from random weights (from scratch)
    word_features: bool | None = None  # token head: word-shape (casing) features; None = auto: on where the tokenizer lowercases

    @staticmethod
    def check(s: TextSettings, key: str, encoder: type[Encoder]) -> None:
        PolicySettings.check(s, key, encoder)
        check_choice(f"{key}.pooling", s.pooling, POOLINGS)
        check_range(f"{key}.max_length", s.max_length, 2)
        check_range(f"{key}.stride", s.stride, 0, s.max_length, open_high=True)  # < max_length
        check_range(f"{key}.prompt_tokens", s.prompt_tokens, 1)


def fast_attention(config: transformers.PretrainedConfig) -> dict[str, str]:
    """``attn_implementation="sdpa"`` (PyTorch's fused scaled-dot-product attention: flash or
    memory-efficient kernels on GPUs) for ``AutoModel`` of an architecture that supports it, else nothing."""
    model_class = AutoModel._model_mapping[type(config)]
    return {"attn_implementation": "sdpa"} if getattr(model_class, "_supports_sdpa", False) else {}


def load_text_backbone(path: str, pretrained: bool = True) -> torch.nn.Module:
    """``AutoModel.from_pretrained(path)`` without the BERT pooler where the architecture has one,
    with SDPA attention where it is supported (``fast_attention``); ``pretrained=False``: the same
    architecture with random weights (``AutoModel.from_config``).

    The pooler (a dense layer on [CLS] trained for next-sentence prediction) is never used by
    ``TextEncoder``; leaving it out means every trainable parameter gets a gradient.
    """
    config = AutoConfig.from_pretrained(path)
    model_class = AutoModel._model_mapping[type(config)]
    kwargs = fast_attention(config)
    if "add_pooling_layer" in inspect.signature(model_class.__init__).parameters:
        kwargs["add_pooling_layer"] = False
    if not pretrained:
        return model_class(config, **{k: v for k, v in kwargs.items() if k == "add_pooling_layer"})
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


@register_encoder("transformers")
class TextEncoder(Encoder):
    """A pretrained transformer over tokens, mean- or [CLS]-pooled.

    Args:
        source: alias (``minilm``, ``tiny-bert``), hub id (``bert-base-uncased``) or a local folder
            holding a ``save_pretrained`` checkpoint with its tokenizer. Never runs remote code.
        trainable: ``frozen`` or ``full``.
        max_length: word pieces per text (with the special tokens). ``tokenize`` (classification
            and the other pooled heads) truncates longer texts; ``tokenize_words`` (token tagging)
            never truncates: ``encode`` reads a longer sentence in overlapping windows.
        pooling: ``mean`` (masked mean over real tokens, as sentence-transformers models such as
            all-MiniLM-L6-v2 were trained) or ``cls`` (the first token's final state).
        stride: word pieces shared by consecutive windows over a sequence longer than the window
            (``max_length``, or the backbone's position limit if smaller), as the ``stride`` of
            Hugging Face tokenizers and of the NER pipeline; capped at half a window.
        prompt_tokens: the soft prompt's length under ``trainable=prompt`` (``mm.encoders.prompt``);
            the prompt itself is added by that policy, never here.
        pretrained: False: the source's architecture with random weights (its tokenizer kept).
        word_features: token tagging: each word's shape (casing, digits, punctuation;
            ``mm.encoders.word_features``) is embedded and joined to its vector before the tag layer.
            None (auto): on where the tokenizer lowercases (all-MiniLM-L6-v2, ``bert-base-uncased``),
            off where the checkpoint is cased. ``self.word_features`` holds the resolved value.
    """

    modality = "text"
    settings = TextSettings
    mixable = False  # token ids cannot be blended
    source_library = "hf"
    prompt_capable = True

    def __init__(self, source: str, trainable: str = "frozen", max_length: int = 64, pooling: str = "mean",
                 stride: int = 16, prompt_tokens: int = 20, pretrained: bool = True,
                 word_features: bool | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {list(POOLINGS)}")
        if stride < 0:
            raise ValueError(f"stride must be >= 0, got {stride}")
        path = resolve_source(source)
        self.source = source
        self.max_length = max_length
        self.pooling = pooling
        self.stride = stride
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.backbone = load_text_backbone(path, pretrained)
        self.out_dim = self.backbone.config.hidden_size
        # One window: max_length pieces, never more than the backbone has positions for (RoBERTa's
        # offset positions are covered by its tokenizer's model_max_length).
        limits = (max_length, self.tokenizer.model_max_length, getattr(self.backbone.config, "max_position_embeddings", None))
        self.window = min(n for n in limits if n)
        # The special tokens a single sequence gets before and after its pieces ([CLS] / [SEP] for BERT).
        special = self.tokenizer("a", return_special_tokens_mask=True)["special_tokens_mask"]  # BERT: [1, 0, 1]
        self.n_prefix = special.index(0)
        self.n_suffix = special[::-1].index(0)
        if self.window - self.n_prefix - self.n_suffix < 1:
            raise ValueError(f"max_length={max_length} leaves no room for text beside the special tokens")
        self.prompt_tokens = prompt_tokens
        self.word_features = lowercases(self.tokenizer) if word_features is None else bool(word_features)
        self.prompt: SoftPrompt | None = None  # set by the prompt policy (mm.encoders.policies)
        self.set_trainable(trainable)

    @property
    def frozen(self) -> bool:
        """No backbone weight trains and there is no soft prompt (a prompt's gradient flows through the backbone)."""
        return super().frozen and self.prompt is None

    def run_backbone(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The backbone's last hidden states ``[B, T, D]``, with the soft prompt in front when there is one."""
        if self.prompt is not None:
            return self.prompt(self.backbone, inputs)
        return self.backbone(**inputs).last_hidden_state

    @classmethod
    def check_value(cls, value: Any) -> list[tuple[str, str]]:
        """A string (else a MediaError); an empty one is worth a warning."""
        return [] if text_value(value).strip() else [("empty text", "the text is empty")]

    def load(self, value: Any, root: Path, train: bool = False) -> str:
        return text_value(value)  # a string, else a MediaError

    def length(self, value: Any, root: Path) -> int:
        """Word pieces of the text with its special tokens, truncated at ``max_length`` as ``tokenize`` does."""
        return len(self.tokenizer(text_value(value), truncation=True, max_length=self.max_length)["input_ids"])

    def collate(self, values: list[str | None]) -> dict[str, torch.Tensor]:
        """``tokenize``; a missing text is the empty string ([CLS] [SEP])."""
        return self.tokenize(["" if v is None else v for v in values])

    def fingerprint(self) -> dict[str, Any]:
        tok = self.tokenizer
        if tok.is_fast:
            # The serialized pipeline opens with the truncation and padding state the last call left
            # behind; from "added_tokens" on it is the tokenizer itself (vocabulary, normalizer, ...).
            pipeline = tok.backend_tokenizer.to_str()
            vocab = pipeline[pipeline.find('"added_tokens"'):]
        else:
            vocab = json.dumps(sorted(tok.get_vocab().items()))
        return {"tokenizer": repr(tok), "vocab": hashlib.sha256(vocab.encode()).hexdigest(),
                "max_length": self.max_length, "stride": self.stride, "pooling": self.pooling, "library": transformers.__version__}

    def corrupt(self, inputs: dict[str, torch.Tensor], strength: float,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Each real, non-special token replaced by a random vocabulary token with probability ``strength``."""
        if strength == 0:
            return inputs
        ids = inputs["input_ids"]
        special = torch.isin(ids, torch.tensor(self.tokenizer.all_special_ids))
        flip = (torch.rand(ids.shape, generator=generator) < strength) & inputs["attention_mask"].bool() & ~special
        random_ids = torch.randint(0, self.tokenizer.vocab_size, ids.shape, generator=generator)
        return {**inputs, "input_ids": torch.where(flip, random_ids, ids)}

    def export(self, out_dir: Path, backbone: nn.Module) -> None:
        if self.prompt is not None:  # the backbone itself never changed under prompt tuning
            warnings.warn(f"{out_dir}: the soft prompt ({len(self.prompt)} vectors) is task-specific and not part "
                          "of the exported backbone, which is the unchanged source checkpoint", stacklevel=2)
        backbone.save_pretrained(out_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(out_dir)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenize a batch, padded to its longest text and truncated at ``max_length``.

        Truncation is deliberate here: a pooled head (classification, multilabel, regression)
        reads one vector per text, and the first ``max_length`` pieces are what it was tuned on.
        Token tagging uses ``tokenize_words``, which never truncates.

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
        """Tokenize pre-split words (token tagging), padded to the longest sentence, never truncated.

        Every word keeps its pieces, so every word gets a prediction: a sentence longer than the
        window is read by ``encode`` in overlapping windows.

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
            truncation=False,
            return_tensors="pt",
            verbose=False,  # no "longer than the maximum" warning: encode reads long sentences in windows
        )
        return dict(encoding), [encoding.word_ids(i) for i in range(len(words_batch))]

    @staticmethod
    def word_shapes(words_batch: list[list[str]], word_ids: list[list[int | None]]) -> torch.Tensor:
        """``Long[B, T]``: each piece's word-shape id (``mm.encoders.word_features``; 0 on special
        tokens and padding), from the words and the ``word_ids`` ``tokenize_words`` returns."""
        return torch.tensor([piece_shapes(list(words), ids) for words, ids in zip(words_batch, word_ids, strict=True)])

    def encode(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        """Per-piece features ``[B, T, D]`` of a batch, read in overlapping windows when ``T`` exceeds
        the window (see ``encode_windows``); a batch that fits runs through the backbone as it is."""
        model_inputs = {
            k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs
        }
        mask = inputs["attention_mask"].bool()
        if mask.shape[1] <= self.window:
            tokens = self.run_backbone(model_inputs)  # [B, T, D]
        else:
            tokens = self.encode_windows(model_inputs)
        pooled = masked_mean(tokens, mask) if self.pooling == "mean" else tokens[:, 0]
        return EncoderOutput(tokens=tokens, mask=mask, pooled=pooled)

    def encode_windows(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The backbone over overlapping windows of a batch longer than ``self.window``, stitched back.

        Each row's pieces (those between its own special tokens) are cut into windows of at most
        ``window`` positions, special tokens included: every window gets the row's [CLS] and [SEP]
        around its pieces and restarts at position 0, so BERT reads each window as it read its
        pretraining sequences. Consecutive windows share ``stride`` pieces (at most half a window).
        Each piece takes its output from the window where it is most central (most context on its
        nearer side; ties go to the earlier window), the row's [CLS] from its first window and its
        [SEP] from its last. Padding positions get zeros. A row that fits one window is read exactly
        as without windows (up to the padding of the batch).

        Returns:
            ``[B, T, D]``, aligned with the positions of ``inputs``.
        """
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        pre, suf, size = self.n_prefix, self.n_suffix, self.window
        width = size - pre - suf  # text pieces per window
        step = width - min(self.stride, width // 2)
        positions: list[torch.Tensor] = []  # per window: the positions of its row that it reads
        rows: list[int] = []
        source = torch.full(ids.shape, -1, dtype=torch.long)  # [B, T]: window * size + place in it; -1 padding
        for b, row_mask in enumerate(attention.bool().cpu()):
            real = row_mask.nonzero().squeeze(1)
            prefix, text, suffix = real[:pre], real[pre : len(real) - suf], real[len(real) - suf :]
            best = torch.full((len(text),), -1)  # how central each piece is in the window it comes from
            start = 0
            while True:
                end = min(start + width, len(text))
                w, j = len(positions), torch.arange(end - start)
                positions.append(torch.cat([prefix, text[start:end], suffix]))
                rows.append(b)
                centrality = torch.minimum(j, end - start - 1 - j)
                better = centrality > best[start:end]
                best[start:end][better] = centrality[better]
                source[b, text[start:end][better]] = w * size + pre + j[better]
                if start == 0:
                    source[b, prefix] = w * size + torch.arange(pre)
                if end == len(text):
                    source[b, suffix] = w * size + pre + (end - start) + torch.arange(suf)
                    break
                start += step
        # The windows as one batch [N, size], right-padded; then the backbone over all of them.
        index = torch.full((len(positions), size), -1, dtype=torch.long)
        for w, pos in enumerate(positions):
            index[w, : len(pos)] = pos
        index, row_of = index.to(ids.device), torch.tensor(rows, device=ids.device)[:, None]
        valid = index >= 0
        window_inputs = {"input_ids": ids[row_of, index.clamp_min(0)].masked_fill(~valid, self.tokenizer.pad_token_id or 0),
                         "attention_mask": valid.to(attention.dtype)}
        if "token_type_ids" in inputs:
            window_inputs["token_type_ids"] = inputs["token_type_ids"][row_of, index.clamp_min(0)].masked_fill(~valid, 0)
        out = self.run_backbone(window_inputs)  # [N, size, D]
        source = source.to(ids.device)
        tokens = out.flatten(0, 1)[source.clamp_min(0)]  # [N * size, D] -> [B, T, D]
        return tokens.masked_fill((source < 0)[..., None], 0.0)
