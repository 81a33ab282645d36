"""Input attributions with Captum: which pixels, spectrogram cells or words moved the prediction.

- Dense inputs (pictures ``pixel_values``, spectrograms ``spectrogram``, any float tensor an encoder
  reads): Captum ``IntegratedGradients`` from an all-zero input (in the encoder's normalised units:
  the mean picture / the clip's mean level, and what a missing sample collates to), or ``Occlusion``
  (a zero patch slid over the input), the model-agnostic alternative.
- Text: ``LayerIntegratedGradients`` through the backbone's word-embedding layer from a baseline
  where every real word piece is ``[PAD]`` (special tokens kept), or ``FeatureAblation`` with one
  feature per word (the word's pieces replaced by ``[PAD]`` together): occlusion for words. Piece
  scores are summed into words with the tokenizer's own word alignment.

What is explained is the probability of the target class (by default the predicted one) with
every other modality as it is. The encoders are called through ``encode`` so that gradients reach
the input even through a frozen backbone (whose ``forward`` runs under ``no_grad``). Captum
expands a batch along dim 0 step-major (``[step0: B rows, step1: B rows, ...]``); the other
modalities' features are tiled the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mm.encoders.base import EncoderOutput

METHODS = ("ig", "occlusion")


@dataclass
class Attribution:
    """Attributions of one modality for a batch.

    Attributes:
        modality, method: what was attributed and how (``ig`` or ``occlusion``).
        target: ``Long[B]`` explained class per sample.
        raw: the attribution tensor as Captum returns it (``[B, ...]`` like the input; text
            ``[B, T]`` per word piece, summed over the embedding).
        maps: dense inputs: ``[B, H, W]`` per position, summed over channels.
        words: text: per sample, ``[(word, score), ...]`` in reading order.
        groups: text: ``Long[B, T]``, each word piece's word index (-1: special token or padding).
        delta: Integrated Gradients' convergence delta per sample (sum of attributions minus the
            output difference between input and baseline), or None.
        key: the input key attributed (``pixel_values``, ``spectrogram``, ``input_ids``).
        forward_rows: rows the model ran to compute it (forward; Integrated Gradients also backward).
    """

    modality: str
    method: str
    target: torch.Tensor
    raw: torch.Tensor
    key: str
    maps: torch.Tensor | None = None
    words: list[list[tuple[str, float]]] = field(default_factory=list)
    groups: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    forward_rows: int = 0


def _tile(x: torch.Tensor, r: int) -> torch.Tensor:
    return x if r == 1 else x.repeat(r, *([1] * (x.dim() - 1)))


def _tile_out(o: EncoderOutput, r: int) -> EncoderOutput:
    return EncoderOutput(_tile(o.tokens, r), _tile(o.mask, r), _tile(o.pooled, r))


def is_text(encoder: torch.nn.Module) -> bool:
    return hasattr(encoder, "tokenizer")


def dense_key(inputs: dict[str, torch.Tensor]) -> str:
    """The float tensor an encoder reads (``pixel_values``, ``spectrogram``, ``input_values``)."""
    keys = [k for k, v in inputs.items() if torch.is_tensor(v) and v.is_floating_point() and v.dim() >= 3]
    if not keys:
        raise ValueError(f"no picture-like input ([B, C, H, W]) to attribute among {sorted(inputs)}: attributions cover pictures, spectrograms and text")
    return keys[0]


class _Probe:
    """``forward(inputs of modality m) -> class probabilities`` with the rest of the batch fixed."""

    def __init__(self, model: torch.nn.Module, batch: dict[str, Any], modality: str):
        self.model, self.batch, self.modality = model, batch, modality
        self.B = len(batch["label"])
        with torch.no_grad():
            self.others = {m: model.encoders[m](batch[m]) for m in model.modalities if m != modality}
        given = batch.get("present", {})
        self.present = {m: given.get(m, torch.ones(self.B, dtype=torch.bool)).bool() for m in model.modalities}
        self.rows = 0  # rows run so far (the cost of an attribution)

    def __call__(self, inputs: dict[str, torch.Tensor], rows: int) -> torch.Tensor:
        r = rows // self.B
        self.rows += rows
        outputs = {m: _tile_out(o, r) for m, o in self.others.items()}
        outputs[self.modality] = self.model.encoders[self.modality].encode(inputs)  # grads even when frozen
        big = {"label": _tile(self.batch["label"], r), "present": {m: _tile(p, r) for m, p in self.present.items()}}
        return torch.softmax(self.model(big, outputs=outputs).float(), -1)


@torch.no_grad()
def predict_target(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The class the model predicts for each sample (all its present modalities)."""
    return model(batch).argmax(-1)


