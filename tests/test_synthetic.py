"""The synthetic benchmark: determinism, exact ceilings, and factors recoverable from the files."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from seqeval.metrics import f1_score
from seqeval.metrics.sequence_labeling import get_entities

import mm.data.synthetic as synthetic
from mm.data.synthetic import (
    TASKS,
    ceiling,
    ceiling_table,
    empirical_ceiling,
    ensure_synthetic,
    generate,
    min_mse,
    min_mse_table,
    modality_subsets,
    subset_key,
    task_classes,
)
from mm.data.synthetic_render import (
    ANIMAL_WORDS,
    COLOR_RGB,
    COUNT_WORDS,
    PREFIXES,
    SHAPE_WORDS,
    SUFFIXES,
    TEMPLATES,
    factor_vocabulary,
    words,
)

SMALL = {"n_train": 12, "n_val": 4, "n_test": 4}


def read_rows(root: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2000 training samples at the default noise levels."""
    return generate(tmp_path_factory.mktemp("big"), seed=7, n_train=2000, n_val=20, n_test=20)


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_other_seed_does_not(tmp_path: Path) -> None:
    a, b, c = (generate(tmp_path / name, seed=s, **SMALL) for name, s in (("a", 3), ("b", 3), ("c", 4)))
    for rel in ("train.jsonl", "test.jsonl", "meta.json", "images/train/000005.png", "audio/val/000002.wav"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for rel in ("train.jsonl", "images/train/000005.png", "audio/val/000002.wav"):
        assert (a / rel).read_bytes() != (c / rel).read_bytes(), rel


def test_splits_draw_from_different_streams(tmp_path: Path) -> None:
    root = generate(tmp_path, seed=0, **SMALL)
    texts = {split: [r["text"] for r in read_rows(root, split)] for split in ("train", "val", "test")}
    assert texts["train"][:4] != texts["val"] and texts["val"] != texts["test"]
    assert (root / "images/train/000000.png").read_bytes() != (root / "images/val/000000.png").read_bytes()


def test_manifest_layout_and_file_formats(tmp_path: Path) -> None:
    root = generate(
        tmp_path, seed=1, n_train=3, n_val=2, n_test=1, image_size=40, sample_rate=8000, audio_seconds=0.5
    )
    rows = read_rows(root, "train")
    assert [r["id"] for r in rows] == ["train-000000", "train-000001", "train-000002"]
    assert rows[1]["image"] == "images/train/000001.png" and rows[1]["audio"] == "audio/train/000001.wav"
    assert set(rows[0]["factors"]) == set(synthetic.FACTORS) and set(rows[0]["labels"]) == set(TASKS)
    image = Image.open(root / rows[0]["image"])
    assert (image.mode, image.size) == ("RGB", (40, 40))
    info = sf.info(root / rows[0]["audio"])
    assert (info.samplerate, info.frames, info.channels, info.subtype) == (8000, 4000, 1, "PCM_16")
    meta = json.loads((root / "meta.json").read_text())
    assert meta["params"]["image_size"] == 40 and meta["ceilings"] == ceiling_table()
    assert meta["tasks"]["match"]["classes"] == ["no", "yes"]
    assert meta["min_mse"] == min_mse_table() and meta["tasks"]["tags"]["kind"] == "token"
    assert meta["tasks"]["regression"]["ceiling_metric"] == "R^2"


# ---------------------------------------------------------------- ceilings

EXPECTED = {  # subsets: audio, image, text, audio+image, audio+text, image+text, all three
    "color_animal": (1 / 16, 1 / 4, 1 / 4, 1 / 4, 1 / 4, 1.0, 1.0),
    "match": (1 / 2, 1 / 2, 1 / 2, 1 / 2, 1 / 2, 1.0, 1.0),
    "trimodal": (1 / 4, 1 / 4, 1 / 4, 1 / 2, 1 / 2, 1 / 2, 1.0),
    "color": (1 / 4, 1.0, 1 / 4, 1.0, 1 / 4, 1.0, 1.0),
    "shape": (1 / 3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
    "count": (1.0, 1 / 3, 1.0, 1.0, 1.0, 1.0, 1.0),
    "pitch": (1.0, 1 / 2, 1 / 2, 1.0, 1.0, 1 / 2, 1.0),
    # exact match of {colour, shape, animal, pitch}: the product over unseen factors of 1 / #values
    "multilabel": (1 / 48, 1 / 8, 1 / 8, 1 / 4, 1 / 4, 1 / 2, 1.0),
    # R^2 of count + 3 [pitch = high]: Var = 2/3 + 9/4 = 35/12; the count alone leaves 9/4
    "regression": (1.0, 0.0, 8 / 35, 1.0, 1.0, 8 / 35, 1.0),
    # entity F1: 2 of 3 entities sure, the shape's colour a 1/4 guess, better left out: 2*2/(2+3)
    "tags": (0.0, 0.0, 4 / 5, 0.0, 4 / 5, 1.0, 1.0),
}


def test_ceiling_table_is_exact() -> None:
    keys = ["audio", "image", "text", "audio+image", "audio+text", "image+text", "audio+image+text"]
    assert [subset_key(s) for s in modality_subsets()] == keys
    assert ceiling_table() == {
        task: dict(zip(keys, values, strict=True)) for task, values in EXPECTED.items()
    }


def test_ceiling_details() -> None:
    assert ceiling("color_animal", ["text", "image"]) == 1.0  # order does not matter
    assert ceiling("color_animal", []) == 1 / 16  # no modality: majority-class rate
    assert ceiling("count", ()) == 1 / 3
    assert task_classes("trimodal") == tuple(
        f"{t}-{a}-{p}" for t in ("cool", "warm") for a in ("mammal", "other") for p in ("high", "low")
    )
    assert len(task_classes("color_animal")) == 16 and task_classes("count") == ("1", "2", "3")
    assert task_classes("multilabel") == (
        "bird", "blue", "cat", "circle", "dog", "fish", "green", "high", "low", "red", "square", "triangle", "yellow"
    )
    assert task_classes("regression") == ()
    colors = ("BLUE", "GREEN", "RED", "YELLOW")
    assert task_classes("tags") == (
        "B-ANIMAL", "B-COUNT", *(f"B-SHAPE_{c}" for c in colors), "I-COUNT", *(f"I-SHAPE_{c}" for c in colors), "O"
    )


def test_min_mse_is_exact() -> None:
    keys = ["audio", "image", "text", "audio+image", "audio+text", "image+text", "audio+image+text"]
    assert min_mse_table() == {"regression": dict(zip(keys, (0.0, 35 / 12, 9 / 4, 0.0, 0.0, 9 / 4, 0.0), strict=True))}
    assert min_mse("regression", []) == 35 / 12  # the variance of the label
    with pytest.raises(ValueError, match="min_mse is for regression tasks"):
        min_mse("color", ["image"])


def test_unknown_names_raise_with_valid_list() -> None:
    with pytest.raises(ValueError, match=r"unknown synthetic task 'colour'.*color_animal"):
        ceiling("colour", ["image"])
    with pytest.raises(ValueError, match=r"unknown modalities \['video'\]"):
        ceiling("color", ["video"])


def test_empirical_ceilings_match_analytic(big: Path) -> None:
    rows = read_rows(big, "train")
    for task in TASKS:
        for subset in modality_subsets():
            analytic, measured = ceiling(task, subset), empirical_ceiling(rows, task, subset)
            if analytic in (0.0, 1.0) or task == "tags":  # tags: the colour guess is never worth it
                assert measured == analytic, (task, subset)
            elif task == "regression":  # group means and the variance, both estimated
                assert measured == pytest.approx(analytic, abs=0.03), (task, subset, measured)
            else:  # majority voting on finite groups is optimistic by a little; more so with
                # multilabel's many-way ties (4 animals over ~80-sample groups: +0.06)
                slack = 0.08 if task == "multilabel" else 0.05
                assert analytic - 0.01 <= measured <= analytic + slack, (task, subset, measured)


def test_new_task_labels_follow_their_factors(big: Path) -> None:
    for row in read_rows(big, "train")[:300]:
        f, labels = row["factors"], row["labels"]
        assert labels["multilabel"] == sorted([f["color"], f["shape"], f["animal"], f["pitch"]])
        assert labels["regression"] == int(f["count"]) + 3 * (f["pitch"] == "high")


def test_tags_mark_count_shape_and_animal_phrases(big: Path) -> None:
    shape_phrases = {s: {w for pair in pairs for w in pair} for s, pairs in SHAPE_WORDS.items()}
    seen = set()
    for row in read_rows(big, "train"):
        f, tokens, tags = row["factors"], row["tokens"], row["labels"]["tags"]
        assert len(tokens) == len(tags) and "".join(tokens) == "".join(row["text"].split()), row["id"]
        entities = {kind: " ".join(tokens[a : b + 1]).lower() for kind, a, b in get_entities(tags)}
        assert len(entities) == 3 == len(get_entities(tags)), row["id"]
        assert entities["COUNT"] in COUNT_WORDS[f["count"]], row["id"]
        assert entities["ANIMAL"] in ANIMAL_WORDS[f["animal"]], row["id"]
        assert entities[f"SHAPE_{f['color'].upper()}"] in shape_phrases[f["shape"]], row["id"]
        seen |= set(tags)
    assert tuple(sorted(seen)) == task_classes("tags")


def test_tags_ceiling_is_reached_on_the_rows(big: Path) -> None:
    """Text alone: tag COUNT and ANIMAL, leave the shape out (4/5); a colour guess scores less."""
    gold = [r["labels"]["tags"] for r in read_rows(big, "train")]
    no_shape = [[t if "SHAPE" not in t else "O" for t in tags] for tags in gold]
    guess_red = [[t[:8] + "RED" if "SHAPE" in t else t for t in tags] for tags in gold]
    assert f1_score(gold, gold) == 1.0 == ceiling("tags", ["text", "image"])
    assert f1_score(gold, no_shape) == pytest.approx(ceiling("tags", ["text"])) == pytest.approx(4 / 5)
    assert 0.74 < f1_score(gold, guess_red) < 0.76  # 2 (2 + 1/4) / (3 + 3) = 3/4 in expectation


# ---------------------------------------------------------------- the files carry the factors


def test_image_shows_color_and_background(big: Path) -> None:
    centroids = np.array(list(COLOR_RGB.values())) / 255.0
    for row in read_rows(big, "train"):
        x = np.asarray(Image.open(big / row["image"]), dtype=np.float64) / 255.0
        shape_pixels = x[(x.max(axis=2) - x.min(axis=2)) > 0.3]  # saturated = the coloured shape
        nearest = list(COLOR_RGB)[int(np.argmin(((centroids - shape_pixels.mean(axis=0)) ** 2).sum(axis=1)))]
        assert nearest == row["factors"]["color"], row["id"]
        corners = np.concatenate([x[:3, :3], x[:3, -3:], x[-3:, :3], x[-3:, -3:]])
        assert ("dark" if corners.mean() < 0.5 else "light") == row["factors"]["brightness"], row["id"]


def test_audio_shows_count_and_pitch(big: Path) -> None:
    for row in read_rows(big, "train"):
        audio, sample_rate = sf.read(big / row["audio"])
        frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)  # [T, 10 ms]
        rms = np.sqrt((frames**2).mean(axis=1))
        on = rms > (rms.max() + np.percentile(rms, 10)) / 2
        beeps = int(on[0]) + int((on[1:] & ~on[:-1]).sum())  # rising edges of the envelope
        assert str(beeps) == row["factors"]["count"], row["id"]
        peak_hz = np.argmax(np.abs(np.fft.rfft(audio))) * sample_rate / len(audio)
        assert ("high" if peak_hz > 800 else "low") == row["factors"]["pitch"], row["id"]


def test_text_names_exactly_its_animal(big: Path) -> None:
    other_words = {a: {w for b, ws in ANIMAL_WORDS.items() if b != a for w in ws} for a in ANIMAL_WORDS}
    for row in read_rows(big, "train"):
        tokens = set(words(row["text"]))
        animal = row["factors"]["animal"]
        assert tokens & set(ANIMAL_WORDS[animal]) and not tokens & other_words[animal], row["text"]


def test_filler_and_template_words_reveal_no_factor() -> None:
    vocabulary = factor_vocabulary()
    assert {"cat", "goldfish", "three", "trio", "ring", "pale", "yellow", "dark"} <= vocabulary
    for phrase in PREFIXES + SUFFIXES + tuple(t.format(objects="", animal="", claim="") for t in TEMPLATES):
        assert not set(words(phrase)) & vocabulary, phrase


def test_text_noise_adds_fillers(tmp_path: Path) -> None:
    def has_filler(text: str) -> bool:
        return text.lower().startswith(PREFIXES) or text.endswith(SUFFIXES)

    counts = []
    for noise in (0.0, 1.0):
        root = generate(tmp_path / str(noise), text_noise=noise, n_train=20, n_val=0, n_test=0)
        counts.append(sum(has_filler(r["text"]) for r in read_rows(root, "train")))
    assert counts == [0, 20]


# ---------------------------------------------------------------- cache


def counting_generate(calls: list) -> object:
    @functools.wraps(generate)
    def wrapper(root: Path, **params: object) -> Path:
        calls.append(root)
        return generate(root, **params)

    return wrapper


def test_ensure_synthetic_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(synthetic, "generate", counting_generate(calls))
    first = ensure_synthetic(tmp_path, seed=2, **SMALL)
    marker_mtime = (first / synthetic.COMPLETE_MARKER).stat().st_mtime_ns
    # defaults spelled out, one with another type: the same folder
    again = ensure_synthetic(tmp_path, seed=2, image_noise=0.08, audio_snr_db=10, **SMALL)
    assert again == first and len(calls) == 1
    assert (first / synthetic.COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [first.name]  # no temp folders left
    assert ensure_synthetic(tmp_path, seed=3, **SMALL) != first and len(calls) == 2
    assert read_rows(first, "val") == read_rows(generate(tmp_path / "direct", seed=2, **SMALL), "val")
    with pytest.raises(TypeError, match="unknown synthetic parameters"):
        ensure_synthetic(tmp_path, n_trian=5)


def test_ensure_synthetic_loses_a_race_gracefully(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def racing_generate(root: Path, **params: object) -> Path:
        winner = root.parent / root.name.split(".tmp-")[0].lstrip(".")  # another process finishes first
        generate(winner, **params)
        (winner / synthetic.COMPLETE_MARKER).write_text("ok\n")
        return generate(root, **params)

    monkeypatch.setattr(synthetic, "generate", functools.wraps(generate)(racing_generate))
    folder = ensure_synthetic(tmp_path, seed=5, **SMALL)
    assert (folder / synthetic.COMPLETE_MARKER).exists()
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [folder.name]
