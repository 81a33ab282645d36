"""Run an exported model folder: ``Bundle.open(folder).predict(samples)``, with no mm training code.

Imports numpy, PIL, soundfile, tokenizers and ONNX Runtime only (torch only for a TorchScript
bundle), so a process serving a bundle starts in a fraction of the time a run folder needs.

    bundle = Bundle.open("exports/default")
    bundle.predict([{"text": "a red circle and a kitten", "image": "pictures/1.png"}])
    # [{"prediction": "red-cat", "probabilities": {"red-cat": 0.97, ...}}]

A sample maps modality -> raw value: a text (for a token head: a text split on whitespace, or a
list of words), a picture (file path, bytes or PIL image), a recording (file path, bytes or a
``(wave, rate)`` pair); a modality left out is absent (the model's learned missing embedding). The
same object also serves the server's interface (``modalities``, ``media``, ``head``, ``classes``,
``model_id``, ``load(modality, value, root)`` then ``predict`` on the loaded values).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mm.serve.onnx_runtime import make_runner
from mm.serve.preprocess import InputError, build_prep

__all__ = ["Bundle", "InputError"]


class Loaded:
    """A value already decoded by ``Bundle.load`` (so ``predict`` does not decode it again)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class Bundle:
    """An exported model: its ``bundle.json``, its preprocessing and a runtime session.

    Attributes:
        info: ``bundle.json`` as a dict.
        modalities: what the model takes, sorted.
        media: the modalities sent as files (image, audio).
        head: the head's kind (``classification``, ``multilabel``, ``regression``, ``token``).
        classes: the label (or tag) names.
        model_id: ``<run name>@<first 12 hex of the weights' sha256>``.
        kind: ``onnx`` or ``torchscript``.
        input_keys: modality -> its graph inputs (without the ``<m>.`` prefix).
    """

    def __init__(self, folder: Path, info: dict[str, Any], threads: int | None = None):
        self.folder = folder
        self.info = info
        self.modalities: list[str] = list(info["modalities"])
        self.media: list[str] = list(info["media"])
        self.head: str = info["head"]["kind"]
        self.classes: list = info["head"]["labels"]
        self.model_id: str = info["model_id"]
        self.kind: str = info["graph"]["format"]
        self.preps = {m: build_prep(info["preprocessing"][m], folder) for m in self.modalities}
        names = [i["name"] for i in info["inputs"]]
        self.input_keys = {m: [n.split(".", 1)[1] for n in names if n.startswith(f"{m}.")] for m in self.modalities}
        self.batch_keys = [n.split(".", 1)[1] for n in names if n.startswith("batch.")]  # the head's (word_shape)
        self.input_names = names
        self.runner = make_runner(folder / info["graph"]["file"], self.kind, names, threads)

    @classmethod
    def open(cls, folder: str | Path, threads: int | None = None) -> Bundle:
        """Open an export folder (``bundle.json`` and the graph it names).

        Args:
            folder: a folder written by ``scripts/export_model.py``.
            threads: intra-op threads of the runtime (default: its own choice).
        """
        folder = Path(folder)
        path = folder / "bundle.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not an exported model: bundle.json is missing")
        info = json.loads(path.read_text())
        if not str(info.get("format", "")).startswith("mm-bundle/"):
            raise ValueError(f"{path}: not an mm bundle (format {info.get('format')!r})")
        return cls(folder, info, threads)

    # -- inputs -------------------------------------------------------------------------------------

    def load_value(self, modality: str, value: Any, root: str | Path | None = None) -> Any:
        """One raw value decoded by the modality's preprocessing (``InputError`` names the modality)."""
        if modality not in self.preps:
            raise InputError(f"unknown modality {modality!r}; the model takes {self.modalities}")
        try:
            return self.preps[modality].load(value, root)
        except InputError as err:
            raise InputError(f"{modality}: {err}") from None

    def load(self, modality: str, value: Any, root: str | Path | None = None) -> Loaded:
        """``load_value`` wrapped, for ``predict``: the server decodes each upload as it arrives."""
        return Loaded(self.load_value(modality, value, root))

    def feeds(self, samples: list[dict[str, Any]], root: str | Path | None = None) -> dict[str, np.ndarray]:
        """The graph's named input arrays for ``samples`` (raw or ``load``-ed values)."""
        self.word_ids = None
        feeds: dict[str, np.ndarray] = {}
        for m in self.modalities:
            values = []
            for s in samples:
                v = s.get(m)
                if v is None and m == "text" and self.head == "token" and "words" in s:
                    v = s["words"]
                values.append(None if v is None else v.value if isinstance(v, Loaded) else self.load_value(m, v, root))
            prep = self.preps[m]
            if m == "text" and self.head == "token":
                arrays, self.word_ids = prep.encode(values)
            else:
                arrays = prep.collate(values)
            feeds.update({f"{m}.{k}": arrays[k] for k in self.input_keys[m]})
            feeds.update({f"batch.{k}": arrays[k] for k in self.batch_keys if k in arrays})
            feeds[f"present.{m}"] = np.array([s.get(m) is not None or (m == "text" and "words" in s) for s in samples])
        return feeds

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's logits for named input arrays."""
        return self.runner(feeds)

    def logits(self, samples: list[dict[str, Any]], root: str | Path | None = None) -> np.ndarray:
        return self.run(self.feeds(samples, root))

    # -- outputs ------------------------------------------------------------------------------------

    def predict(self, samples: list[dict[str, Any]], root: str | Path | None = None) -> list[dict[str, Any]]:
        """One prediction per sample, as ``mm.predict.decode`` words it: ``prediction`` and
        ``probabilities`` (classification, multilabel), ``prediction`` (regression), or ``tokens``
        and ``prediction`` (the tag of each word) for a token head."""
        if not samples:
            return []
        logits = self.logits(samples, root).astype(np.float64)
        out = []
        if self.head == "classification":
            z = np.exp(logits - logits.max(-1, keepdims=True))
            for p in z / z.sum(-1, keepdims=True):
                order = np.argsort(-p, kind="stable")
                out.append({"prediction": self.classes[order[0]],
                            "probabilities": {str(self.classes[i]): round(float(p[i]), 6) for i in order}})
        elif self.head == "multilabel":
            for p in 1 / (1 + np.exp(-logits)):
                out.append({"prediction": [c for i, c in enumerate(self.classes) if p[i] > 0.5],
                            "probabilities": {str(c): round(float(p[i]), 6) for i, c in enumerate(self.classes)}})
        elif self.head == "regression":
            out = [{"prediction": float(v)} for v in logits.reshape(-1)]
        else:
            for i, s in enumerate(samples):
                words = self._words(s)
                first = [j for j, w in enumerate(self.word_ids[i])
                         if w is not None and (j == 0 or self.word_ids[i][j - 1] != w)]
                tags = self.decode_tags(logits[i, first])
                out.append({"tokens": words, "prediction": [self.classes[t] for t in tags]})
        return out

    def _words(self, sample: dict[str, Any]) -> list[str]:
        v = sample.get("words", sample.get("text"))
        v = v.value if isinstance(v, Loaded) else v
        return v.split() if isinstance(v, str) else list(v)

    def decode_tags(self, scores: np.ndarray) -> list[int]:
        """Tag ids of one sentence from its words' first-piece logits ``[W, C]``, decoded as the head decodes."""
        spec = self.info["head"].get("decoding") or {"scores": "argmax"}
        if spec["scores"] == "argmax" or len(scores) == 0:
            return [int(t) for t in scores.argmax(-1)]
        if spec["scores"] == "log_softmax":
            shifted = scores - scores.max(-1, keepdims=True)
            scores = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        start, trans, end = (np.asarray(spec[k], dtype=np.float64) for k in ("start", "transitions", "end"))
        score, history = start + scores[0], []
        for t in range(1, len(scores)):
            total = score[:, None] + trans + scores[t][None, :]  # [from, to]
            history.append(total.argmax(0))
            score = total.max(0)
        path = [int((score + end).argmax())]
        for back in reversed(history):
            path.append(int(back[path[-1]]))
        return path[::-1]
