"""Export a trained run as one self-describing folder: the whole model as one graph, and what runs it.

``export_model(run, out_dir, fmt)`` writes::

    model.onnx (or model.pt)     encoders, missing-modality embeddings, fusion and head as one graph
    bundle.json                  labels, head kind, modalities, the graph's inputs (names, dtypes,
                                 shapes), each modality's preprocessing, model id, mm version,
                                 the exporter used and the differences measured against PyTorch
    text/tokenizer.json ...      the text encoder's tokenizer (``save_pretrained``)
    audio/mel_fb.npy             the spectrogram encoder's mel filter bank (or audio/ the wav2vec2
                                 feature extractor's config, for reference)

The graph takes every modality's inputs and a presence mask ``present.<m>`` (``Bool[B]``) per
modality, so any subset can be sent: an absent modality's placeholder input is replaced by the
model's learned missing embedding inside the graph, as ``MultimodalModel.fill_missing`` does.
Batch, text length and audio length are dynamic axes. ONNX goes through ``torch.onnx.export``
with the dynamo exporter, and falls back to the TorchScript-based exporter where dynamo fails
(``bundle.json`` records which); ``fmt="torchscript"`` writes a ``torch.jit.trace`` instead.

Before anything is kept, the exported graph is run (ONNX Runtime) through ``mm.serve.bundle.Bundle``
(numpy preprocessing from ``bundle.json``) on sample inputs, for every subset of the modalities and a
batch mixing subsets, and compared with the PyTorch model fed by the encoders' own ``load`` and
``collate``: a difference above the tolerance refuses the export (``ExportRefused``), so the test covers
the preprocessing as well as the graph. An encoder, fusion or head that cannot be exported is refused
with a message naming it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from PIL import Image
from torch import nn

import mm
from mm.encoders import AudioEncoder, ImageEncoder, SpectrogramEncoder, TextEncoder
from mm.heads import HEADS
from mm.model import MultimodalModel
from mm.run.checkpoint import WEIGHTS

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4  # max |logit difference| (ONNX Runtime + numpy preprocessing vs PyTorch + encoders' own)
BUNDLE_FORMAT = "mm-bundle/1"
AUDIO_RATE = 22050  # sample recordings are written at this rate, so the check covers resampling
LONG_TEXT = ("the quick brown fox jumps over the lazy dog while a small red circle and a green square "
             "watch a trio of sparrows sing to a light blue triangle ") * 3


class ExportRefused(Exception):
    """The model cannot be exported faithfully; the message names the part and the reason."""


def head_kind(head: nn.Module) -> str:
    """The registry name of a head (``classification``, ``multilabel``, ``regression``, ``token``)."""
    for name, cls in HEADS.items():
        if type(head) is cls:
            return name
    raise ExportRefused(f"head {type(head).__name__}: not one of the registered heads {sorted(HEADS)}")


# -- the model as one graph over named tensors -------------------------------------------------------


class GraphModel(nn.Module):
    """``MultimodalModel`` over flat named tensors, with the missing-modality fill free of branches.

    ``forward(*tensors)`` takes the tensors in the order of ``names``: each modality's inputs as
    ``"<m>.<key>"``, then ``"present.<m>"`` for each modality, then ``"batch.<key>"`` for what the
    head reads from the batch (the token head's ``word_shape``); it returns the head's logits.
    """

    def __init__(self, model: MultimodalModel, input_keys: dict[str, list[str]]):
        super().__init__()
        self.model = model
        self.input_keys = input_keys
        self.names = [f"{m}.{k}" for m in model.modalities for k in input_keys[m]]
        self.names += [f"present.{m}" for m in model.modalities]
        self.batch_keys = list(getattr(model.head, "batch_keys", ()))  # what the head reads from the batch
        self.names += [f"batch.{k}" for k in self.batch_keys]

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.names, tensors, strict=True))
        model, filled, present = self.model, {}, {}
        for m in model.modalities:
            out = model.encoders[m].encode({k: named[f"{m}.{k}"] for k in self.input_keys[m]})
            p = named[f"present.{m}"]
            present[m] = p
            emb = model.missing[m].to(out.pooled.dtype)
            first = torch.zeros_like(out.mask)
            first[:, 0] = True
            filled[m] = type(out)(tokens=torch.where(p[:, None, None], out.tokens, emb.expand_as(out.tokens)),
                                  # torch.where on bools is a Where ONNX Runtime has no kernel for
                                  mask=(p[:, None] & out.mask) | (~p[:, None] & first),
                                  pooled=torch.where(p[:, None], out.pooled, emb))
        return model.head(model.fusion(filled, present), **{k: named[f"batch.{k}"] for k in self.batch_keys})


# -- preprocessing settings, from each encoder --------------------------------------------------------


def image_ops(encoder: ImageEncoder) -> list[dict[str, Any]]:
    """The encoder's evaluation transform (torchvision ``Compose``) as ``mm.serve.preprocess`` ops."""
    ops = []
    for t in encoder.transform.transforms:
        kind = type(t).__name__
        if kind == "Resize":
            size = [t.size] if isinstance(t.size, int) else list(t.size)
            ops.append({"op": "resize", "size": size, "interpolation": t.interpolation.value, "max_size": t.max_size})
        elif kind == "CenterCrop":
            ops.append({"op": "center_crop", "size": list(t.size)})
        elif kind in ("ToTensor", "MaybeToTensor"):
            ops.append({"op": "to_float"})
        elif kind == "Normalize":
            ops.append({"op": "normalize", "mean": [float(v) for v in t.mean], "std": [float(v) for v in t.std]})
        else:
            raise ExportRefused(f"image encoder ({encoder.source}): its transform step {kind} has no equivalent "
                                "in the bundle's preprocessing (resize, center_crop, to_float, normalize)")
    return ops


def preprocessing(encoder: nn.Module, folder: Path, token_head: bool, batch_keys: tuple = ()) -> dict[str, Any]:
    """``bundle.json``'s section for one encoder; writes its files (tokenizer, filter bank) into ``folder``.
    ``batch_keys``: what the head reads from the batch (``word_shape``: the text's word shapes)."""
    m = encoder.modality
    if not isinstance(encoder, ImageEncoder):  # the image section is settings only
        folder.mkdir(parents=True, exist_ok=True)
    if isinstance(encoder, TextEncoder):
        if not encoder.tokenizer.is_fast:
            raise ExportRefused(f"text encoder ({encoder.source}): its tokenizer has no tokenizer.json (not a fast "
                                "tokenizer), which the bundle's runtime reads with the tokenizers library")
        encoder.tokenizer.save_pretrained(folder)
        word_shapes = None
        if "word_shape" in batch_keys:
            from mm.encoders.word_features import SHAPES
            from mm.serve.preprocess import SHAPES as OUR_SHAPES

            if tuple(SHAPES) != tuple(OUR_SHAPES):
                raise ExportRefused(f"the token head's word shapes {list(SHAPES)} are not the bundle runtime's "
                                    f"{list(OUR_SHAPES)} (mm.serve.preprocess.word_shape)")
            word_shapes = list(SHAPES)
        inputs = (encoder.tokenize_words([["a"]])[0] if token_head else encoder.collate(["a"])).keys()
        return {"kind": "tokenizer", "tokenizer": f"{m}/tokenizer.json", "mode": "words" if token_head else "pooled",
                "max_length": encoder.max_length, "window": encoder.window, "inputs": list(inputs),
                "word_shapes": word_shapes,
                "pad_id": int(encoder.tokenizer.pad_token_id or 0), "source": encoder.source}
    if isinstance(encoder, SpectrogramEncoder):
        from mm.encoders.spectrogram import MIN_FRAMES, _mel

        mel = _mel(encoder.sample_rate, encoder.n_mels, encoder.win, encoder.hop)
        spec = mel.spectrogram
        if not (spec.center and spec.pad_mode == "reflect" and spec.power == 2.0 and not spec.normalized
                and spec.win_length == spec.n_fft):
            raise ExportRefused(f"audio encoder ({encoder.source}): its spectrogram settings are not the ones the "
                                "bundle's numpy front end computes")
        np.save(folder / "mel_fb.npy", mel.mel_scale.fb.numpy())
        return {"kind": "spectrogram", "sample_rate": encoder.sample_rate, "n_mels": encoder.n_mels,
                "n_fft": spec.n_fft, "hop": spec.hop_length, "window": "hann (periodic)", "power": 2.0,
                "f_min": float(mel.f_min), "f_max": float(mel.f_max or encoder.sample_rate / 2),
                "mel_fb": f"{m}/mel_fb.npy", "log_offset": 1e-6, "standardize": "per clip (mean, std with ddof 1)",
                "max_samples": encoder.max_samples, "min_frames": MIN_FRAMES, "source": encoder.source}
    if isinstance(encoder, AudioEncoder):
        ex = encoder.extractor
        ex.save_pretrained(folder)
        return {"kind": "wav2vec2", "sample_rate": encoder.sample_rate, "max_samples": encoder.max_samples,
                "do_normalize": bool(ex.do_normalize), "padding_value": float(ex.padding_value),
                "source": encoder.source}
    if isinstance(encoder, ImageEncoder):
        return {"kind": "image", "input_size": list(encoder.data_config["input_size"]), "ops": image_ops(encoder),
                "source": encoder.source}
    raise ExportRefused(f"{m} encoder {type(encoder).__name__}: no exportable preprocessing is known for it "
                        "(mm.serve.export.preprocessing)")


# -- sample inputs for tracing and checking -----------------------------------------------------------


def sample_values(modalities: list[str], token_head: bool, folder: Path) -> list[dict[str, Any]]:
    """Three raw samples (texts, picture files, recording files at 22.05 kHz) of different sizes."""
    rng = np.random.default_rng(0)
    # a token head's texts stay within one window (the graph reads one; longer ones are refused at run time)
    texts = (["a small red circle", "the hound sat near a Green box", "Trio"] if token_head
             else ["a small red circle and a kitten", "", LONG_TEXT])
    samples: list[dict[str, Any]] = [{} for _ in range(3)]
    # 0.3, 0.6 and 0.25 s: 31, 61 and 26 spectrogram frames, so padded batches of odd and even length
    for i, (w, h, seconds) in enumerate([(40, 30, 0.3), (32, 32, 0.6), (70, 48, 0.25)]):
        for m in modalities:
            if m == "text":
                samples[i][m] = texts[i]
            elif m == "image":
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"image{i}.png")
                samples[i][m] = f"image{i}.png"
            elif m == "audio":
                t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
                wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.05 * rng.standard_normal(len(t))
                soundfile.write(folder / f"audio{i}.wav", wave.astype(np.float32), AUDIO_RATE)
                samples[i][m] = f"audio{i}.wav"
            else:
                raise ExportRefused(f"modality {m!r}: the export has no sample input for it")
    return samples


