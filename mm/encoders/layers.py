"""Layer grouping of backbones, in one place: embeddings, blocks (bottom to top), final norm.

Every trainability policy (``last_n``, ``gradual``) and layer-wise learning-rate decay reads
this grouping, so a new backbone family is supported by adding one entry here. A group is a list
of parameter names relative to the backbone.

Families (by the prefix of their transformer blocks):

- Hugging Face BERT-style encoders: ``encoder.layer.<i>.``; no final norm (post-LN blocks).
- timm ViT-style models: ``blocks.<i>.``; final ``norm.`` / ``fc_norm.`` / ``head_norm.`` (timm
  CNNs such as EfficientNet use ``blocks.<i>.`` too; their ``conv_head`` / ``bn2`` count as final).
- timm ResNets: the stages ``layer<i>.`` (1-4) are the blocks; the stem (``conv1``, ``bn1``) is
  the embeddings; there is no final norm.
- wav2vec2: ``encoder.layers.<i>.``; ``encoder.layer_norm`` is the final norm when the model is
  pre-LN (``do_stable_layer_norm``, as in wav2vec2-large) and part of the embeddings otherwise
  (wav2vec2-base applies it before the blocks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

BLOCK_PATTERNS = (r"^encoder\.layer\.(\d+)\.", r"^encoder\.layers\.(\d+)\.", r"^blocks\.(\d+)\.", r"^layer(\d+)\.")
FINAL_PREFIXES = ("norm.", "fc_norm.", "head_norm.", "conv_head.", "bn2.")


@dataclass
class LayerGroups:
    """Parameter names of a backbone by depth.

    Attributes:
        embeddings: everything below the first block (patch/token embeddings, conv stem...).
        blocks: one list per block, bottom to top.
        final: the final norm (and head-side layers) above the last block.
    """

    embeddings: list[str]
    blocks: list[list[str]]
    final: list[str]

    def depth_from_top(self) -> dict[str, int]:
        """Name -> depth counted from the top: final 0, last block 1, ..., embeddings len(blocks) + 1."""
        n = len(self.blocks)
        depth = {name: 0 for name in self.final}
        for i, block in enumerate(self.blocks):
            depth.update({name: n - i for name in block})
        depth.update({name: n + 1 for name in self.embeddings})
        return depth


def layer_groups(backbone: nn.Module) -> LayerGroups:
    """Group a backbone's parameters (see the module docstring for the families).

    Raises:
        ValueError: the backbone has no recognised block structure.
    """
    names = [n for n, _ in backbone.named_parameters()]
    pattern = next((re.compile(p) for p in BLOCK_PATTERNS if any(re.match(p, n) for n in names)), None)
    if pattern is None:
        raise ValueError(
            f"{type(backbone).__name__}: no transformer blocks found (looked for {list(BLOCK_PATTERNS)}); "
            "add its family to mm/encoders/layers.py"
        )
    stable_ln = bool(getattr(getattr(backbone, "config", None), "do_stable_layer_norm", False))
    blocks: dict[int, list[str]] = {}
    embeddings, final = [], []
    for name in names:
        match = pattern.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), []).append(name)
        elif name.startswith(FINAL_PREFIXES) or (stable_ln and name.startswith("encoder.layer_norm.")):
            final.append(name)
        else:
            embeddings.append(name)
    return LayerGroups(embeddings, [blocks[i] for i in sorted(blocks)], final)
