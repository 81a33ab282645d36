"""The synthetic benchmark's factors and tasks, and the exact ceilings that follow from them.

Seven independent, uniform latent factors are each visible to some modalities (``FACTORS``);
every task label is a function of a few factors (``TASKS``). So the best score reachable from
any subset of modalities follows from the factor table alone (``ceiling``), computed exactly
over the joint factor grid, and generated data can be checked against it (``empirical_ceiling``).

Each task has a kind, the head that learns it, and a ceiling metric (``CEILING_METRIC``):
``classification`` (accuracy), ``multilabel`` (exact-match ratio), ``regression`` (R^2;
``min_mse`` gives the least reachable MSE) and ``token`` (entity F1 of the caption's tags).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from mm.config import check_range
from mm.data.synthetic_render import PITCH_HZ, caption_words, slot_phrases
from mm.registry import CHECKS
from mm.registry import TASKS as REGISTERED

MODALITIES: tuple[str, ...] = ("audio", "image", "text")


@dataclass(frozen=True)
class FactorSpec:
    """A latent factor: its values (drawn uniformly) and the modalities that show it."""

    values: tuple[str, ...]
    modalities: frozenset[str]


@dataclass(frozen=True)
class TaskSpec:
    """A task: the factors its label reads and the label as a function of those factors.

    The label is a class name (``classification``), a sorted tuple of class names
    (``multilabel``), a number (``regression``), or for ``token`` the entity type of each tagged
    caption phrase, in the order of ``TAG_SLOTS``.
    """

    description: str
    factors: tuple[str, ...]
    label: Callable[[dict[str, str]], Any]
    kind: str = "classification"


# Caption phrases the token task tags, each one entity: its type may depend on other factors.
TAG_SLOTS: tuple[str, ...] = ("count", "shape", "animal")
CEILING_METRIC = {"classification": "accuracy", "multilabel": "exact match", "regression": "R^2",
                  "token": "entity F1"}


def _trimodal_label(f: dict[str, str]) -> str:
    warmth = "warm" if f["color"] in ("red", "yellow") else "cool"
    kind = "mammal" if f["animal"] in ("cat", "dog") else "other"
    return f"{warmth}-{kind}-{f['pitch']}"


FACTORS: dict[str, FactorSpec] = {
    "color": FactorSpec(("red", "green", "blue", "yellow"), frozenset({"image"})),
    "shape": FactorSpec(("circle", "square", "triangle"), frozenset({"image", "text"})),
    "brightness": FactorSpec(("dark", "light"), frozenset({"image"})),
    "animal": FactorSpec(("cat", "dog", "bird", "fish"), frozenset({"text"})),
    "claim": FactorSpec(("dark", "light"), frozenset({"text"})),
    "pitch": FactorSpec(("low", "high"), frozenset({"audio"})),
    "count": FactorSpec(("1", "2", "3"), frozenset({"audio", "text"})),
}

TASKS: dict[str, TaskSpec] = {
    "color_animal": TaskSpec(
        "colour of the shape (image) and animal named (text): needs both",
        ("color", "animal"),
        lambda f: f"{f['color']}-{f['animal']}",
    ),
    "match": TaskSpec(
        "does the caption's brightness claim match the picture? interaction, late fusion fails",
        ("claim", "brightness"),
        lambda f: "yes" if f["claim"] == f["brightness"] else "no",
    ),
    "trimodal": TaskSpec(
        "warm/cool colour (image), mammal or not (text), pitch (audio): needs all three",
        ("color", "animal", "pitch"),
        _trimodal_label,
    ),
    "color": TaskSpec(
        "colour of the shape: the image alone solves it (transfer source)", ("color",), lambda f: f["color"]
    ),
    "shape": TaskSpec("shape: redundant, image or text alone solves it", ("shape",), lambda f: f["shape"]),
    "count": TaskSpec(
        "number of beeps / objects: redundant, text or audio alone solves it",
        ("count",),
        lambda f: f["count"],
    ),
    "pitch": TaskSpec("low or high tone: the audio alone solves it", ("pitch",), lambda f: f["pitch"]),
    "multilabel": TaskSpec(
        "the set {colour, shape, animal, pitch}: image gives colour+shape, text shape+animal, audio pitch",
        ("color", "shape", "animal", "pitch"),
        lambda f: tuple(sorted((f["color"], f["shape"], f["animal"], f["pitch"]))),
        kind="multilabel",
    ),
    "regression": TaskSpec(
        "count + 3 * [pitch is high], 1 to 6: audio alone solves it, text knows only the count",
        ("count", "pitch"),
        lambda f: float(int(f["count"]) + 3 * (f["pitch"] == "high")),
        kind="regression",
    ),
    "tags": TaskSpec(
        "tag the caption: COUNT and ANIMAL phrases, the shape phrase as SHAPE_<colour of the picture>",
        ("color",),
        lambda f: ("COUNT", f"SHAPE_{f['color'].upper()}", "ANIMAL"),
        kind="token",
    ),
}


def _task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown synthetic task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]


def task_label(task: str, factors: dict[str, str]) -> str:
    """The label of ``task`` for one sample; the label function sees only its own factors."""
    spec = _task(task)
    return spec.label({k: factors[k] for k in spec.factors})


def _grid() -> list[dict[str, str]]:
    """Every joint factor assignment; each is equally likely."""
    return [
        dict(zip(FACTORS, values, strict=True))
        for values in itertools.product(*(f.values for f in FACTORS.values()))
    ]


def task_classes(task: str) -> tuple[str, ...]:
    """The sorted class names of ``task``: its tags for ``token``, none for ``regression``."""
    kind = _task(task).kind
    labels = {task_label(task, f) for f in _grid()}
    if kind == "regression":
        return ()
    if kind == "multilabel":
        return tuple(sorted({name for label in labels for name in label}))
    if kind == "token":
        multiword = {slot: any(len(caption_words([(p, slot)])) > 1 for p in phrases)
                     for slot, phrases in slot_phrases().items()}
        tags = {"O"}
        for label in labels:
            for slot, entity in zip(TAG_SLOTS, label, strict=True):
                tags |= {f"B-{entity}", f"I-{entity}"} if multiword[slot] else {f"B-{entity}"}
        return tuple(sorted(tags))
    return tuple(sorted(labels))


def caption_tags(words: list[tuple[str, str | None]], entities: tuple[str, ...]) -> list[str]:
    """BIO tags of a caption's ``(word, slot)`` list; ``entities`` gives each ``TAG_SLOTS`` type."""
    types = dict(zip(TAG_SLOTS, entities, strict=True))
    tags, previous = [], None
    for _, slot in words:
        tags.append("O" if slot not in types else ("I-" if slot == previous else "B-") + types[slot])
        previous = slot
    return tags


