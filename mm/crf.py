"""Linear-chain CRF and constrained Viterbi decoding for the token head (NER).

Tag sequences read from per-word scores one word at a time can be invalid: ``I-ORG`` after ``O``,
``I-PER`` after ``B-LOC``. seqeval then splits or drops those entities. Two remedies, both here:

- ``allowed_transitions(tags)``: which tag may follow which (and start or end a sentence) under
  the tag scheme read from the tag names: IOBES when any tag is ``E-`` or ``S-`` prefixed, else
  BIO (IOB2: every entity opens with ``B-``). Viterbi decoding over these transitions alone
  (``viterbi`` with zero transition scores) always yields valid sequences.
- ``CRF``: learned start, end and transition scores, trained jointly with the encoder on the
  sentence log-likelihood (forward algorithm in log space), decoded by Viterbi over the allowed
  transitions.

Why not a library: ``pytorch-crf`` (the usual choice) has had no release since February 2019 and
has no way to forbid transitions at decoding; ``allencrf`` and ``torch-struct`` (2021) are also
unmaintained. The forward algorithm and Viterbi are a few lines of ``torch.logsumexp`` / ``max``
each, tested against brute-force enumeration of every tag sequence (``tests/test_ner.py``).

Training leaves the transitions unconstrained (so a dataset that breaks the scheme still has a
finite likelihood); constraints apply when decoding.
"""

from __future__ import annotations

import torch
from torch import nn

NEG = -1e4  # the score of a forbidden transition: far below any path, finite so that sums never give NaN


def tag_scheme(tags: list[str]) -> str:
    """``IOBES`` when any tag is ``E-`` or ``S-`` prefixed, else ``BIO``."""
    return "IOBES" if any(t[:2] in ("E-", "S-") for t in tags) else "BIO"


