"""train.init_from (continued fine-tuning with new classes) and scripts/before_after.py, on real tiny runs:
the head grows with the old rows kept, the run records its source, and the before/after table's
scores equal what each run measured on its own test split."""

from __future__ import annotations

import json
from pathlib import Path

import before_after as before_after_script
import pytest
import torch
from safetensors.torch import load_file

from mm.config import load_config
from mm.data import resolve_dataset
from mm.data.manifest import read_split
from mm.labels import build_codec
from mm.model import build_model
from mm.run.init_from import grown_classes, init_source, load_init

TASK = "color_animal"
TINY = ["encoders.text.source=tiny-bert", "data.modalities=[text]", f"data.task={TASK}", "data.synthetic.n_train=160",
        "data.synthetic.n_val=48", "data.synthetic.n_test=64", "train.batch_size=16", "train.max_steps=6",
        "wandb.mode=disabled"]


def write_folder(folder: Path, root: Path, keep: set | None) -> Path:
    """A text-only manifest folder from the synthetic splits, with only the labels in ``keep`` (all if None)."""
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = [{"text": r["text"], "label": r["labels"][TASK]} for r in read_split(root, split)]
        lines = [json.dumps(r) + "\n" for r in rows if keep is None or r["label"] in keep]
        (folder / f"{split}.jsonl").write_text("".join(lines))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path):
    import mm.train as mm_train

    out = tmp_path_factory.mktemp("init")
    root, _ = resolve_dataset(load_config(None, TINY).data)
    labels = sorted({r["labels"][TASK] for r in read_split(root, "train")})
    old = write_folder(out / "old_data", root, set(labels[: len(labels) // 2]))
    new = write_folder(out / "new_data", root, None)
    opts = mm_train.RunOptions(out_dir=str(out), progress=False)
    a = mm_train.train(load_config(None, [*TINY, f"data.dataset={old}", "name=a"]), opts)
    b = mm_train.train(load_config(None, [*TINY, f"data.dataset={new}", "name=b",
                                          f"train.init_from={a['run_dir']}"]), opts)
    return a, b, old, new, labels


def test_the_head_grows_and_keeps_the_old_rows(runs):
    a, b, _, _, labels = runs
    a_dir, b_dir = Path(a["run_dir"]), Path(b["run_dir"])
    old_classes = json.loads((a_dir / "classes.json").read_text())
    assert old_classes == labels[: len(labels) // 2]
    assert json.loads((b_dir / "classes.json").read_text()) == grown_classes(old_classes, labels)
    assert load_config(b_dir / "config.yaml").train.init_from == str(a_dir)
    record = json.loads((b_dir / "init_from.json").read_text())
    assert record["source"] == str(a_dir) and record["classes_added"] == labels[len(labels) // 2:]
    assert record["grown"] and record["fresh"] == [] and record["unused"] == []

    # Load the source into a freshly built model for b's config: shared tensors equal, old rows equal, new rows fresh.
    cfg = load_config(b_dir / "config.yaml")
    classes = json.loads((b_dir / "classes.json").read_text())
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=build_codec(cfg.head.name, classes).num_outputs, classes=classes)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_init(model, init_source(str(a_dir)), classes)
    saved, state = load_file(str(a_dir / "checkpoints" / "best" / "model.safetensors")), model.state_dict()
    n = len(old_classes)
    for key in report["grown"]:
        assert torch.equal(state[key][:n], saved[key]) and torch.equal(state[key][n:], fresh[key][n:]), key
    assert all(torch.equal(state[k], saved[k]) for k in saved if k not in report["grown"])


def test_before_after_scores_equal_each_runs_own_test(runs, tmp_path: Path, capsys: pytest.CaptureFixture):
    a, b, old, new, _ = runs
    assert before_after_script.main([a["run_dir"], b["run_dir"], "--resamples", "200", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "before_after.json").read_text())
    assert report["old"]["data"] == str(old) and report["new"]["data"] == str(new)
    assert report["old"]["old_model"]["value"] == pytest.approx(a["test"]["accuracy"])
    assert report["new"]["new_model"]["value"] == pytest.approx(b["test"]["accuracy"])
    assert report["forgotten"] == pytest.approx(report["old"]["old_model"]["value"] - report["old"]["new_model"]["value"])
    assert "forgotten on the old data" in capsys.readouterr().out


def test_bad_sources_are_refused_before_training(runs, tmp_path: Path):
    a, *_ = runs
    with pytest.raises(FileNotFoundError, match=r"train.init_from=.*nowhere"):
        init_source(str(tmp_path / "nowhere"))
    cfg = load_config(Path(a["run_dir"]) / "config.yaml", ["fusion.hidden_dim=24"])
    classes = json.loads((Path(a["run_dir"]) / "classes.json").read_text())
    model = build_model(cfg, num_classes=len(classes), classes=classes)
    with pytest.raises(ValueError, match=r"fusion\..* has shape"):
        load_init(model, init_source(a["run_dir"]), classes)