def check_batches(modalities: list[str], token_head: bool, samples: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """Named batches: every subset of the modalities (the text always, for a token head), one mixing subsets."""
    batches = {}
    for k in range(len(modalities), -1, -1):
        for subset in itertools.combinations(modalities, k):
            if token_head and "text" not in subset:
                continue
            batches["+".join(subset) or "none"] = [{m: s[m] for m in subset} for s in samples]
    mixed = [{m: s[m] for j, m in enumerate(modalities) if (i + j) % 3 != 2 or (token_head and m == "text")}
             for i, s in enumerate(samples)]
    batches["mixed"] = mixed
    batches["short"] = [samples[0], samples[2]]  # shorter padded text and audio
    return batches


def torch_batch(model: MultimodalModel, samples: list[dict[str, Any]], root: Path, token_head: bool) -> dict[str, Any]:
    """The batch the training code builds: the encoders' own ``load``, then ``mm.data.collate.Collator``
    (a token head's text as words, with its word shapes)."""
    from mm.data.collate import Collator

    rows = []
    for i, s in enumerate(samples):
        row: dict[str, Any] = {"index": i, **{m: model.encoders[m].load(v, root) for m, v in s.items()}}
        if token_head:
            row["words"] = s["text"].split()
            row["label"] = [0] * len(row["words"])
        else:
            row["label"] = 0  # a placeholder the forward never reads
        rows.append(row)
    batch = Collator(model.modalities, dict(model.encoders), head="token" if token_head else "classification")(rows)
    if not token_head:
        batch["label"] = torch.zeros(len(samples))
    return batch


def graph_args(graph: GraphModel, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    named = {f"{m}.{k}": batch[m][k] for m in graph.model.modalities for k in graph.input_keys[m]}
    named.update({f"present.{m}": batch["present"][m] for m in graph.model.modalities})
    named.update({f"batch.{k}": batch[k] for k in graph.batch_keys})
    return tuple(named[n] for n in graph.names)


# -- exporting the graph ---------------------------------------------------------------------------------


def dynamic_dims(graph: GraphModel, prep: dict[str, dict]) -> dict[str, dict[int, str]]:
    """Each input's dynamic axes: batch everywhere, the text's pieces and the audio's time."""
    dims: dict[str, dict[int, str]] = {}
    for name in graph.names:
        m, key = name.split(".", 1)
        dims[name] = {0: "batch"}
        kind = prep.get(m, {}).get("kind")
        if kind == "tokenizer" or name == "batch.word_shape":
            dims[name][1] = "text_len"
        elif kind == "spectrogram" and key == "spectrogram":
            dims[name][3] = "audio_frames"
        elif kind == "wav2vec2":
            dims[name][1] = "audio_samples"
    return dims


def export_onnx(graph: GraphModel, args: tuple, path: Path, dims: dict[str, dict[int, str]],
                prep: dict[str, dict]) -> tuple[str, str]:
    """``torch.onnx.export`` with dynamo, else the TorchScript-based exporter; returns (exporter, why)."""
    windows = {m: p["window"] for m, p in prep.items() if p["kind"] == "tokenizer"}
    mins = {"text_len": 2, "audio_frames": 32, "audio_samples": 400}
    shared: dict[str, Any] = {}

    def dim(label: str, modality: str) -> Any:
        if label not in shared:
            shared[label] = torch.export.Dim(label, min=1 if label == "batch" else mins[label],
                                             max=windows.get(modality, 2**31 - 2) if label == "text_len" else 2**31 - 2)
        return shared[label]

    dynamic_shapes = tuple({axis: dim(label, name.split(".")[0]) for axis, label in dims[name].items()}
                           for name in graph.names)
    dynamo_error = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, args, dynamo=True, input_names=graph.names, output_names=["logits"],
                                        dynamic_shapes=(dynamic_shapes,), verbose=False, optimize=True)
        program.save(str(path), external_data=False)
        return "dynamo", ""
    except Exception as err:  # the dynamo exporter raises many kinds of errors
        dynamo_error = reason(err)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, str(path), dynamo=False, input_names=graph.names, output_names=["logits"],
                              dynamic_axes={**dims, "logits": {0: "batch"}}, opset_version=17, do_constant_folding=True)
    except Exception as err:
        raise RuntimeError(f"dynamo exporter: {dynamo_error}; TorchScript-based exporter: {reason(err)}") from err
    return "torchscript", dynamo_error


