"""Bad data found before training, named by file and line (issue 12, cases 3, 6 and 7): paths that
escape the dataset folder, undecodable files, wrong types, nonsense labels and modalities,
``scripts/validate_data.py`` and ``data.on_error: skip``."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import validate_data
from PIL import Image
from torch.utils.data import DataLoader

from mm.config import DataConfig
from mm.data import build_splits
from mm.data.collate import Collator
from mm.data.manifest import ManifestDataset, ManifestError, read_manifest
from mm.data.media import read_image
from mm.data.validate import Issue, check_dataset, validate_dir
from mm.encoders import build_encoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_enc():
    return build_encoder("image", source="tiny-cnn", input_size=32)


@pytest.fixture(scope="module")
def audio_enc():
    return build_encoder("audio", "spectrogram", source="tiny-cnn", max_s=0.5)


@pytest.fixture(scope="module")
def text_enc():
    return build_encoder("text", source="tiny-bert")


def write_split(root: Path, split: str, rows: list[dict]) -> Path:
    path = root / f"{split}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def picture(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def tone(path: Path, rate: int = 16000, channels: int = 1, seconds: float = 0.25) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(path, np.stack([wave] * channels, 1) if channels > 1 else wave, rate)
    return path


def truncated(path: Path) -> Path:
    data = picture(path, seed=1).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --- case 3: paths that escape the dataset folder -------------------------------------------------


def test_escaping_paths_are_refused_naming_file_line_and_path_unless_allowed(tmp_path, image_enc):
    root = tmp_path / "ds"
    outside = picture(tmp_path / "outside" / "x.png")
    picture(root / "in.png", seed=5)
    rows = [{"image": "in.png", "label": "a"}, {"image": "../outside/x.png", "label": "b"},
            {"image": str(outside), "label": "a"}, {"image": "sub/../../outside/x.png", "label": "b"},
            {"image": "../../../../../../../../../../etc/passwd", "label": "a"}]
    manifest = write_split(root, "train", rows)
    with pytest.raises(ManifestError) as err:
        ManifestDataset(root, "train", {"image": image_enc}, "label", ["a", "b"], allow_outside_paths=False)
    folder = root.resolve()
    assert str(err.value).splitlines() == [
        f"{manifest}:2: image path '../outside/x.png' leaves the dataset folder {folder} (it resolves to "
        f"{outside.resolve()}); data.allow_outside_paths=true allows it",
        f"{manifest}:3: image path '{outside}' leaves the dataset folder {folder} (it resolves to "
        f"{outside.resolve()}); data.allow_outside_paths=true allows it",
        f"{manifest}:4: image path 'sub/../../outside/x.png' leaves the dataset folder {folder} (it resolves to "
        f"{outside.resolve()}); data.allow_outside_paths=true allows it",
        f"{manifest}:5: image path '../../../../../../../../../../etc/passwd' leaves the dataset folder {folder} "
        "(it resolves to /etc/passwd); data.allow_outside_paths=true allows it",
    ]
    allowed = ManifestDataset(root, "train", {"image": image_enc}, "label", ["a", "b"],
                              rows=read_manifest(manifest)[:4], allow_outside_paths=True)
    assert torch.equal(allowed[1]["image"], image_enc.load(str(outside), tmp_path))
    assert torch.equal(allowed[1]["image"], allowed[3]["image"]) and not torch.equal(allowed[0]["image"],
                                                                                    allowed[1]["image"])


def test_build_splits_follows_data_allow_outside_paths(tmp_path, image_enc):
    root = tmp_path / "ds"
    picture(tmp_path / "outside" / "x.png")
    picture(root / "in.png")
    for split in ("train", "val", "test"):
        write_split(root, split, [{"image": "in.png", "label": "a"}, {"image": "../outside/x.png", "label": "b"}])
    cfg = DataConfig(dataset=str(root), modalities=["image"])
    with pytest.raises(ManifestError, match=r"train\.jsonl:2: image path '\.\./outside/x\.png' leaves the dataset"):
        build_splits(cfg, {"image": image_enc})
    cfg.allow_outside_paths = True
    splits, classes = build_splits(cfg, {"image": image_enc})
    assert classes == ["a", "b"] and [len(s) for s in splits.values()] == [2, 2, 2]


def test_a_linked_dataset_folder_works_and_a_link_out_of_it_counts_as_outside(tmp_path, image_enc):
    real = tmp_path / "real"
    picture(real / "a.png")
    store = picture(tmp_path / "store" / "b.png", seed=2)
    (real / "c.png").symlink_to(real / "a.png")  # a link that stays inside
    (real / "b.png").symlink_to(store)  # a link out of the folder
    link = tmp_path / "link"
    link.symlink_to(real)
    write_split(real, "train", [{"image": "a.png", "label": "x"}, {"image": "c.png", "label": "x"}])
    ds = ManifestDataset(link, "train", {"image": image_enc}, "label", ["x"], allow_outside_paths=False)
    assert torch.equal(ds[0]["image"], ds[1]["image"])
    write_split(real, "val", [{"image": "b.png", "label": "x"}])
    with pytest.raises(ManifestError) as err:
        ManifestDataset(link, "val", {"image": image_enc}, "label", ["x"], allow_outside_paths=False)
    assert str(err.value) == (f"{link / 'val.jsonl'}:1: image path 'b.png' leaves the dataset folder {real} "
                              f"(it resolves to {store}); data.allow_outside_paths=true allows it")
    allowed = ManifestDataset(link, "val", {"image": image_enc}, "label", ["x"], allow_outside_paths=True)
    assert torch.equal(allowed[0]["image"], image_enc.load("b.png", store.parent))


# --- case 6: bad data named by file and line ------------------------------------------------------


def test_a_16_bit_gradient_keeps_its_gradient(tmp_path, image_enc):
    levels = np.arange(256, dtype=np.uint16) * 257  # 0, 257, ..., 65535
    Image.fromarray(np.tile(levels, (4, 1))).save(tmp_path / "g16.png")
    Image.fromarray(np.tile(levels.astype(np.int32), (4, 1))).save(tmp_path / "g32.tif")  # mode I
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1))).save(tmp_path / "g8.png")
    with Image.open(tmp_path / "g16.png") as img, Image.open(tmp_path / "g32.tif") as tif:
        assert (img.mode, tif.mode) == ("I;16", "I")
        assert (np.asarray(img.convert("RGB")) == 255).mean() > 0.99  # what convert("RGB") alone did
    for name in ("g16.png", "g32.tif"):
        rgb = np.asarray(read_image(tmp_path / name))
        assert rgb.dtype == np.uint8 and rgb.shape == (4, 256, 3)
        assert np.array_equal(rgb[..., 0], np.tile(np.arange(256), (4, 1))) and (rgb == rgb[..., :1]).all()
    assert torch.equal(image_enc.load("g16.png", tmp_path), image_enc.load("g8.png", tmp_path))


def test_a_palette_image_with_transparency_becomes_rgb_on_black(tmp_path):
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    for x in range(3):
        pal.putpixel((x, 0), x)
    pal.save(tmp_path / "p.png", transparency=0)  # index 0 (red) is transparent
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when such an image is converted to RGB directly
        rgb = np.asarray(read_image(tmp_path / "p.png"))
    assert rgb.tolist() == [[[0, 0, 0], [0, 255, 0], [0, 0, 255]]]


def test_a_truncated_png_and_a_non_image_name_file_line_and_path(tmp_path, image_enc):
    picture(tmp_path / "good.png")
    truncated(tmp_path / "cut.png")
    (tmp_path / "notes.png").write_text("not a picture")
    manifest = write_split(tmp_path, "train", [{"image": n, "label": "a"} for n in ("good.png", "cut.png", "notes.png")])
    ds = ManifestDataset(tmp_path, "train", {"image": image_enc}, "label", ["a"])
    assert ds[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ManifestError) as err:
        ds[1]
    assert str(err.value) == (f"{manifest}:2: image file {tmp_path / 'cut.png'} cannot be decoded as an image: "
                              "image file is truncated")
    with pytest.raises(ManifestError) as err:
        ds[2]
    assert str(err.value) == (f"{manifest}:3: image file {tmp_path / 'notes.png'} cannot be decoded as an image: "
                              f"cannot identify image file '{tmp_path / 'notes.png'}'")


def test_non_utf8_and_bad_json_lines_are_all_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "a"}\n'
                     b'\n{"text": broken}\n[1, 2]\n')
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(err.value).splitlines() == [f"{path}:2: not UTF-8: byte 0xe9 at column 14",
                                           f"{path}:4: invalid JSON: Expecting value",
                                           f"{path}:5: expected a JSON object, got list"]


def test_values_of_the_wrong_type_name_file_and_line(tmp_path, image_enc, text_enc):
    manifest = write_split(tmp_path, "train", [{"image": 123, "label": "a"}, {"image": ["a.png"], "label": "a"},
                                               {"image": "", "label": "a"}])
    with pytest.raises(ManifestError) as err:
        ManifestDataset(tmp_path, "train", {"image": image_enc}, "label", ["a"])
    assert str(err.value).splitlines() == [
        f"{manifest}:1: image value 123 is not a file path (a non-empty string) but int",
        f"{manifest}:2: image value ['a.png'] is not a file path (a non-empty string) but list",
        f"{manifest}:3: image value '' is not a file path (a non-empty string) but str",
    ]
    manifest = write_split(tmp_path, "val", [{"text": "fine", "label": "a"}, {"text": 5, "label": "a"}])
    ds = ManifestDataset(tmp_path, "val", {"text": text_enc}, "label", ["a"])
    assert ds[0]["text"] == "fine"
    with pytest.raises(ManifestError) as err:
        ds[1]
    assert str(err.value) == f"{manifest}:2: text value 5 is not a text (a string) but int"


def test_unreadable_audio_names_file_line_and_reason(tmp_path, audio_enc):
    (tmp_path / "noise.wav").write_bytes(b"RIFF1234WAVEgarbage")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan, 0.2], dtype=np.float32), 16000, subtype="FLOAT")
    tone(tmp_path / "odd.wav", rate=7000, channels=3)
    names = ("noise.wav", "empty.wav", "nan.wav", "odd.wav")
    manifest = write_split(tmp_path, "train", [{"audio": n, "label": "a"} for n in names])
    ds = ManifestDataset(tmp_path, "train", {"audio": audio_enc}, "label", ["a"])
    messages = []
    for i in range(3):
        with pytest.raises(ManifestError) as err:
            ds[i]
        messages.append(str(err.value))
    assert messages == [
        f"{manifest}:1: audio file {tmp_path / 'noise.wav'} cannot be decoded as audio: "
        "Error in WAV file. No 'data' chunk marker.",
        f"{manifest}:2: audio file {tmp_path / 'empty.wav'} cannot be decoded as audio: "
        f"audio file {tmp_path / 'empty.wav'} has no samples",
        f"{manifest}:3: audio file {tmp_path / 'nan.wav'} holds NaN or infinite samples",
    ]
    # 7 kHz, three channels: averaged to mono and resampled to the encoder's 16 kHz (0.25 s, 10 ms hop)
    assert ds[3]["audio"].shape == (64, 26)
    torch.testing.assert_close(ds[3]["audio"], audio_enc.load(str(tone(tmp_path / "mono.wav", rate=7000)), tmp_path))


# --- case 7: silently accepted nonsense, now problems before training ----------------------------


def nonsense_dataset(root: Path) -> None:
    write_split(root, "train", [{"text": "a red cat", "label": "cat"}, {"label": "cat"},
                                {"text": "a dog", "label": 7}])
    write_split(root, "val", [{"text": "a cat", "label": "cat"}])
    write_split(root, "test", [{"text": "a dog", "label": "dog"}])


def test_nonsense_rows_labels_and_modalities_are_problems(tmp_path):
    nonsense_dataset(tmp_path)
    report = validate_dir(tmp_path, ["text", "audio"], deep=False)
    expected = [
        f"{tmp_path}/train.jsonl:2: no value for any of the modalities ['text', 'audio']",
        f"{tmp_path}: modality 'audio' is requested but no row of train/val/test has a value for it",
        f"{tmp_path}/train.jsonl:3: label 7 at 'label' is a number among string labels (it would be a class of its own)",
        f"{tmp_path}/train.jsonl: the training split has a single class 'cat': nothing to learn",
        f"{tmp_path}/test.jsonl:1: label 'dog' is not one of the 1 training classes",
    ]
    assert [str(p) for p in report.problems] == expected and not report.ok
    assert [str(w) for w in report.warnings] == [f"{tmp_path}/test.jsonl:1: same text as {tmp_path}/train.jsonl:3"]
    with pytest.raises(ManifestError) as err:
        check_dataset(DataConfig(dataset=str(tmp_path), modalities=["text", "audio"]))
    assert str(err.value).splitlines() == [
        f"5 problem(s) in the dataset {tmp_path} (python scripts/validate_data.py {tmp_path} checks it):",
        *(f"  {line}" for line in expected)]


def test_other_heads_check_their_labels_row_by_row(tmp_path):
    write_split(tmp_path, "train", [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": "x"},
                                    {"text": "c", "label": ["y"]}])
    write_split(tmp_path, "val", [{"text": "d", "label": ["z"]}])
    write_split(tmp_path, "test", [{"text": "e", "label": []}])
    report = validate_dir(tmp_path, ["text"], head="multilabel", deep=False)
    assert [str(p) for p in report.problems] == [
        f"{tmp_path}/train.jsonl:2: multilabel label at 'label' must be a list, got 'x'",
        f"{tmp_path}/val.jsonl:1: labels ['z'] at 'label' are not among the training classes",
    ]


def test_deep_validation_warns_about_conversions_duplicates_leaks_and_rare_classes(tmp_path):
    Image.fromarray(np.tile(np.arange(0, 65536, 4096, dtype=np.uint16), (4, 1))).save(tmp_path / "g16.png")
    Image.new("P", (4, 4)).save(tmp_path / "pal.png")
    picture(tmp_path / "a.png")
    picture(tmp_path / "copy.png")  # the same bytes as a.png under another name
    tone(tmp_path / "odd.wav", rate=7000, channels=2)
    tone(tmp_path / "ok.wav")
    write_split(tmp_path, "train", [
        {"id": 1, "image": "g16.png", "audio": "odd.wav", "label": "x"},
        {"id": 2, "image": "pal.png", "audio": "ok.wav", "label": "x"},
        {"id": 2, "image": "a.png", "audio": "ok.wav", "label": "y"},
    ])
    write_split(tmp_path, "val", [{"id": 3, "image": "copy.png", "audio": "ok.wav", "label": "x"}])
    write_split(tmp_path, "test", [{"id": 4, "image": "pal.png", "label": "x"}])
    report = validate_dir(tmp_path)
    assert report.ok and report.modalities == ["image", "audio"]
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    assert report.warnings == [
        Issue(f"{train}:1", "image g16.png", "I;16 image: grey levels scaled from 16 to 8 bits"),
        Issue(f"{train}:1", "audio odd.wav", "unusual sample rate 7000 Hz: resampled to the encoder's rate"),
        Issue(f"{train}:1", "audio odd.wav", "2 channels: averaged to mono"),
        Issue(f"{train}:2", "image pal.png", "palette image: converted to RGB"),
        Issue(f"{tmp_path}/test.jsonl:1", "image pal.png", "palette image: converted to RGB"),
        Issue(f"{train}:3", "class 'y' has 1 training sample", "class with fewer than 2 training samples"),
        Issue(f"{train}:3", f"same id 2 as {train}:2", "duplicate rows in train"),
        Issue(f"{val}:1", f"same image/audio as {train}:3", "val rows also in train"),
    ]
    assert "  val rows also in train (1):" in report.format().splitlines()
    cheap = validate_dir(tmp_path, deep=False)  # paths, not contents: copy.png is not a.png
    assert cheap.ok and [w.kind for w in cheap.warnings] == ["class with fewer than 2 training samples",
                                                             "duplicate rows in train"]


def run_validator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/validate_data.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_validate_data_script_reports_every_problem_at_once_and_exits_1(tmp_path):
    root = tmp_path / "ds"
    picture(root / "a.png")
    picture(root / "b.png", seed=3)
    truncated(root / "cut.png")
    picture(tmp_path / "x.png")
    tone(root / "a.wav")
    (root / "bad.wav").write_bytes(b"RIFF1234WAVEgarbage")
    train = write_split(root, "train", [
        {"text": "one", "image": "a.png", "audio": "a.wav", "label": "p"},
        {"text": "two", "image": "cut.png", "label": "q"},
        {"text": "three", "image": "../x.png", "label": "p"},
        {"text": "four", "image": 123, "audio": "bad.wav", "label": "q"},
        {"text": "five", "image": "gone.png", "label": 3},
    ])
    with train.open("ab") as f:
        f.write(b'{"text": "\xff", "label": "p"}\n')
    write_split(root, "val", [{"text": "six", "image": "b.png", "label": "p"}])
    write_split(root, "test", [{"text": "seven", "audio": "a.wav", "label": "q"}])
    result = run_validator(str(root), "--modalities", "text,image,audio")
    assert result.returncode == 1, result.stderr
    folder = root.resolve()
    problems = [line.strip() for line in result.stdout.splitlines() if line.startswith(f"  {root}")]
    assert problems == [
        f"{train}:6: not UTF-8: byte 0xff at column 11",
        f"{train}:2: image file {folder / 'cut.png'} cannot be decoded as an image: image file is truncated",
        f"{train}:3: image path '../x.png' leaves the dataset folder {folder} (it resolves to "
        f"{tmp_path.resolve() / 'x.png'}); data.allow_outside_paths=true allows it",
        f"{train}:4: image value 123 is not a file path (a non-empty string) but int",
        f"{train}:4: audio file {folder / 'bad.wav'} cannot be decoded as audio: "
        "Error in WAV file. No 'data' chunk marker.",
        f"{train}:5: image file not found: {folder / 'gone.png'}",
        f"{train}:5: label 3 at 'label' is a number among string labels (it would be a class of its own)",
    ]
    assert "7 problem(s):" in result.stdout.splitlines()


def test_validate_data_script_exits_0_on_a_clean_dataset_and_2_on_a_bad_argument(tmp_path):
    for i in range(4):
        picture(tmp_path / f"{i}.png", seed=i)
    write_split(tmp_path, "train", [{"image": "0.png", "label": "p"}, {"image": "1.png", "label": "q"}])
    write_split(tmp_path, "val", [{"image": "2.png", "label": "p"}])
    write_split(tmp_path, "test", [{"image": "3.png", "label": "q"}])
    clean = run_validator(str(tmp_path))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.splitlines()[1:] == ["0 problem(s)", "2 warning(s):",
                                            "  class with fewer than 2 training samples (2):",
                                            f"    {tmp_path}/train.jsonl:1: class 'p' has 1 training sample",
                                            f"    {tmp_path}/train.jsonl:2: class 'q' has 1 training sample"]
    script = validate_data
    for bad in ([str(tmp_path / "nowhere")], [str(tmp_path), "--modalities", "image,,text"],
                [str(tmp_path), "--head", "nonsense"]):
        with pytest.raises(SystemExit) as exit_:
            script.main(bad)
        assert exit_.value.code == 2


# --- data.on_error: skip ---------------------------------------------------------------------------


def skip_dataset(root: Path) -> Path:
    for name in ("a", "b", "c"):
        picture(root / f"{name}.png", seed=ord(name))
    truncated(root / "cut.png")
    rows = [{"image": f"{n}.png", "label": lab} for n, lab in
            (("a", "x"), ("b", "y"), ("cut", "x"), ("gone", "y"), ("c", "x"))]
    for split in ("train", "val", "test"):
        manifest = write_split(root, split, rows)
    return manifest.with_name("train.jsonl")


def test_on_error_skip_leaves_bad_samples_out_deterministically(tmp_path, image_enc):
    train = skip_dataset(tmp_path)
    with pytest.raises(ManifestError, match=r"train\.jsonl:4: image file not found"):
        ManifestDataset(tmp_path, "train", {"image": image_enc}, "label", ["x", "y"])  # on_error=raise
    runs = []
    for _ in range(2):
        ds = ManifestDataset(tmp_path, "train", {"image": image_enc}, "label", ["x", "y"], on_error="skip",
                             max_bad_fraction=0.4)
        assert [r["_where"] for r in ds.rows] == [f"{train}:1", f"{train}:2", f"{train}:5"]
        assert ds.labels == [0, 1, 0]
        assert ds.bad == [f"{train}:3: image file {tmp_path / 'cut.png'} cannot be decoded as an image: "
                          "image file is truncated",
                          f"{train}:4: image file not found: {tmp_path / 'gone.png'}"]
        loader = DataLoader(ds, batch_size=2, collate_fn=Collator(["image"], {"image": image_enc}))
        runs.append([(b["index"].tolist(), b["label"].tolist(), b["image"]["pixel_values"]) for b in loader])
    assert [r[:2] for r in runs[0]] == [([0, 1], [0, 1]), ([2], [0])]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(*runs, strict=True))
    with pytest.raises(ManifestError) as err:
        ManifestDataset(tmp_path, "train", {"image": image_enc}, "label", ["x", "y"], on_error="skip",
                        max_bad_fraction=0.39)
    assert str(err.value).splitlines()[0] == ("train: 2 of 5 samples cannot be read, more than "
                                              "data.max_bad_fraction=0.39:")


def test_on_error_skip_from_the_config_and_the_cheap_check(tmp_path, image_enc):
    skip_dataset(tmp_path)
    cfg = DataConfig(dataset=str(tmp_path), modalities=["image"], on_error="skip", max_bad_fraction=0.4)
    splits, _ = build_splits(cfg, {"image": image_enc})
    assert {s: (len(d), len(d.bad)) for s, d in splits.items()} == {"train": (3, 2), "val": (3, 2), "test": (3, 2)}
    report = check_dataset(cfg)  # the cheap check sees the missing file only, tolerated under skip
    assert report.ok and [(w.kind, w.where) for w in report.warnings if w.kind.startswith("skipped")] == [
        ("skipped (data.on_error=skip)", f"{tmp_path}/{s}.jsonl:4") for s in ("train", "val", "test")]
    cfg.on_error = "raise"
    with pytest.raises(ManifestError, match=r"3 problem\(s\) in the dataset"):
        check_dataset(cfg)
    cfg.on_error, cfg.max_bad_fraction = "skip", 0.1
    with pytest.raises(ManifestError, match=r"train\.jsonl:4: image file not found"):
        check_dataset(cfg)
