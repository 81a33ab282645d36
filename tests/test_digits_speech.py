"""The digits-speech builder (with a fake synthesiser, no espeak-ng), the fortunes builder and the raw-input baseline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import make_digits_speech
import make_fortunes
import numpy as np
import pytest
import raw_baseline
import soundfile
import torch
from PIL import Image
from sklearn.datasets import load_digits

from mm.data import fortunes
from mm.data.audio_io import load_audio
from mm.data.manifest import ManifestError, read_manifest
from mm.lowdata.raw_baseline import LogMelStats, image_features, modality_features, run_raw_baseline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    return make_digits_speech


def tone_hz(word: str, words: tuple[str, ...]) -> float:
    return 300.0 + 100.0 * words.index(word)


class FakeSynth:
    """A tone whose frequency encodes the word, at espeak-ng's 22050 Hz; counts its calls."""

    def __init__(self, words: tuple[str, ...]) -> None:
        self.words, self.calls = words, []

    def __call__(self, word: str, speaker: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
        self.calls.append((word, speaker, speed, pitch))
        t = np.arange(int(22050 * 0.4)) / 22050
        return (0.5 * np.sin(2 * np.pi * tone_hz(word, self.words) * t)).astype(np.float32), 22050


# --- the builder's pure parts --------------------------------------------------------------------


def test_split_images_is_stratified_disjoint_and_seeded(builder: ModuleType) -> None:
    labels = load_digits().target
    splits = builder.split_images(labels, seed=0)
    parts = [set(v.tolist()) for v in splits.values()]
    assert sum(len(p) for p in parts) == len(labels) == 1797
    assert set.union(*parts) == set(range(len(labels))) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for c in range(10):
        n = int(np.sum(labels == c))
        assert int(np.sum(labels[splits["train"]] == c)) == round(0.6 * n)
        assert int(np.sum(labels[splits["val"]] == c)) == round(0.2 * n)
    again, other = builder.split_images(labels, seed=0), builder.split_images(labels, seed=1)
    assert all(np.array_equal(splits[s], again[s]) for s in splits)
    assert not np.array_equal(splits["train"], other["train"])


def test_test_speakers_are_unseen(builder: ModuleType) -> None:
    assert not set(builder.TRAIN_SPEAKERS) & set(builder.TEST_SPEAKERS)
    variants = lambda speakers: {s.split("+")[1] for s in speakers}  # noqa: E731
    assert not variants(builder.TRAIN_SPEAKERS) & variants(builder.TEST_SPEAKERS)


def test_occlude_covers_one_flat_rectangle(builder: ModuleType) -> None:
    img = np.random.default_rng(0).uniform(0.7, 1.0, (28, 28))
    assert np.array_equal(builder.occlude(img, np.random.default_rng(1), prob=0.0), img)
    out = builder.occlude(img, np.random.default_rng(1), prob=1.0, extent=(0.4, 0.7))
    changed = np.argwhere(out != img)
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    h, w = bottom - top + 1, right - left + 1
    assert len(changed) == h * w and 0.4 * 28 - 1 <= h <= 0.7 * 28 + 1 and 0.4 * 28 - 1 <= w <= 0.7 * 28 + 1
    assert np.unique(out[top:bottom + 1, left:right + 1]).size == 1 and out[top, left] <= 0.6


def test_pixel_noise_has_its_std_and_stays_in_range(builder: ModuleType) -> None:
    img = np.full((200, 200), 0.5)
    assert np.array_equal(builder.add_pixel_noise(img, np.random.default_rng(0), 0.0), img)
    noisy = builder.add_pixel_noise(img, np.random.default_rng(0), 0.1)
    assert abs(np.std(noisy - img) - 0.1) < 0.005
    assert builder.add_pixel_noise(img, np.random.default_rng(0), 2.0).min() >= 0.0
    assert builder.add_pixel_noise(img, np.random.default_rng(0), 2.0).max() <= 1.0


def test_noise_colors_and_snr(builder: ModuleType) -> None:
    rng = np.random.default_rng(0)
    low = {}
    for color in ("white", "pink", "brown"):
        noise = builder.colored_noise(16000, color, rng)
        assert np.mean(noise ** 2) == pytest.approx(1.0)
        power = np.abs(np.fft.rfft(noise)) ** 2
        low[color] = power[:800].sum() / power.sum()  # share of the power below 800 Hz at 16 kHz
    assert low["white"] < 0.2 < low["pink"] < low["brown"]
    speech = np.sin(np.arange(8000) / 5.0)
    scaled = builder.scale_to_snr(rng.standard_normal(16000), speech, snr_db=7.0)
    assert 10 * np.log10(np.mean(speech ** 2) / np.mean(scaled ** 2)) == pytest.approx(7.0)


def test_place_utterance_is_a_fixed_length_shifted_clip(builder: ModuleType) -> None:
    utterance = np.ones(4000)
    clip, drawn = builder.place_utterance(utterance, np.random.default_rng(3), (40.0, 40.0), 0.3, 1.25)
    assert clip.shape == (20000,) and clip.dtype == np.float32 and 0.3 <= np.abs(clip).max() <= 0.9
    shift = round(drawn["shift_s"] * 16000)
    assert 0 <= drawn["shift_s"] <= 0.3 and drawn["snr_db"] == 40.0
    assert np.abs(clip[:shift]).max() < 0.1 * clip[shift:shift + 4000].mean()  # only faint noise before


def test_build_pairs_and_splits_with_a_fake_synthesizer(builder: ModuleType, tmp_path: Path) -> None:
    synth = FakeSynth(builder.WORDS)
    meta = builder.build(tmp_path / "ds", seed=0, occlusion=0.0, pixel_noise=0.0, snr_db=(30.0, 30.0),
                         limit=100, synthesize=synth)
    digits = load_digits()
    rows = {s: read_manifest(tmp_path / "ds" / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert meta["counts"] == {s: len(r) for s, r in rows.items()} and sum(meta["counts"].values()) == 100
    # each sklearn image in exactly one split; test speakers never in train/val
    indices = [r["digit_index"] for rs in rows.values() for r in rs]
    assert sorted(indices) == list(range(100))
    assert {r["speaker"] for r in rows["train"] + rows["val"]} <= set(builder.TRAIN_SPEAKERS)
    assert {r["speaker"] for r in rows["test"]} <= set(builder.TEST_SPEAKERS)
    # every distinct utterance synthesised once
    assert len(synth.calls) == len(set(synth.calls)) == meta["distinct_utterances"]
    for r in rows["train"][:10] + rows["test"][:10]:
        assert r["label"] == builder.WORDS[digits.target[r["digit_index"]]]
        png = np.asarray(Image.open(tmp_path / "ds" / r["image"]))
        expected = builder.render_digit(digits.images[r["digit_index"]], 28, np.random.default_rng(0), 0.0, 0.0)
        assert png.shape == (28, 28) and np.array_equal(png, np.round(expected * 255).astype(np.uint8))
        wave = load_audio(tmp_path / "ds" / r["audio"], 16000).numpy()
        assert wave.shape == (20000,) and soundfile.info(str(tmp_path / "ds" / r["audio"])).samplerate == 16000
        peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
        assert abs(peak_hz - tone_hz(r["label"], builder.WORDS)) < 5  # the audio says the image's digit
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["speakers"]["test"] == meta["speakers"]["test"]
    # deterministic: the same seed writes the same files
    builder.build(tmp_path / "again", seed=0, occlusion=0.0, pixel_noise=0.0, snr_db=(30.0, 30.0), limit=100,
                  synthesize=FakeSynth(builder.WORDS))
    for name in ("train.jsonl", "test.jsonl", f"audio/{rows['val'][0]['id']}.wav", f"images/{rows['val'][0]['id']}.png"):
        assert (tmp_path / "ds" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_cli_refuses_non_empty_dir_and_names_the_install(builder: ModuleType, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert builder.main([str(tmp_path / "full")]) == 1
    assert "--force" in capsys.readouterr().err
    monkeypatch.setattr(builder.shutil, "which", lambda name: None)
    assert builder.main([str(tmp_path / "empty")]) == 2
    assert "apt-get install espeak-ng" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_espeak_builds_a_small_dataset(builder: ModuleType, tmp_path: Path) -> None:
    wave, rate = builder.espeak("seven", builder.TEST_SPEAKERS[0], 150, 50)
    assert rate == 22050 and len(wave) > 0.2 * rate and np.abs(wave).max() > 0.05
    meta = builder.build(tmp_path / "ds", limit=50)
    assert sum(meta["counts"].values()) == 50 and meta["synthesizer"] == "espeak"


# --- the raw-input baseline ----------------------------------------------------------------------


def write_toy_manifest(root: Path) -> None:
    """Two trivially separable classes: ink on the left and a 300 Hz tone vs ink on the right and
    a 3 kHz tone; clips of two lengths; 6 train, 3 val and 3 test samples per class."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "audio").mkdir()
    counts = {"train": 6, "val": 3, "test": 3}
    for split, n in counts.items():
        lines = []
        for label, hz, side in (("left_low", 300.0, 0), ("right_high", 3000.0, 1)):
            for i in range(n):
                sid = f"{split}_{label}_{i}"
                img = rng.uniform(0, 40, (32, 32))
                img[:, side * 16:(side + 1) * 16] += 200
                Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{sid}.png")
                t = np.arange(8000 + 1600 * (i % 2)) / 16000
                wave = 0.5 * np.sin(2 * np.pi * hz * t) + 0.05 * rng.standard_normal(len(t))
                soundfile.write(str(root / "audio" / f"{sid}.wav"), wave, 16000)
                lines.append(json.dumps({"id": sid, "image": f"images/{sid}.png", "audio": f"audio/{sid}.wav",
                                         "label": label}))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def test_raw_baseline_separates_a_trivial_dataset(tmp_path: Path) -> None:
    write_toy_manifest(tmp_path / "toy")
    table, results = run_raw_baseline(tmp_path / "toy", ["image", "audio"], grid=(0.01, 1.0))
    assert [r["modalities"] for r in table] == ["audio", "image", "audio+image"]
    assert [r["features"] for r in table] == [256, 784, 1040]
    for row, result in zip(table, results.values(), strict=True):
        assert row["test acc"] == row["val acc"] == row["test macro-F1"] == 1.0
        assert set(result.val_accuracy_by_C) == {0.01, 1.0}
        best = max(result.val_accuracy_by_C.values())
        assert row["C"] == min(c for c, a in result.val_accuracy_by_C.items() if a == best)  # chosen on val


def test_raw_features(tmp_path: Path) -> None:
    write_toy_manifest(tmp_path / "toy")
    Image.fromarray(np.full((10, 12), 255, dtype=np.uint8)).save(tmp_path / "white.png")
    assert np.array_equal(image_features(tmp_path / "white.png", size=5), np.ones(25, dtype=np.float32))
    rows = read_manifest(tmp_path / "toy" / "train.jsonl") + [{"id": "no_audio", "label": "left_low"}]
    stats = LogMelStats()
    batched = modality_features(tmp_path / "toy", rows, "audio", audio=stats)  # clips grouped by length
    one_by_one = [stats(load_audio(tmp_path / "toy" / r["audio"], 16000)) for r in rows[:-1]]
    np.testing.assert_allclose(batched[:-1], np.stack(one_by_one), rtol=1e-4, atol=1e-4)
    assert not batched[-1].any()  # a missing modality is zeros
    assert stats(torch.zeros(2, 16000)).shape == (2, 256)


def test_raw_baseline_errors_name_the_line(tmp_path: Path) -> None:
    write_toy_manifest(tmp_path / "toy")
    with (tmp_path / "toy" / "val.jsonl").open("a") as f:
        f.write(json.dumps({"id": "odd", "image": "images/val_left_low_0.png", "label": "unheard"}) + "\n")
    with pytest.raises(ManifestError, match=r"val.jsonl:7: label 'unheard'"):
        run_raw_baseline(tmp_path / "toy", ["image"])
    with pytest.raises(ValueError, match="text"):
        run_raw_baseline(tmp_path / "toy", ["text"])


def test_raw_baseline_script_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_toy_manifest(tmp_path / "toy")
    script = raw_baseline
    out = tmp_path / "res" / "results.json"
    assert script.main([str(tmp_path / "toy"), "--modalities", "image", "--C", "0.1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| image | 784 | 0.100 | 1.000 | 1.000 |" in printed
    summary = json.loads(out.read_text())
    assert [r["modalities"] for r in summary["rows"]] == ["image"] and summary["rows"][0]["test acc"] == 1.0


def test_make_fortunes_builds_a_seeded_text_manifest(tmp_path, capsys):
    """The real-text builder on a fake fortunes folder: length filter, per-class cap, disjoint
    seeded splits that mm reads, and a clear error without the package."""
    script = make_fortunes
    source = tmp_path / "fortunes"
    source.mkdir()
    for topic in fortunes.TOPICS:
        cookies = [f"{topic} cookie number {i} " + "word " * (i % 7) for i in range(30)] + ["one", "x " * 130]
        (source / topic).write_text("\n%\n".join(cookies))
    out = tmp_path / "out"
    assert script.main([str(out), "--source", str(source), "--per-class", "25", "--n-val", "10", "--n-test", "20"]) == 0
    rows = {s: read_manifest(out / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 70, "val": 10, "test": 20}
    texts = [r["text"] for part in rows.values() for r in part]
    assert len(set(texts)) == 100 and all(2 <= len(t.split()) <= 120 for t in texts)  # "one" and the 130-word cut
    assert sorted({r["label"] for r in rows["train"]}) == sorted(fortunes.TOPICS)
    first = (out / "train.jsonl").read_text()
    fortunes.build_fortunes(tmp_path / "again", 25, 10, 20, source=source)
    assert (tmp_path / "again" / "train.jsonl").read_text() == first  # seeded
    assert script.main([str(tmp_path / "none"), "--source", str(tmp_path / "missing")]) == 2
    assert "apt-get install -y fortunes" in capsys.readouterr().err
