"""Mixup and CutMix for a multimodal batch (classification), drawn from torch's RNG.

A batch is paired with itself reversed (sample ``i`` with ``B - 1 - i``, as timm's ``Mixup`` does)
and mixed with a weight ``lam ~ Beta(alpha, alpha)``:

- mixup: every float input is blended, ``lam * x + (1 - lam) * x[perm]`` (pictures, spectrograms,
  waves); lengths and masks take the longer of the two, and a modality is present if either has it;
- cutmix (pictures): a box of area ``1 - lam`` is pasted from the paired picture; ``lam`` becomes the
  exact kept area; the other modalities are blended with that ``lam``.

What may be done to a modality's inputs is asked of its encoder classes (``mm.registry.ENCODERS``):
``picture_keys`` are the inputs cutmix pastes boxes into, and an encoder that is not ``mixable``
(text: token ids) refuses mixing.

The head's loss is ``lam * CE(y) + (1 - lam) * CE(y[perm])`` (``ClassificationHead.loss`` reads
``batch["mix"]``). Token ids cannot be blended, so a model with text is refused; and the draws come
from torch's global RNG, which checkpoints save, so a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mm.registry import ENCODERS

NOT_INPUTS = ("label", "index", "present", "cached", "mix")


def picture_keys(modality: str) -> tuple[str, ...]:
    """The input keys of ``modality`` that hold pictures (its encoder classes' ``picture_keys``)."""
    return tuple(k for cls in ENCODERS[modality].values() for k in cls.picture_keys)


@dataclass
class Mixing:
    """Batch mixing; off when both alphas are 0.

    Attributes:
        mixup: Beta alpha of mixup (0: off).
        cutmix: Beta alpha of cutmix on pictures (0: off); with both on, each batch picks one.
        prob: probability that a batch is mixed at all.
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if not self.active or float(torch.rand(())) >= self.prob:
            return batch
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or float(torch.rand(())) < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        B = len(batch["label"])
        perm = torch.arange(B - 1, -1, -1, device=batch["label"].device)
        box = None
        if use_cutmix:
            box, lam = self._box(batch, lam)
        mixed = {k: v for k, v in batch.items() if k in NOT_INPUTS}
        for m, inputs in batch.items():
            if m in NOT_INPUTS:
                continue
            if not all(cls.mixable for cls in ENCODERS[m].values()):
                raise ValueError(f"mixup/cutmix cannot blend the {m} inputs (token ids): train without {m}, "
                                 "or without mixing")
            boxed = set(picture_keys(m))
            mixed[m] = {key: self._mix(x, lam, perm, box if key in boxed else None) for key, x in inputs.items()}
        mixed["present"] = {m: p | p[perm] for m, p in batch["present"].items()}
        mixed["mix"] = {"lam": lam, "perm": perm}
        return mixed

    @staticmethod
    def _box(batch: dict[str, Any], lam: float) -> tuple[tuple[int, int, int, int] | None, float]:
        """A random box of area about ``1 - lam`` of the pictures, and the exact kept area."""
        pictures = next((inputs[key] for m, inputs in batch.items() if m not in NOT_INPUTS
                         for key in picture_keys(m) if key in inputs), None)
        if pictures is None:
            return None, lam
        H, W = pictures.shape[-2:]
        cut = math.sqrt(1.0 - lam)
        h, w = int(H * cut), int(W * cut)
        cy, cx = int(torch.randint(0, H, ())), int(torch.randint(0, W, ()))
        y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, H)
        x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, W)
        return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / (H * W)

    @staticmethod
    def _mix(x: torch.Tensor, lam: float, perm: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
        """One input mixed: masks and lengths the longer, a picture (``box`` given) cut, others blended."""
        if not x.is_floating_point():  # lengths and masks: the longer of the two
            return torch.maximum(x, x[perm])
        if box is not None:
            y0, y1, x0, x1 = box
            out = x.clone()
            out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
            return out
        return lam * x + (1 - lam) * x[perm]
