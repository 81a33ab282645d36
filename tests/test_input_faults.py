"""Bad input found at the right time, with the right exit code (issue 23, items 7-11 and the also-noticed
ones): runs compared on different examples, a WAV truncated under its header, a picture whose data
is shorter than its header declares, a garbage manifest of 150,000 lines, a 10-hour recording read
for its first seconds. Every fault is real: files written to disk, scripts run as subprocesses."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import validate_data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"scripts/{name}.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def write_split(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------- 8: a WAV truncated under its header


def truncated_wav(path: Path, declared: int = 2_000_000_000, keep: int = 1024) -> int:
    """A real 1 s WAV whose header is then made to declare ``declared`` bytes of data, cut to ``keep``
    bytes on disk (a truncated download); returns the bytes of audio data the file still holds."""
    soundfile.write(path, np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)).astype(np.float32) * 0.5, 16000,
                    subtype="PCM_16")
    data = path.read_bytes()
    at = data.index(b"data")
    data = data[:4] + struct.pack("<I", declared + at) + data[8:at + 4] + struct.pack("<I", declared) + data[at + 8:]
    path.write_bytes(data[:keep])
    return keep - at - 8


@pytest.fixture
def audio_dataset(tmp_path: Path) -> tuple[Path, int]:
    """An audio dataset (2 classes) whose test recording is a WAV truncated under its header."""
    root = tmp_path / "ds"
    root.mkdir()
    for i in range(6):
        soundfile.write(root / f"{i}.wav", np.full(800, 0.1 * (i + 1), dtype=np.float32), 16000, subtype="PCM_16")
    held = truncated_wav(root / "cut.wav")
    write_split(root, "train", [{"audio": f"{i}.wav", "label": "ab"[i % 2]} for i in range(4)])
    write_split(root, "val", [{"audio": "4.wav", "label": "a"}])
    write_split(root, "test", [{"audio": "cut.wav", "label": "b"}, {"audio": "5.wav", "label": "a"}])
    return root, held


def test_a_wav_truncated_under_its_header_is_a_warning_and_under_strict_a_problem(audio_dataset, capsys):
    root, held = audio_dataset
    assert held == 980
    assert soundfile.info(str(root / "cut.wav")).frames == 490  # what soundfile reads: 31 ms of a "2 GB" file
    proc = script("validate_data", str(root))
    assert proc.returncode == 0, proc.stderr
    note = ("truncated file: cut.wav's header declares 2000000000 bytes of audio data, the file holds 980 "
            "(0.031 s of audio read)")
    assert f"  {note} (1):\n    {root / 'test.jsonl'}:1: audio cut.wav" in proc.stdout
    assert validate_data.main([str(root), "--strict"]) == 1
    assert f"1 problem(s):\n  {root / 'test.jsonl'}:1: {note}: audio cut.wav\n" in capsys.readouterr().out


def test_a_picture_whose_data_is_shorter_than_its_header_declares_is_a_problem(tmp_path, capsys):
    """PNG and BMP headers declare 64 x 64 pixels; the files hold half of their data. Both are problems
    naming the file (PIL refuses them: "image file is truncated"), and exit 1."""
    root = tmp_path / "pics"
    root.mkdir()
    picture = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for fmt in ("png", "bmp"):
        Image.fromarray(picture).save(root / f"whole.{fmt}")
        data = (root / f"whole.{fmt}").read_bytes()
        (root / f"half.{fmt}").write_bytes(data[: len(data) // 2])
        with Image.open(root / f"half.{fmt}") as img:
            assert img.size == (64, 64)  # what the header still declares
    write_split(root, "train", [{"image": "whole.png", "label": "a"}, {"image": "whole.bmp", "label": "b"}])
    write_split(root, "val", [{"image": "whole.png", "label": "a"}])
    write_split(root, "test", [{"image": "half.png", "label": "a"}, {"image": "half.bmp", "label": "b"}])
    assert validate_data.main([str(root)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s):" in out
    for line, fmt in ((1, "png"), (2, "bmp")):
        assert f"{root / 'test.jsonl'}:{line}: image file {root / f'half.{fmt}'} cannot be decoded as an image: " \
               "image file is truncated" in out


# ---------------------------------------------------------------- a garbage manifest: problems capped


def garbage_manifest(root: Path) -> Path:
    root.mkdir()
    (root / "train.jsonl").write_text("not json at all\n" * 150_000)
    write_split(root, "val", [{"text": "a", "label": "x"}])
    write_split(root, "test", [{"text": "b", "label": "y"}])
    return root


def test_a_garbage_manifest_of_150000_lines_lists_50_problems_and_counts_the_rest(tmp_path, capsys):
    root = garbage_manifest(tmp_path / "garbage")
    assert validate_data.main([str(root), "--modalities", "text"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "150000 problem(s):"  # every garbage line
    assert lines[2] == f"  {root / 'train.jsonl'}:1: invalid JSON: Expecting value"
    assert lines[51:53] == [f"  {root / 'train.jsonl'}:50: invalid JSON: Expecting value",
                            "  ... and 149950 more (150000 in all)"]
    assert len(lines) < 60


@pytest.mark.slow
def test_training_on_a_garbage_manifest_exits_2_with_the_capped_list(tmp_path):
    root = garbage_manifest(tmp_path / "garbage")
    train = script("train", f"data.dataset={root}", "data.modalities=[text]", "encoders.text.source=tiny-bert",
                   "wandb.mode=disabled", f"--out-dir={tmp_path / 'runs'}")
    assert train.returncode == 2, train.stderr[-2000:]
    assert train.stderr.startswith(f"error: 150000 problem(s) in the dataset {root}")
    assert train.stderr.endswith("\n  ... and 149950 more (150000 in all)\n")
    assert len(train.stderr.splitlines()) == 52


# ---------------------------------------------------------------- a 10-hour recording


MEASURE = textwrap.dedent("""
    import resource, sys, time
    from pathlib import Path
    from mm.data.media import decode_audio, read_audio
    path, what = Path(sys.argv[1]), sys.argv[2]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if what == "encoder":  # what an encoder keeps: 10 s at 16 kHz, resampled from the file's 8 kHz
        print(tuple(read_audio(path, 16000, 160000).shape))
    else:  # scripts/validate_data.py: the whole file decoded, block by block
        print(decode_audio(path))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(grown // 1024, round(time.perf_counter() - t, 1))
""")


@pytest.mark.slow
def test_a_ten_hour_wav_costs_the_memory_of_what_the_encoder_keeps(tmp_path):
    """A real 10-hour WAV (8 kHz, 8-bit: 288 MB on disk; decoded whole as float32 it would be 1.15 GB,
    2.3 GB resampled to 16 kHz). The encoder's read takes its first 10 s; the validator decodes it
    all in blocks. Peak resident memory of each, measured in a fresh process, grows by under 64 MB."""
    path = tmp_path / "ten_hours.wav"
    rate, hours = 8000, 10
    tone = (np.sin(np.arange(rate * 60) * 2 * np.pi * 440 / rate) * 0.5).astype(np.float32)[:, None]  # 1 min
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_U8") as f:
        for _ in range(hours * 60):
            f.write(tone)
    assert path.stat().st_size == rate * 3600 * hours + 44
    encoder = subprocess.run([sys.executable, "-c", MEASURE, str(path), "encoder"], capture_output=True, text=True,
                             timeout=300, check=True).stdout.split("\n")
    assert encoder[0] == "(160000,)"
    assert int(encoder[1].split()[0]) < 64, encoder  # MB the peak grew by
    whole = subprocess.run([sys.executable, "-c", MEASURE, str(path), "validate"], capture_output=True, text=True,
                           timeout=600, check=True).stdout.split("\n")
    assert whole[0] == "[]"  # decoded to the end, nothing to note
    assert int(whole[1].split()[0]) < 64, whole
    path.unlink()


def test_reading_the_kept_frames_gives_the_samples_a_whole_read_gives(tmp_path):
    """The frame range read plus its resampling margin: the kept samples equal those of the whole
    file read and resampled, bitwise (at the encoder's rate, and resampled from 44.1 kHz)."""
    from mm.data.audio_io import load_audio

    rng = np.random.default_rng(0)
    for rate in (16000, 44100):
        path = tmp_path / f"{rate}.wav"
        soundfile.write(path, rng.uniform(-0.5, 0.5, rate * 30).astype(np.float32), rate, subtype="FLOAT")
        whole = load_audio(path, 16000)
        kept = load_audio(path, 16000, max_samples=16000 * 10)
        assert kept.shape == (160000,) and whole.shape == (480000,)
        assert bool((kept == whole[:160000]).all()), rate
    whole = load_audio(tmp_path / "16000.wav", 16000)
    short = load_audio(tmp_path / "16000.wav", 16000, max_samples=16000 * 60)  # a clip shorter than the crop
    assert short.shape == (480000,) and bool((short == whole).all())


# ---------------------------------------------------------------- 7: compare on different examples


def text_folder(root: Path, texts: list[str]) -> Path:
    labels = ["pos", "neg"] * (len(texts) // 2)
    rows = [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)]
    write_split(root, "train", rows)
    write_split(root, "val", rows[:4])
    write_split(root, "test", rows)
    return root


@pytest.mark.slow
def test_compare_refuses_runs_tested_on_different_examples(tmp_path):
    """Two folders with the same count and label order but other texts: exit 2, the first differing
    example named. The same folder moved elsewhere (another seed) pairs as before: exit 0."""
    import mm.train as mm_train
    from mm.config import load_config

    words = ["red", "green", "blue", "cyan", "gold", "pink", "teal", "grey"]
    a = text_folder(tmp_path / "a", [f"a {w} thing" for w in words])
    b = text_folder(tmp_path / "b", [f"a {w} thing" for w in words[:5]] + ["other", "texts", "here"])
    moved = Path(shutil.copytree(a, tmp_path / "elsewhere" / "a"))
    common = ["data.modalities=[text]", "encoders.text.source=tiny-bert", "train.max_steps=1", "train.batch_size=4",
              "wandb.mode=disabled"]
    opts = mm_train.RunOptions(out_dir=str(tmp_path / "runs"), progress=False, plots=False)
    runs = {}
    for name, folder, seed in (("a", a, 0), ("b", b, 0), ("moved", moved, 1)):
        runs[name] = mm_train.train(load_config(None, [*common, f"data.dataset={folder}", f"name={name}",
                                                      f"seed={seed}"]), opts)["run_dir"]
    refused = script("compare", runs["a"], runs["b"], "--resamples", "50")
    assert refused.returncode == 2, refused.stdout
    assert refused.stderr == ("error: not tested on the same examples: B run 0 differs from A run 0: test example 5 "
                              "('test.jsonl:6') is not the same example: its content differs (fingerprints "
                              f"{fingerprint(a, 5)} vs {fingerprint(b, 5)})\n")
    same = script("compare", runs["a"], runs["moved"], "--resamples", "50")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout.splitlines()[-1])["n"] == 8


def fingerprint(folder: Path, i: int) -> str:
    from mm.analysis.fingerprints import example_fingerprint
    from mm.data.manifest import read_manifest

    return example_fingerprint(read_manifest(folder / "test.jsonl")[i], folder)


# ---------------------------------------------------------------- 9-11: refused at config time, exit 2


def test_metric_device_and_name_faults_are_refused_at_config_time_with_exit_2(tmp_path):
    """``train.metric=foo`` (it trained an epoch, then a KeyError and exit 1), ``train.device=cuda`` on a
    machine without CUDA (torch's driver traceback after set-up) and a 300-character run name
    (``OSError: File name too long`` after set-up): three real ``scripts/train.py`` processes, each
    refused by ``load_config`` with exit 2 and a message that says what is allowed; nothing written."""
    import torch

    train = str(ROOT / "scripts" / "train.py")
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cases = {
        "metric": ["train.metric=foo"],
        "device": [f"train.device=cuda:{devices}"],  # one past the last: on this machine, any CUDA device
        "name": ["name=" + "x" * 300],
    }
    procs = {k: subprocess.Popen([sys.executable, train, *args, "wandb.mode=disabled"], cwd=tmp_path, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k, args in cases.items()}
    done = {k: (p.wait(timeout=300), *p.communicate()) for k, p in procs.items()}
    assert {k: code for k, (code, _, _) in done.items()} == {"metric": 2, "device": 2, "name": 2}
    assert done["metric"][2] == ("error: invalid value for 'train.metric': 'foo'; head.name=classification reports "
                                 "['loss', 'accuracy', 'macro_f1', 'top5_accuracy']\n")
    exist = ["auto", "cpu", *(["cuda", *(f"cuda:{i}" for i in range(devices))] if devices else [])]
    why = f"this machine has {devices} CUDA device(s)" if devices else "this machine has no CUDA device"
    assert done["device"][2] == (f"error: invalid value for 'train.device': 'cuda:{devices}'; {why}; "
                                 f"devices that exist: {exist}\n")
    assert done["name"][2].startswith("error: invalid value for 'name': 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... "
                                      "is 300 bytes; allowed: at most 251 bytes (the file system of ")
    assert not any(tmp_path.iterdir())  # no run folder, no cache, nothing


def test_every_head_reports_the_metric_names_it_declares():
    """``metric_names`` (what ``train.metric`` is checked against) is what ``metrics`` really returns."""
    import torch

    from mm.config import load_config
    from mm.heads import build_head

    torch.manual_seed(0)
    for name, classes, labels, metric in (
            ("classification", 8, torch.randint(0, 8, (6,)), "accuracy"),
            ("multilabel", 3, torch.randint(0, 2, (6, 3)).float(), "accuracy"),
            ("regression", 1, torch.randn(6), "mae"),
            ("token", 3, torch.randint(0, 3, (6, 4)), "accuracy")):
        cfg = load_config(None, [f"head.name={name}", f"train.metric={metric}", "head.top_k=[2,5]"])
        head = build_head(name, 4, classes, classes=["O", "B-X", "I-X"] if name == "token" else None, top_k=[2, 5])
        shape = {"regression": (6,), "token": (6, 4, 3)}.get(name, (6, classes))
        reported = head.metrics([torch.randn(*shape)], [labels])
        assert sorted(reported) == sorted(type(head).metric_names(cfg.head)), name


def test_a_range_error_is_refused_before_torch_is_imported(tmp_path):
    """``python scripts/train.py optim.lr=-1`` answers before any implementation is imported (it took
    tens of seconds on a busy machine: the registries import torch and every backbone library)."""
    probe = textwrap.dedent("""
        import sys
        from mm.config import ConfigError, load_config
        for overrides in (["optim.lr=-1"], ["fusion.modality_dropout=1.5"], ["train.epochs=0", "fusion.name=concat"]):
            try:
                load_config(None, overrides)
            except ConfigError as err:
                print(err)
        print(sorted(m for m in ("torch", "transformers", "timm", "sklearn") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines() == ["invalid value for 'optim.lr': -1.0; allowed: > 0",
                                       "invalid value for 'fusion.modality_dropout': 1.5; allowed: [0, 1)",
                                       "invalid value for 'train.epochs': 0; allowed: >= 1", "[]"]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "optim.lr=-1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (2, "error: invalid value for 'optim.lr': -1.0; allowed: > 0\n")
