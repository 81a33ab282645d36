"""What the server serves: a model with a small interface the server and its batcher call.

``load(modality, value, root)`` decodes one request value (a text, or a file name inside the
request's private folder ``root``) exactly as training and ``scripts/predict.py`` decode a manifest
value; ``predict(samples)`` runs one batch and answers ``mm.predict.decode``'s dicts; attributes
``modalities``, ``media`` (those sent as files), ``head``, ``classes``, ``model_id``, ``kind``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


class BadInput(ValueError):
    """A request the model cannot take; its message goes back to the client with ``status``."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class TorchModel:
    """A trained run served through mm's own code: ``load_run``, the encoders' ``load`` and
    ``collate`` (``Collator``) and ``mm.predict.decode``, exactly as ``scripts/predict.py`` does.

    Attributes:
        modalities: what the model takes, sorted.
        media: the modalities sent as files.
        head: the head's name.
        classes: the class (or tag) names.
        model_id: ``<run folder name>@<first 12 hex of the weights' sha256>``.
    """

    kind = "pytorch"
    explains = True  # per-modality contributions (mm.explain) on request

    def __init__(self, run_dir: str | Path, threads: int | None = None) -> None:
        import torch

        from mm.analysis.evaluation import load_run
        from mm.data.collate import Collator
        from mm.run.checkpoint import WEIGHTS

        if threads:
            torch.set_num_threads(threads)
        run_dir = Path(run_dir)
        self.cfg, self.model, self.classes = load_run(run_dir)
        self.encoders = dict(self.model.encoders)
        self.modalities = sorted(self.encoders)
        self.media = [m for m in self.modalities if self.encoders[m].media]
        self.head = self.cfg.head.name
        self.collator = Collator(self.modalities, self.encoders, head=self.head)
        digest = hashlib.sha256((run_dir / "checkpoints" / "best" / WEIGHTS).read_bytes()).hexdigest()
        self.model_id = f"{run_dir.resolve().name}@{digest[:12]}"

    def load(self, modality: str, value: Any, root: Path) -> Any:
        """One value decoded by its encoder (a text, or a file name inside ``root``)."""
        return self.encoders[modality].load(value, root, train=False)

    def predict(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One forward over ``samples`` (modality -> decoded value; ``words`` for a token head).

        A sample with ``explain`` set also gets ``contributions``: each modality's exact Shapley
        value for the predicted class's probability (``mm.explain.modality_shapley``, absent =
        the learned missing embedding), with the all-missing ``baseline`` and the ``output``.
        """
        import torch

        from mm.predict import decode

        batch_samples = []
        for i, s in enumerate(samples):
            sample = {"index": i, **{m: s[m] for m in self.modalities if m in s}}
            if self.head == "token":
                sample["words"], sample["label"] = s["words"], [0] * len(s["words"])
            else:
                sample["label"] = 0  # a placeholder the forward never reads
            batch_samples.append(sample)
        batch = self.collator(batch_samples)
        with torch.inference_mode():
            outputs = self.model.encode(batch)
            logits = self.model(batch, outputs=outputs)
            explain = [i for i, s in enumerate(samples) if s.get("explain")]
            shap = self._shapley(batch, outputs) if explain else None
        words = [s["words"] for s in samples] if self.head == "token" else None
        preds = decode(self.head, logits, batch, self.classes, words, self.model.head)  # CRF heads: Viterbi
        for i in explain:
            preds[i]["contributions"] = {
                "measure": "probability of the predicted class", "baseline": round(float(shap["baseline"][i]), 6),
                "output": round(float(shap["output"][i]), 6),
                "modalities": {m: round(float(shap["shapley"][i, j]), 6) for j, m in enumerate(self.modalities)}}
        return preds

    def _shapley(self, batch: dict[str, Any], outputs: dict) -> dict[str, Any]:
        from mm.explain.shapley import modality_shapley

        if self.head != "classification":
            raise BadInput(f"contributions need a classification head; this model's is {self.head}")
        result = modality_shapley(self.model, batch, outputs=outputs)
        assert result["modalities"] == self.modalities
        return result["prob"]


def load_model(path: str | Path, threads: int | None = None) -> Any:
    """The model at ``path``: an export folder (``bundle.json``: ``mm.serve.bundle.Bundle``, ONNX
    Runtime or TorchScript) or an mm run folder (a downloaded W&B model artifact's folder too)."""
    if model_kind(path) == "export":
        from mm.serve.bundle import Bundle

        return Bundle.open(path, threads)
    return TorchModel(path, threads)


def model_kind(path: str | Path) -> str:
    """``export`` (``bundle.json``) or ``run`` (``config.yaml``); a ``FileNotFoundError`` otherwise."""
    path = Path(path)
    if (path / "bundle.json").is_file():
        return "export"
    if (path / "config.yaml").is_file():
        return "run"
    raise FileNotFoundError(f"{path} is neither an mm run folder (config.yaml) nor an export folder (bundle.json)")


def answer(head: str, pred: dict[str, Any]) -> dict[str, Any]:
    """``mm.predict.decode``'s dict in the server's words."""
    if head == "token":
        return {"tokens": pred["tokens"], "tags": pred["prediction"]}
    if head == "regression":
        return {"value": pred["prediction"]}
    out = {"label": pred["prediction"], "probabilities": pred["probabilities"]}
    return {**out, "contributions": pred["contributions"]} if "contributions" in pred else out
