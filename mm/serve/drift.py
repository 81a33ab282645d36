"""Has new data drifted from what a run was trained on? One two-sample test per modality and one for labels.

Data flow: rows of the run's own data (its validation split by default: the rows it was tuned for
but never fitted) and the new rows are decoded by the run's own
encoders (no augmentation), and each modality's pooled feature ``[N, D]`` is taken from the
trained encoder, so "far" is measured in the space the fusion and head actually read. Per modality
the statistic is the unbiased squared maximum mean discrepancy (MMD, Gretton et al., 2012) with a
Gaussian kernel whose width is the median pairwise distance; its p-value comes from a permutation
test (the samples' reference/new assignment shuffled ``permutations`` times). Labels, where the
new rows carry them, are compared with a chi-square test of homogeneity on the class counts.
Retraining is called warranted when any test rejects at ``alpha`` after a Bonferroni correction
over the tests run, or when the new data holds classes the run never saw.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

NO_LABEL = "__no_label__"


@dataclass
class ModalityDrift:
    """The two-sample test of one modality's features."""

    modality: str
    n_reference: int
    n_new: int
    mmd2: float
    p_value: float
    bandwidth: float


@dataclass
class LabelDrift:
    """The chi-square test of the class counts (``p_value`` None when it cannot be run)."""

    n_reference: int
    n_new: int
    p_value: float | None
    total_variation: float
    unseen: list = field(default_factory=list)  # classes in the new data the run never trained on


@dataclass
class DriftReport:
    modalities: list[ModalityDrift]
    labels: LabelDrift | None
    alpha: float
    permutations: int
    retrain: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A markdown table of the tests, one row each, then the verdict."""
        lines = ["| test | n reference | n new | statistic | p-value |", "| --- | --- | --- | --- | --- |"]
        for m in self.modalities:
            lines.append(f"| {m.modality} (MMD²) | {m.n_reference} | {m.n_new} | {m.mmd2:.4g} | {m.p_value:.4f} |")
        if self.labels is not None:
            lab = self.labels
            p = "n/a" if lab.p_value is None else f"{lab.p_value:.4f}"
            lines.append(f"| labels (χ², TV {lab.total_variation:.3f}) | {lab.n_reference} | {lab.n_new} | - | {p} |")
        return "\n".join([*lines, "", self.verdict])


def mmd_permutation_test(x: torch.Tensor, y: torch.Tensor, permutations: int = 1000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Unbiased MMD² between samples ``x [n, D]`` and ``y [m, D]`` with its permutation p-value.

    Returns:
        ``(mmd2, p_value, bandwidth)``; the p-value is ``(1 + #{perm >= observed}) / (1 + permutations)``.
    """
    z = torch.cat([x, y]).double()
    n, total = len(x), len(z)
    if n < 2 or total - n < 2:
        raise ValueError(f"the MMD test needs at least 2 samples on each side (got {n} and {total - n})")
    d2 = torch.cdist(z, z).pow(2)  # [N, N]
    off = d2[~torch.eye(total, dtype=torch.bool)]
    bandwidth = float(off.median().sqrt()) or 1.0
    k = torch.exp(-d2 / (2 * bandwidth**2))
    gen = torch.Generator().manual_seed(seed)
    # Row 0 is the observed split; the others shuffle which samples count as "reference".
    assign = torch.zeros(permutations + 1, total, dtype=torch.bool)
    assign[0, :n] = True
    for p in range(1, permutations + 1):
        assign[p, torch.randperm(total, generator=gen)[:n]] = True
    sx, sy = assign.double(), (~assign).double()  # [P+1, N] indicators
    diag = k.diagonal()
    kxx = ((sx @ k) * sx).sum(1) - sx @ diag  # sum over i != j, both in x
    kyy = ((sy @ k) * sy).sum(1) - sy @ diag
    kxy = ((sx @ k) * sy).sum(1)
    m = total - n
    stat = kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m)  # [P+1]
    p_value = float((1 + (stat[1:] >= stat[0]).sum()) / (1 + permutations))
    return float(stat[0]), p_value, bandwidth


def label_test(reference: list, new: list, classes: list) -> LabelDrift:
    """Chi-square test of homogeneity of the class counts (scipy), and the total-variation distance."""
    from scipy.stats import chi2_contingency

    ref, cur = Counter(map(str, reference)), Counter(map(str, new))
    known = {str(c) for c in classes}
    names = sorted(set(ref) | set(cur))
    tv = 0.5 * sum(abs(ref[c] / max(len(reference), 1) - cur[c] / max(len(new), 1)) for c in names)
    used = [c for c in names if ref[c] + cur[c] > 0]
    p_value = None
    if len(used) >= 2 and reference and new:
        p_value = float(chi2_contingency([[ref[c] for c in used], [cur[c] for c in used]])[1])
    return LabelDrift(len(reference), len(new), p_value, round(tv, 6), sorted(set(cur) - known))


def sample_rows(rows: list[dict], limit: int, seed: int) -> list[dict]:
    """At most ``limit`` rows, drawn without replacement with a fixed seed (all of them if fewer)."""
    if len(rows) <= limit:
        return list(rows)
    return random.Random(seed).sample(rows, limit)