def reason(err: Exception) -> str:
    """The informative lines of an exporter's error (ANSI colours and the generic header dropped)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Failed to export", "For more information",
                                                                     "The error above", "If you would like"))]
    return f"{type(err).__name__}: " + " | ".join(lines)[:600]


class _Part(nn.Module):
    """One part of the model (``fn``) as a module over positional tensors, for ``locate_failure``."""

    def __init__(self, module: nn.Module, fn: Any):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, *xs: torch.Tensor) -> Any:
        return self.fn(self.module, *xs)


def locate_failure(graph: GraphModel, args: tuple) -> str:
    """The first part of the model (each encoder, then the fusion, then the head) that the
    TorchScript-based ONNX exporter cannot export on its own; '' when every part exports alone."""
    named = dict(zip(graph.names, args, strict=True))
    model, mods = graph.model, graph.model.modalities

    def fails(part: _Part, xs: tuple) -> str:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(part, xs, io.BytesIO(), dynamo=False, opset_version=17)
            return ""
        except Exception as err:
            return reason(err)

    outputs = {}
    for m in mods:
        enc, keys = model.encoders[m], graph.input_keys[m]
        xs = tuple(named[f"{m}.{k}"] for k in keys)

        def run_encoder(e: nn.Module, *t: torch.Tensor, keys: list = keys) -> tuple:
            out = e.encode(dict(zip(keys, t, strict=True)))
            return out.tokens, out.mask, out.pooled

        why = fails(_Part(enc, run_encoder), xs)
        if why:
            return f"the {m} encoder ({type(enc).__name__}, {getattr(enc, 'source', '?')}): {why}"
        outputs[m] = enc.encode(dict(zip(keys, xs, strict=True)))
    cls = type(next(iter(outputs.values())))
    flat = tuple(t for m in mods for t in (outputs[m].tokens, outputs[m].mask, outputs[m].pooled))
    flat += tuple(named[f"present.{m}"] for m in mods)

    def run_fusion(f: nn.Module, *t: torch.Tensor) -> torch.Tensor:
        outs = {m: cls(*t[3 * i: 3 * i + 3]) for i, m in enumerate(mods)}
        return f(outs, {m: t[3 * len(mods) + i] for i, m in enumerate(mods)})

    why = fails(_Part(model.fusion, run_fusion), flat)
    if why:
        return f"the fusion ({type(model.fusion).__name__}): {why}"
    fused = run_fusion(model.fusion, *flat)
    why = fails(_Part(model.head, lambda h, x: h(x)), (fused,))
    if why:
        return f"the head ({type(model.head).__name__}): {why}"
    return ""


# -- the whole export ------------------------------------------------------------------------------------


def merge_adapters(model: MultimodalModel) -> list[str]:
    """Merge every encoder's LoRA adapters into its backbone (in place); returns the merged modalities."""
    from mm.backbone_export import merge_lora

    merged = []
    for m, enc in model.encoders.items():
        if any("lora_" in name for name, _ in enc.backbone.named_parameters()):
            enc.backbone = merge_lora(enc.backbone)
            merged.append(m)
    return merged