def allowed_transitions(tags: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean ``(start [C], transitions [C, C], end [C])`` of the scheme the tags use.

    ``transitions[i, j]``: tag j may follow tag i. BIO: ``I-X`` only after ``B-X`` or ``I-X``
    (so never first). IOBES: ``I-X`` and ``E-X`` only after ``B-X`` or ``I-X``; ``B-X`` and ``I-X``
    must be followed by ``I-X`` or ``E-X`` (so never last); ``O``, ``S-`` and ``B-`` after ``O``,
    ``E-`` or ``S-``.
    """
    scheme = tag_scheme(tags)
    prefix = [t[0] if t != "O" else "O" for t in tags]
    kind = [t[2:] for t in tags]
    n = len(tags)
    start, end = torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    trans = torch.ones(n, n, dtype=torch.bool)
    for j in range(n):
        inside = prefix[j] in ("I", "E") if scheme == "IOBES" else prefix[j] == "I"
        if inside:  # continues an entity of its own type
            start[j] = False
            for i in range(n):
                trans[i, j] = prefix[i] in ("B", "I") and kind[i] == kind[j]
        elif scheme == "IOBES":  # O, B-, S-: only once the previous entity is closed
            for i in range(n):
                trans[i, j] = prefix[i] in ("O", "E", "S")
    if scheme == "IOBES":
        end = torch.tensor([p in ("O", "E", "S") for p in prefix])
    return start, trans, end


def viterbi(emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, transitions: torch.Tensor,
            end: torch.Tensor) -> list[list[int]]:
    """The best tag sequence of each row.

    Args:
        emissions: ``[B, W, C]`` per-word tag scores.
        mask: ``Bool[B, W]``, each row's real words first (a row may be empty).
        start, transitions, end: scores ``[C]``, ``[C, C]`` (from, to), ``[C]``; forbidden ones at ``NEG``.

    Returns:
        Per row, ``mask[b].sum()`` tag ids.
    """
    B, W, _ = emissions.shape
    if W == 0:
        return [[] for _ in range(B)]
    score = start + emissions[:, 0]  # [B, C]
    history = []
    for t in range(1, W):
        # best previous tag for each tag: [B, C_prev, 1] + [C_prev, C] -> max over C_prev
        best, back = (score[:, :, None] + transitions).max(1)
        nxt = best + emissions[:, t]
        keep = mask[:, t, None]
        score = torch.where(keep, nxt, score)
        history.append(back)
    score = score + end
    lengths = mask.sum(1).tolist()
    out = []
    last = score.argmax(1).tolist()
    for b in range(B):
        n = lengths[b]
        if n == 0:
            out.append([])
            continue
        path = [last[b]]
        for t in range(n - 1, 0, -1):
            path.append(int(history[t - 1][b, path[-1]]))
        out.append(path[::-1])
    return out


class CRF(nn.Module):
    """Linear-chain CRF over ``num_tags`` tags: start, end and transition scores, learned.

    Args:
        tags: the tag names (index = tag id); their scheme gives the transitions allowed at decoding.
        constrained: decode over the allowed transitions only (otherwise any sequence may come out).
    """

    def __init__(self, tags: list[str], constrained: bool = True):
        super().__init__()
        n = len(tags)
        self.start = nn.Parameter(torch.zeros(n))
        self.end = nn.Parameter(torch.zeros(n))
        self.transitions = nn.Parameter(torch.zeros(n, n))  # [from, to]
        allowed = allowed_transitions(tags) if constrained else (torch.ones(n, dtype=torch.bool),
                                                                 torch.ones(n, n, dtype=torch.bool),
                                                                 torch.ones(n, dtype=torch.bool))
        for name, value in zip(("allowed_start", "allowed_transitions", "allowed_end"), allowed, strict=True):
            self.register_buffer(name, value, persistent=False)

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``log p(tags | emissions)`` per row ``[B]``; ``emissions [B, W, C]``, ``tags Long[B, W]``,
        ``mask Bool[B, W]`` with each row's words first. An empty row has log-likelihood 0."""
        emissions = emissions.float()
        B, W, _ = emissions.shape
        maskf = mask.float()
        tags = tags.masked_fill(~mask, 0)
        rows = torch.arange(B, device=emissions.device)
        # the gold path's score: start, emissions, transitions between real words, end after the last
        gold = self.start[tags[:, 0]] + emissions[rows, 0, tags[:, 0]]
        for t in range(1, W):
            step = self.transitions[tags[:, t - 1], tags[:, t]] + emissions[rows, t, tags[:, t]]
            gold = gold + step * maskf[:, t]
        last = tags[rows, (mask.sum(1) - 1).clamp_min(0)]
        gold = gold + self.end[last]
        # the partition function: forward algorithm in log space
        alpha = self.start + emissions[:, 0]  # [B, C]
        for t in range(1, W):
            nxt = torch.logsumexp(alpha[:, :, None] + self.transitions, dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t, None], nxt, alpha)
        log_z = torch.logsumexp(alpha + self.end, dim=1)
        return (gold - log_z) * mask[:, 0].float()

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """The most likely allowed tag sequence of each row (Viterbi)."""
        def masked(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
            return scores.detach().float().masked_fill(~allowed, NEG)

        return viterbi(emissions.detach().float(), mask, masked(self.start, self.allowed_start),
                       masked(self.transitions, self.allowed_transitions), masked(self.end, self.allowed_end))


def constrained_decode(scores: torch.Tensor, mask: torch.Tensor, tags: list[str]) -> list[list[int]]:
    """Viterbi over the allowed transitions of the tags' scheme, with no learned transition scores:
    the allowed sequence with the highest sum of per-word ``scores`` (log-probabilities)."""
    start, trans, end = (torch.zeros(a.shape).masked_fill(~a, NEG).to(scores.device) for a in allowed_transitions(tags))
    return viterbi(scores.detach().float(), mask, start, trans, end)


def first_pieces(values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-piece ``values [B, T, ...]`` of the labelled pieces (each word's first), packed to the left.

    Returns:
        ``(values [B, W, ...], labels Long[B, W], mask Bool[B, W])``, W the most words in a row.
    """
    keep = labels != -100  # [B, T]
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # labelled positions first, in order
    W = int(keep.sum(1).max()) if keep.numel() else 0
    order = order[:, :W]
    index = order.reshape(*order.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    return values.gather(1, index), labels.gather(1, order), keep.gather(1, order)
