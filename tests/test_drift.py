"""mm.serve.drift and scripts/drift.py: MMD permutation tests against known answers, then a real tiny
run checked against data with and without a planted shift (pictures inverted, one class only)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from drift import main as drift_main
from PIL import Image

from mm.config import load_config
from mm.data import resolve_dataset
from mm.data.manifest import read_split
from mm.serve.drift import mmd_permutation_test

TINY = ["encoders.text.source=tiny-bert", "encoders.image.source=tiny-vit", "data.task=color_animal",
        "data.modalities=[text,image]", "data.synthetic.n_train=64", "data.synthetic.n_val=96",
        "data.synthetic.n_test=96", "train.batch_size=16", "train.max_steps=2", "wandb.mode=disabled"]


def naive_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    def k(a, b):
        return float(torch.exp(-((a - b) ** 2).sum() / (2 * bandwidth**2)))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_statistic_equals_the_textbook_sum_and_p_values_behave():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, generator=gen), torch.randn(15, 3, generator=gen) + 1.5
    stat, p, bw = mmd_permutation_test(x, y, permutations=200)
    assert stat == pytest.approx(naive_mmd2(x.double(), y.double(), bw), rel=1e-9)
    assert p == pytest.approx(1 / 201)  # no shuffle beats a 1.5-sigma shift
    same = mmd_permutation_test(x, torch.randn(15, 3, generator=gen), permutations=200)
    assert same[1] > 0.05
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd_permutation_test(x, y[:1])


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, tiny_vit: Path):
    import mm.train as mm_train

    out = tmp_path_factory.mktemp("drift")
    cfg = load_config(None, [*TINY, "name=base"])
    results = mm_train.train(cfg, mm_train.RunOptions(out_dir=str(out), progress=False))
    root, _ = resolve_dataset(cfg.data)
    return Path(results["run_dir"]), root, out


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "new.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in rows))
    return path


def run_drift(*argv: str) -> dict:
    assert drift_main([str(a) for a in argv]) == 0
    return json.loads((Path(argv[argv.index("--out") + 1]) / "drift.json").read_text())


def test_held_out_data_of_the_same_distribution_is_not_drift(run_and_data, tmp_path: Path):
    run_dir, root, _ = run_and_data
    report = run_drift(run_dir, root, "--split", "test", "--permutations", "300", "--out", tmp_path)
    assert [m["modality"] for m in report["modalities"]] == ["image", "text"]
    assert all(m["n_reference"] == 96 and m["n_new"] == 96 for m in report["modalities"])
    # Each of the 3 tests runs at 0.05 / 3 (Bonferroni); none rejects there, so the verdict is "no drift".
    assert all(m["p_value"] > 0.05 / 3 for m in report["modalities"]), report
    assert report["labels"]["p_value"] > 0.05 and report["labels"]["unseen"] == []
    assert report["retrain"] is False and report["verdict"].startswith("no drift detected")


def test_darkened_pictures_and_one_class_are_drift(run_and_data, tmp_path: Path):
    run_dir, root, _ = run_and_data
    rows = read_split(root, "test")
    for i, row in enumerate(rows):  # plant the shift: every picture at 30 % of its brightness (a dim camera)
        (tmp_path / "img").mkdir(exist_ok=True)
        with Image.open(root / row["image"]) as img:
            dark = (np.asarray(img.convert("RGB"), dtype=np.float32) * 0.3).astype(np.uint8)
            Image.fromarray(dark).save(tmp_path / "img" / f"{i}.png")
        row["image"] = f"img/{i}.png"
    report = run_drift(run_dir, write_manifest(tmp_path, rows), "--permutations", "300", "--out", tmp_path / "o")
    by = {m["modality"]: m for m in report["modalities"]}
    assert by["image"]["p_value"] == pytest.approx(1 / 301) and by["text"]["p_value"] > 0.05 / 3
    assert report["retrain"] is True and "image (p = 0.0033)" in report["verdict"]

    label = rows[0]["labels"]["color_animal"]  # label shift alone: the test split's rows of one class
    one = [r for r in read_split(root, "test") if r["labels"]["color_animal"] == label]
    for row in one:  # the pictures travel with their manifest (no path may leave its folder)
        (tmp_path / "one" / row["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / row["image"], tmp_path / "one" / row["image"])
    report = run_drift(run_dir, write_manifest(tmp_path / "one", one), "--permutations", "300",
                       "--out", tmp_path / "o1")
    assert report["labels"]["p_value"] < 0.01 and report["labels"]["total_variation"] > 0.5
    assert report["retrain"] is True and "labels (p = " in report["verdict"]


def test_bad_input_exits_2_naming_it(run_and_data, tmp_path: Path, capsys: pytest.CaptureFixture):
    run_dir, _, _ = run_and_data
    with pytest.raises(SystemExit) as exit_info:
        drift_main([str(run_dir), str(tmp_path / "nothing.jsonl")])
    assert exit_info.value.code == 2 and "nothing.jsonl: no such file or folder" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"text": "a cat", "image": "missing.png"}\n')
    assert drift_main([str(run_dir), str(tmp_path / "bad.jsonl")]) == 2
    assert "missing.png" in capsys.readouterr().err