def _visible(modalities: Iterable[str]) -> tuple[str, ...]:
    mods = set(modalities)
    if unknown := mods - set(MODALITIES):
        raise ValueError(f"unknown modalities {sorted(unknown)}; valid: {list(MODALITIES)}")
    return tuple(name for name, spec in FACTORS.items() if spec.modalities & mods)


def _majority_accuracy(pairs: Iterable[tuple[tuple[str, ...], str]]) -> Fraction:
    """Accuracy of predicting the most common label within each group of ``(group, label)``."""
    groups: dict[tuple[str, ...], Counter] = defaultdict(Counter)
    for key, label in pairs:
        groups[key][label] += 1
    total = sum(sum(c.values()) for c in groups.values())
    return Fraction(sum(max(c.values()) for c in groups.values()), total)


def _min_mse(pairs: Iterable[tuple[tuple[str, ...], float]]) -> Fraction:
    """Mean squared error of predicting each group's mean label: E[Var(y | group)]."""
    groups: dict[tuple[str, ...], list[Fraction]] = defaultdict(list)
    for key, label in pairs:
        groups[key].append(Fraction(label))
    total, squares = 0, Fraction(0)
    for ys in groups.values():
        mean = sum(ys) / len(ys)
        total, squares = total + len(ys), squares + sum((y - mean) ** 2 for y in ys)
    return squares / total


def _r_squared(pairs: Iterable[tuple[tuple[str, ...], float]]) -> Fraction:
    """1 - (least MSE given the groups) / Var(y): the share of variance the groups explain."""
    pairs = list(pairs)
    variance = _min_mse((((), y) for _, y in pairs))
    return Fraction(1) if variance == 0 else 1 - _min_mse(pairs) / variance


def _best_entity_f1(pairs: Iterable[tuple[tuple[str, ...], tuple[str, ...]]]) -> Fraction:
    """The best expected entity F1 of a tagger that sees the phrases (the text) and the groups.

    Each sample has one gold entity per slot. Per group and slot the tagger's best guess is the
    most common type, right with probability p; tagging it adds p to the true positives and 1 to
    the predictions, so F1 = 2 TP / (predictions + gold) is maximised by tagging exactly the
    guesses with the highest p (a prefix of them sorted by p): that maximum over prefixes is exact.
    """
    groups: dict[tuple[str, ...], list[tuple[str, ...]]] = defaultdict(list)
    for key, label in pairs:
        groups[key].append(label)
    candidates = []  # (p, weight): one per group and slot
    for labels in groups.values():
        for slot in range(len(labels[0])):
            top = Counter(label[slot] for label in labels).most_common(1)[0][1]
            candidates.append((Fraction(top, len(labels)), len(labels)))
    gold = sum(len(labels) * len(labels[0]) for labels in groups.values())
    best, hits, predicted = Fraction(0), Fraction(0), 0
    for p, weight in sorted(candidates, reverse=True):
        hits, predicted = hits + p * weight, predicted + weight
        best = max(best, 2 * hits / (predicted + gold))
    return best