def model_id(run_dir: Path, checkpoint: str) -> str:
    """``<run folder name>@<first 12 hex of the checkpoint weights' sha256>`` (as the server names a run)."""
    digest = hashlib.sha256((run_dir / "checkpoints" / checkpoint / WEIGHTS).read_bytes()).hexdigest()
    return f"{run_dir.resolve().name}@{digest[:12]}"


def decoding(head: nn.Module) -> dict[str, Any] | None:
    """A token head's tag decoding as numpy-ready scores: ``start [C]``, ``transitions [C, C]``, ``end [C]``
    (forbidden ones at a large negative), over log-probabilities (constrained) or raw logits (CRF)."""
    crf = getattr(head, "crf", None)
    if crf is not None:
        from mm.crf import NEG

        def masked(s: torch.Tensor, allowed: torch.Tensor) -> list:
            return s.detach().float().masked_fill(~allowed, NEG).tolist()

        return {"scores": "logits", "start": masked(crf.start, crf.allowed_start),
                "transitions": masked(crf.transitions, crf.allowed_transitions), "end": masked(crf.end, crf.allowed_end)}
    if getattr(head, "constrained", False):
        from mm.crf import NEG, allowed_transitions

        start, trans, end = (torch.zeros(a.shape).masked_fill(~a, NEG).tolist() for a in allowed_transitions(head.tags))
        return {"scores": "log_softmax", "start": start, "transitions": trans, "end": end}
    return {"scores": "argmax"}