@torch.no_grad()
def pooled_features(model: Any, modalities: list[str], rows: list[dict], root: Path, allow_outside: bool,
                    head: str, classes: list, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Each modality's pooled encoder feature ``[n_present, D]`` for the rows that hold it (labels unread)."""
    from mm.data.collate import Collator
    from mm.data.manifest import ManifestDataset
    from mm.labels import build_codec

    encoders = {m: model.encoders[m] for m in modalities}
    ds = ManifestDataset(root, "drift", encoders, NO_LABEL, classes, codec=build_codec(head, classes), rows=rows,
                         require_labels=False, allow_outside_paths=allow_outside)
    loader = DataLoader(ds, batch_size=batch_size, collate_fn=Collator(modalities, encoders, head=head))
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
    for batch in loader:
        for m in modalities:
            present = batch["present"].get(m, torch.ones(len(batch["index"]), dtype=torch.bool))
            if bool(present.any()):
                feats[m].append(encoders[m](batch[m]).pooled.float()[present])
    dims = {m: getattr(encoders[m], "out_dim", 1) for m in modalities}
    return {m: torch.cat(v) if v else torch.zeros(0, dims[m]) for m, v in feats.items()}


def new_rows(path: Path, split: str) -> tuple[list[dict], Path]:
    """The rows of ``path`` (a JSONL manifest, or a dataset folder's ``split``) and their media root."""
    from mm.data.manifest import read_manifest, read_split

    path = Path(path)
    if path.is_file():
        return read_manifest(path), path.parent
    if path.is_dir():
        if not (path / f"{split}.jsonl").is_file():
            raise FileNotFoundError(f"{path} holds no {split}.jsonl (give a JSONL file or a folder with it)")
        return read_split(path, split), path
    raise FileNotFoundError(f"new data {path}: no such file or folder")


def check_drift(run_dir: str | Path, new_data: str | Path, split: str = "train", max_samples: int = 500,
                permutations: int = 1000, alpha: float = 0.05, seed: int = 0,
                checkpoint: str = "best", reference_split: str = "val") -> DriftReport:
    """Tests whether ``new_data`` sits away from ``run_dir``'s training data, modality by modality.

    Args:
        run_dir: a finished run folder (or a downloaded artifact folder).
        new_data: a JSONL manifest (media relative to its folder) or a dataset folder.
        split: which split of a dataset folder holds the new data.
        max_samples: rows drawn from each side (seeded); the cost is one encoder pass over them.
        permutations: permutation count of each MMD test (the p-value's resolution is 1 / (1 + it)).
        alpha: family-wise level; each of the k tests is run at ``alpha / k`` (Bonferroni).
        seed: seeds the row draws and the permutations.
        checkpoint: which of the run's checkpoints embeds the data.
        reference_split: the split of the run's own dataset that stands for "the data it was trained
            for". Validation by default: a fine-tuned encoder fits its training rows, so their features
            sit apart even from fresh rows of the same distribution (measured on digits: p = 0.001 for
            train vs test, none for val vs test), and the test would call every new batch drift.
    """
    from mm.analysis.evaluation import load_run
    from mm.data import resolve_dataset
    from mm.data.manifest import read_split
    from mm.labels import label_at

    rows, root = new_rows(Path(new_data), split)  # cheap checks first: the path, the manifest
    cfg, model, classes = load_run(run_dir, checkpoint)
    ref_root, label_key = resolve_dataset(cfg.data)
    reference = sample_rows(read_split(ref_root, reference_split), max_samples, seed)
    rows = sample_rows(rows, max_samples, seed + 1)
    if not rows:
        raise ValueError(f"{new_data}: no rows to test")
    modalities = [m for m in model.modalities if any(r.get(m) is not None for r in rows)]
    embed = {"head": cfg.head.name, "classes": classes, "allow_outside": cfg.data.allow_outside_paths}
    ref_feats = pooled_features(model, modalities, reference, ref_root, **embed)
    new_feats = pooled_features(model, modalities, rows, root, **embed)
    tests = []
    for m in modalities:
        if len(ref_feats[m]) >= 2 and len(new_feats[m]) >= 2:
            stat, p, bw = mmd_permutation_test(ref_feats[m], new_feats[m], permutations, seed)
            tests.append(ModalityDrift(m, len(ref_feats[m]), len(new_feats[m]), stat, p, bw))
    labels = None
    new_labels = [v for r in rows if (v := _label(r, label_key, label_at)) is not None]
    if new_labels and cfg.head.name == "classification":
        labels = label_test([_label(r, label_key, label_at) for r in reference], new_labels, classes)
    return _verdict(tests, labels, alpha, permutations)


def _label(row: dict, key: str, label_at: Any) -> Any:
    try:
        return label_at(row, key)
    except (KeyError, ValueError, TypeError):
        return None


def _verdict(tests: list[ModalityDrift], labels: LabelDrift | None, alpha: float, permutations: int) -> DriftReport:
    k = len(tests) + (labels is not None and labels.p_value is not None)
    level = alpha / max(k, 1)
    moved = [f"{t.modality} (p = {t.p_value:.4f})" for t in tests if t.p_value < level]
    if labels is not None and labels.p_value is not None and labels.p_value < level:
        moved.append(f"labels (p = {labels.p_value:.4f}, TV {labels.total_variation:.3f})")
    unseen = labels.unseen if labels is not None else []
    if unseen:
        moved.append(f"{len(unseen)} class(es) the run never saw: {unseen[:5]}")
    floor = 1 / (1 + permutations)
    if moved:
        verdict = (f"drift: {'; '.join(moved)} at family-wise alpha {alpha} (Bonferroni over {k} tests): "
                   "fine-tuning again on the new data is warranted (train.init_from=RUN).")
    else:
        verdict = (f"no drift detected at family-wise alpha {alpha} over {k} tests (smallest p-value resolvable "
                   f"{floor:.4f}): fine-tuning again is not warranted by the data alone.")
    if k and level < floor:
        verdict += f" Note: {permutations} permutations cannot reach the per-test level {level:.4g}; use more."
    return DriftReport(tests, labels, alpha, permutations, bool(moved), verdict)