def _score(kind: str, pairs: Iterable[tuple[tuple[str, ...], Any]]) -> Fraction:
    if kind == "regression":
        return _r_squared(pairs)
    if kind == "token":
        return _best_entity_f1(pairs)
    return _majority_accuracy(pairs)  # classification; multilabel: exact match of the label tuple


def ceiling(task: str, modalities: Iterable[str]) -> float:
    """Bayes-optimal score of ``task`` from the factors the given modalities show.

    Computed exactly over the joint factor grid, grouped by the visible factors v. The score is
    the task kind's ``CEILING_METRIC``: accuracy, sum over v of P(v) * max_y P(y | v), for
    classification (with no modalities, the majority-class rate); the same for the exact match of
    multilabel label sets; R^2 = 1 - E[Var(y | v)] / Var(y) for regression (0 with no modalities);
    the best entity F1 for token tagging (see ``_best_entity_f1``), which is 0 without the text,
    where there is nothing to tag.
    """
    mods = set(modalities)
    visible = _visible(mods)
    if _task(task).kind == "token" and "text" not in mods:
        return 0.0
    return float(_exact_ceiling(task, visible))


def min_mse(task: str, modalities: Iterable[str]) -> float:
    """The least mean squared error of a regression ``task`` from the given modalities: E[Var(y | v)]."""
    if _task(task).kind != "regression":
        raise ValueError(f"min_mse is for regression tasks; {task!r} is {_task(task).kind}")
    visible = _visible(modalities)
    return float(_min_mse((tuple(f[k] for k in visible), task_label(task, f)) for f in _grid()))


@functools.cache
def _exact_ceiling(task: str, visible: tuple[str, ...]) -> Fraction:
    return _score(_task(task).kind, ((tuple(f[k] for k in visible), task_label(task, f)) for f in _grid()))


def subset_key(modalities: Iterable[str]) -> str:
    """``["text", "image"]`` -> ``"image+text"``."""
    return "+".join(sorted(modalities))


def modality_subsets() -> list[tuple[str, ...]]:
    """The 7 non-empty subsets of the modalities, smallest first."""
    return [s for r in range(1, len(MODALITIES) + 1) for s in itertools.combinations(MODALITIES, r)]


def ceiling_table() -> dict[str, dict[str, float]]:
    """``{task: {"image+text": ceiling, ...}}`` over all non-empty modality subsets."""
    return {task: {subset_key(s): ceiling(task, s) for s in modality_subsets()} for task in TASKS}


def min_mse_table() -> dict[str, dict[str, float]]:
    """``{task: {"image+text": least MSE, ...}}`` for the regression tasks."""
    return {task: {subset_key(s): min_mse(task, s) for s in modality_subsets()}
            for task, spec in TASKS.items() if spec.kind == "regression"}


def empirical_ceiling(rows: list[dict], task: str, modalities: Iterable[str]) -> float:
    """The ceiling measured on generated manifest rows.

    Rows are grouped by the visible factors that the task's label reads; the score is that of
    predicting from the groups, as in ``ceiling`` (the majority label, the group mean, ...).
    Grouping only by relevant factors keeps the small-sample optimism low (irrelevant factors
    would split the groups further). Token tasks score the entity types of the row's factors
    (the tests check that the row's tags carry them).
    """
    spec = _task(task)
    mods = set(modalities)
    if spec.kind == "token" and "text" not in mods:
        return 0.0
    keys = [k for k in _visible(mods) if k in spec.factors]

    def label(row: dict) -> Any:
        if spec.kind == "token":
            return task_label(task, row["factors"])
        value = row["labels"][task]
        return tuple(value) if isinstance(value, list) else value

    return float(_score(spec.kind, ((tuple(r["factors"][k] for k in keys), label(r)) for r in rows)))



def _register() -> None:
    """The tasks as ``data.task`` choices (``mm.registry.TASKS``), and the synthetic section's check
    that depends on what the benchmark renders."""
    for name, task in TASKS.items():
        REGISTERED.register(name, task)

    @CHECKS.register("data.synthetic")
    def check_synthetic(cfg: Any) -> None:
        nyquist = 2 * max(high for _, high in PITCH_HZ.values())  # the high beeps must be representable
        check_range("data.synthetic.sample_rate", cfg.data.synthetic.sample_rate, nyquist, open_low=True)


_register()