def export_model(run: str | Path, out_dir: str | Path, fmt: str = "onnx", checkpoint: str = "best",
                 tolerance: float = TOLERANCE, overwrite: bool = False) -> dict[str, Any]:
    """Export a run (folder or W&B artifact reference) to ``out_dir``; returns ``bundle.json``'s content.

    Raises:
        ValueError: an unknown format.
        FileExistsError: ``out_dir`` exists and is not empty (and not ``overwrite``).
        FileNotFoundError: ``run`` is no finished run.
        ExportRefused: a part cannot be exported, or the exported model differs from PyTorch by more
            than ``tolerance``; nothing is left in ``out_dir``.
    """
    from mm.analysis.evaluation import load_run
    from mm.artifacts import resolve_run

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {list(FORMATS)}")
    _check_out(Path(out_dir), overwrite)
    run_dir = resolve_run(str(run))
    _, model, classes = load_run(run_dir, checkpoint)
    return export_loaded(model, classes, out_dir, fmt, tolerance, model_id(run_dir, checkpoint),
                         {"name": run_dir.resolve().name, "dir": str(run_dir), "checkpoint": checkpoint}, overwrite)


def _check_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass --overwrite to replace it)")


def export_loaded(model: MultimodalModel, classes: list, out_dir: str | Path, fmt: str = "onnx",
                  tolerance: float = TOLERANCE, model_id: str = "", run_info: dict | None = None,
                  overwrite: bool = False) -> dict[str, Any]:
    """Export a loaded model (``export_model`` after ``load_run``); the folder is written only once
    the check passed. ``model_id`` and ``run_info`` go into ``bundle.json`` as they are."""
    out_dir = Path(out_dir)
    _check_out(out_dir, overwrite)
    head = head_kind(model.head)
    batch_keys = tuple(getattr(model.head, "batch_keys", ()))
    if set(batch_keys) - {"word_shape"}:
        raise ExportRefused(f"the head ({type(model.head).__name__}) reads {list(batch_keys)} from the batch; the "
                            "bundle's preprocessing computes only word_shape")
    token_head = head == "token"
    merged = merge_adapters(model)
    model.eval()

    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        prep = {m: preprocessing(model.encoders[m], staging / m, token_head, batch_keys) for m in model.modalities}
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            samples = sample_values(model.modalities, token_head, root)
            example = torch_batch(model, samples, root, token_head)
            graph = GraphModel(model, {m: list(example[m]) for m in model.modalities}).eval()
            args = graph_args(graph, example)
            dims = dynamic_dims(graph, prep)
            graph_file = "model.onnx" if fmt == "onnx" else "model.pt"
            with torch.no_grad():
                try:
                    if fmt == "onnx":
                        exporter, dynamo_error = export_onnx(graph, args, staging / graph_file, dims, prep)
                    else:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            torch.jit.trace(graph, args, check_trace=False).save(str(staging / graph_file))
                        exporter, dynamo_error = "torch.jit.trace", ""
                except Exception as err:
                    where = locate_failure(graph, args)
                    raise ExportRefused(f"cannot export {where or 'the model'} ({reason(err)})" if where
                                        else f"cannot export the model: {reason(err)}") from err
            bundle = {
                "format": BUNDLE_FORMAT,
                "model_id": model_id,
                "run": run_info or {},
                "mm_version": mm.__version__,
                "torch_version": torch.__version__,
                "graph": {"file": graph_file, "format": fmt, "exporter": exporter,
                          **({"dynamo_error": dynamo_error} if dynamo_error else {})},
                "head": {"kind": head, "labels": classes, **({"decoding": decoding(model.head)} if token_head else {})},
                "modalities": model.modalities,
                "media": [m for m in model.modalities if model.encoders[m].media],
                "inputs": [{"name": n, "dtype": str(a.dtype).removeprefix("torch."),
                            "shape": [dims[n].get(i, int(s)) for i, s in enumerate(a.shape)]}
                           for n, a in zip(graph.names, args, strict=True)],
                "outputs": [{"name": "logits", "shape": ["batch", "text_len", len(classes)] if token_head
                             else ["batch"] if head == "regression" else ["batch", len(classes)]}],
                "preprocessing": prep,
                "lora_merged": merged,
            }
            (staging / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n")
            bundle["check"] = check(model, staging, samples, root, token_head, tolerance)
            bundle["export_seconds"] = round(time.perf_counter() - started, 1)
            (staging / "bundle.json").write_text(json.dumps(bundle, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp made it private
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle


def check(model: MultimodalModel, folder: Path, samples: list[dict[str, Any]], root: Path, token_head: bool,
          tolerance: float) -> dict[str, Any]:
    """Run the staged bundle and the PyTorch model on every check batch; refuse above ``tolerance``."""
    from mm.serve.bundle import Bundle

    bundle = Bundle.open(folder)
    diffs, prep_diffs = {}, {}
    for name, batch_samples in check_batches(model.modalities, token_head, samples).items():
        batch = torch_batch(model, batch_samples, root, token_head)
        with torch.no_grad():
            expected = model(batch).float().numpy()
        feeds = bundle.feeds(batch_samples, root=root)
        got = bundle.run(feeds)
        if got.shape != expected.shape:
            raise ExportRefused(f"batch {name!r}: the exported model gives shape {got.shape}, PyTorch {expected.shape}")
        diffs[name] = float(np.abs(got - expected).max())
        for m in model.modalities:
            for k in bundle.input_keys[m]:
                ours, theirs = feeds[f"{m}.{k}"], batch[m][k].numpy()
                if ours.shape != theirs.shape:
                    raise ExportRefused(f"batch {name!r}: the bundle's {m} preprocessing gives {k} of shape "
                                        f"{ours.shape}, the encoder's {theirs.shape}")
                diff = float(np.abs(ours.astype(np.float64) - theirs).max()) if ours.size else 0.0
                prep_diffs[name] = max(prep_diffs.get(name, 0.0), diff)
        for k in bundle.batch_keys:
            if not np.array_equal(feeds[f"batch.{k}"], batch[k].numpy()):
                raise ExportRefused(f"batch {name!r}: the bundle's {k} differs from the collator's")
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > tolerance:
        raise ExportRefused(f"the exported model's logits differ from PyTorch's by {diffs[worst]:.3g} on batch "
                            f"{worst!r} (tolerance {tolerance:g}); per batch: {diffs}")
    return {"tolerance": tolerance, "max_abs_diff": diffs[worst], "per_batch": diffs,
            "preprocessing_max_abs_diff": max(prep_diffs.values()), "samples_per_batch": len(samples),
            "what": "max |logits(bundle: numpy preprocessing + runtime) - logits(PyTorch: encoders' load/collate)|"}