def attribute(model: torch.nn.Module, batch: dict[str, Any], modality: str, method: str = "ig",
              target: torch.Tensor | None = None, n_steps: int = 32, window: int | None = None,
              texts: list[str] | None = None) -> Attribution:
    """Captum attributions of the target class's probability to one modality's inputs.

    Args:
        model: a ``MultimodalModel`` (or ``ShallowModel``) in eval mode.
        batch: a collated batch.
        modality: the modality whose inputs are attributed.
        method: ``ig`` (Integrated Gradients / LayerIntegratedGradients for text) or ``occlusion``
            (Occlusion for dense inputs, per-word FeatureAblation for text).
        target: class per sample; default the predicted class.
        n_steps: Integrated Gradients' steps (Gauss-Legendre, Captum's default rule).
        window: occlusion patch side on dense inputs (default: a quarter of the smaller side, >= 2; stride half of it).
        texts: the raw texts of the batch (text only), for word alignment; default: decoded ids.
    """
    from captum.attr import FeatureAblation, IntegratedGradients, LayerIntegratedGradients, Occlusion

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; valid: {list(METHODS)}")
    if modality not in model.modalities:
        raise ValueError(f"the model has no {modality!r} modality; it has {model.modalities}")
    model.eval()
    target = predict_target(model, batch) if target is None else torch.as_tensor(target).long()
    probe = _Probe(model, batch, modality)
    inputs = batch[modality]
    encoder = model.encoders[modality]

    if is_text(encoder):
        ids = inputs["input_ids"]
        rest = {k: v for k, v in inputs.items() if k != "input_ids"}
        special = torch.isin(ids, torch.tensor(encoder.tokenizer.all_special_ids)) | ~inputs["attention_mask"].bool()
        pad = encoder.tokenizer.pad_token_id
        reference = torch.where(special, ids, torch.full_like(ids, pad))

        def forward(input_ids: torch.Tensor) -> torch.Tensor:
            r = input_ids.shape[0] // probe.B
            return probe({"input_ids": input_ids, **{k: _tile(v, r) for k, v in rest.items()}}, input_ids.shape[0])

        delta = None
        if method == "ig":
            lig = LayerIntegratedGradients(forward, encoder.backbone.get_input_embeddings())
            raw, delta = lig.attribute(ids, baselines=reference, target=target, n_steps=n_steps,
                                       return_convergence_delta=True)
            raw = raw.sum(-1).detach()  # [B, T]: summed over the embedding
        groups, words = word_groups(encoder.tokenizer, ids, inputs["attention_mask"], special, texts)
        if method == "occlusion":
            mask = torch.where(special, torch.zeros_like(ids), groups + 1)  # 0: never ablated (special/pad)
            with torch.no_grad():
                raw = FeatureAblation(forward).attribute(ids, baselines=reference, target=target, feature_mask=mask)
        scored = [[(w, float(raw[b][groups[b] == i].sum() if method == "ig" else raw[b][groups[b] == i][0]))
                   for i, w in enumerate(ws)] for b, ws in enumerate(words)]
        return Attribution(modality, method, target, raw.detach(), "input_ids", words=scored, groups=groups,
                           delta=None if delta is None else delta.detach(), forward_rows=probe.rows)

    key = dense_key(inputs)
    x = inputs[key].detach()
    rest = {k: v for k, v in inputs.items() if k != key}

    def forward(values: torch.Tensor) -> torch.Tensor:
        r = values.shape[0] // probe.B
        return probe({key: values, **{k: _tile(v, r) for k, v in rest.items()}}, values.shape[0])

    delta = None
    if method == "ig":
        raw, delta = IntegratedGradients(forward).attribute(x.clone().requires_grad_(True), baselines=torch.zeros_like(x),
                                                            target=target, n_steps=n_steps, return_convergence_delta=True)
    else:
        side = window or max(2, min(x.shape[-2:]) // 4)
        shape = (*x.shape[1:-2], side, side)
        strides = (*x.shape[1:-2], max(1, side // 2), max(1, side // 2))
        with torch.no_grad():
            raw = Occlusion(forward).attribute(x, sliding_window_shapes=shape, strides=strides, baselines=0.0,
                                               target=target, perturbations_per_eval=16)
    raw = raw.detach()
    maps = raw.reshape(raw.shape[0], -1, *raw.shape[-2:]).sum(1)  # [B, H, W]: channels summed
    return Attribution(modality, method, target, raw, key, maps=maps, delta=None if delta is None else delta.detach(),
                       forward_rows=probe.rows)


def word_groups(tokenizer: Any, ids: torch.Tensor, attention: torch.Tensor, special: torch.Tensor,
                texts: list[str] | None = None) -> tuple[torch.Tensor, list[list[str]]]:
    """Each word piece's word index (``Long[B, T]``, -1 for special tokens and padding) and each
    sample's words, from the tokenizer's own alignment of the text (re-tokenized; the given ``texts``
    or the decoded ids). Where re-tokenizing does not give back the same pieces, each piece is a word."""
    groups = torch.full_like(ids, -1)
    words: list[list[str]] = []
    for b in range(ids.shape[0]):
        real = [int(i) for i, s in zip(ids[b], special[b], strict=True) if not s]
        text = texts[b] if texts is not None and texts[b] is not None else tokenizer.decode(real)
        enc = tokenizer(text, add_special_tokens=False)
        positions = [t for t in range(ids.shape[1]) if not special[b, t]]
        if tokenizer.is_fast and enc["input_ids"][: len(real)] == real:
            wids = enc.word_ids()[: len(real)]
            order = list(dict.fromkeys(wids))
            spans = [enc.word_to_chars(w) for w in order]
            words.append([text[s.start:s.end] for s in spans])
            for t, w in zip(positions, wids, strict=True):
                groups[b, t] = order.index(w)
        else:  # pieces as words
            words.append(tokenizer.convert_ids_to_tokens(real))
            for k, t in enumerate(positions):
                groups[b, t] = k
    return groups, words
