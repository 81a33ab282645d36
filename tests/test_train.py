"""End to end: short CPU runs on the synthetic benchmark through the real loop."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import mm.train as mm_train
from mm.config import load_config
from mm.data.synthetic import ceiling
from mm.run.options import RunOptions
from mm.wandb_offline import read_offline_history

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.synthetic.n_train=640", "data.synthetic.n_val=160", "data.synthetic.n_test=160",
    "train.batch_size=32", "wandb.mode=disabled", "encoders.image.source=tiny-vit",
]


def small_cfg(tmp_path, *extra):
    return load_config(None, [*SMALL, *extra])


def opts(tmp_path, **kw) -> RunOptions:
    return RunOptions(out_dir=str(tmp_path), progress=False, **kw)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = small_cfg(out, "train.epochs=4", "wandb.mode=offline")
    return cfg, mm_train.train(cfg, opts(out))


def test_training_learns_beyond_unimodal_ceilings(learned):
    cfg, results = learned
    run_dir = Path(results["run_dir"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    best_unimodal = max(ceiling("color_animal", [m]) for m in ("text", "image"))
    assert best_unimodal == 0.25
    assert results["test"]["accuracy"] > best_unimodal + 0.4
    for name in ("config.yaml", "results.json", "classes.json", "checkpoints/best/model.safetensors",
                 "checkpoints/last/model.safetensors", "checkpoints/last/state.pt"):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.yaml") == cfg
    state = torch.load(run_dir / "checkpoints/last/state.pt", weights_only=True)
    assert state["step"] == results["steps"]


def test_frozen_text_backbone_is_left_out_of_checkpoints_and_reloads_bit_identical(learned):
    _, results = learned
    from mm.analysis.evaluation import load_run
    from mm.encoders.text import TextEncoder
    from mm.run.checkpoint import weights_digest

    fresh = TextEncoder("minilm", trainable="frozen").backbone
    ckpt = Path(results["run_dir"]) / "checkpoints/best/model.safetensors"
    saved = load_file(ckpt)
    assert not [k for k in saved if k.startswith("encoders.text.backbone.")]  # frozen: reloads from its source
    assert [k for k in saved if k.startswith("encoders.image.backbone.")]  # trained: saved
    with safe_open(str(ckpt), framework="pt") as f:
        assert json.loads(f.metadata()["mm.omitted"]) == {"encoders.text.backbone": weights_digest(fresh)}
    _, model, _ = load_run(results["run_dir"])
    for k, v in fresh.state_dict().items():
        assert torch.equal(model.encoders["text"].backbone.state_dict()[k], v), k
    for k, v in saved.items():  # everything that was saved is what loads
        assert torch.equal(model.state_dict()[k], v), k


def test_checkpoint_refuses_changed_frozen_weights_and_wrong_keys(learned, tmp_path):
    from mm.analysis.evaluation import load_run
    from mm.run.checkpoint import load_weights, save_weights

    _, results = learned
    _, model, _ = load_run(results["run_dir"])
    ckpt = Path(results["run_dir"]) / "checkpoints/best/model.safetensors"
    with torch.no_grad():  # the source "changed" since training
        model.encoders["text"].backbone.embeddings.word_embeddings.weight[0, 0] += 1
    with pytest.raises(ValueError, match=r"model.safetensors: encoders.text.backbone was frozen .* changed"):
        load_weights(model, ckpt)
    load_weights(model, ckpt, verify=False)  # the training loop's reload into the same model skips the hash
    partial = tmp_path / "partial.safetensors"
    save_weights(model.encoders["image"], partial)  # nothing omitted, but not this model's keys
    with pytest.raises(ValueError, match=r"partial.safetensors: does not fit the model"):
        load_weights(model, partial)


def test_wandb_offline_history_equals_metrics_jsonl(learned):
    _, results = learned
    run_dir = Path(results["run_dir"])
    local = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Media (the confusion-matrix image) go to W&B only; metrics.jsonl holds the metrics.
    logged = [r for r in read_offline_history(run_dir) if not any(k.endswith("._type") for k in r)]
    assert len(logged) == len(local) > 0
    for w, j in zip(logged, local, strict=True):
        assert w["global_step"] == j["step"]
        assert {k: v for k, v in w.items() if k in j} == {k: v for k, v in j.items() if k != "step"}


@pytest.mark.parametrize("extra", [[], ["encoders.image.augment=rand", "data.num_workers=2"], ["train.precision=fp16"]],
                         ids=["plain", "augmented-2-workers", "fp16-gradscaler"])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, monkeypatch, extra):
    base = ["train.max_steps=12", "train.eval_every=4", "encoders.text.source=tiny-bert",
            "encoders.text.trainable=full", "data.synthetic.n_train=192"]
    args = [*base, *extra]
    full = mm_train.train(small_cfg(tmp_path / "a", *args), opts(tmp_path / "a"))
    if extra:  # the setting really acted (augmentation, fp16 autocast): without it the run ends elsewhere
        plain = mm_train.train(small_cfg(tmp_path / "c", *base), opts(tmp_path / "c"))
        assert plain["val"]["loss"] != full["val"]["loss"]
    if "train.precision=fp16" in extra:  # the GradScaler's state is saved with the checkpoint
        state = torch.load(Path(full["run_dir"]) / "checkpoints/last/state.pt", weights_only=True)
        assert state["scaler"]["scale"] > 0 and state["scaler"]["_growth_tracker"] == 12

    calls = {"n": 0}
    real_step = mm_train.train_step

    def crashing_step(*a, **k):
        calls["n"] += 1
        if calls["n"] > 7:  # dies during step 8, after the checkpoint at step 4
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(mm_train, "train_step", crashing_step)
    cfg = small_cfg(tmp_path / "b", *args)
    with pytest.raises(KeyboardInterrupt):
        mm_train.train(cfg, opts(tmp_path / "b"))
    monkeypatch.setattr(mm_train, "train_step", real_step)
    resumed = mm_train.train(cfg, opts(tmp_path / "b", resume=True))

    assert resumed["steps"] == full["steps"] == 12
    assert resumed["val"] == full["val"] and resumed["test"] == full["test"]
    a = load_file(Path(full["run_dir"]) / "checkpoints/last/model.safetensors")
    b = load_file(Path(resumed["run_dir"]) / "checkpoints/last/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (Path(resumed["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (Path(full["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if "samples_per_s" not in k}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in ref]


def test_cli_help_and_config_errors():
    help_out = subprocess.run([sys.executable, "scripts/train.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_out.returncode == 0 and "--modalities" in help_out.stdout and "--resume" in help_out.stdout
    bad = subprocess.run([sys.executable, "scripts/train.py", "optim.lrr=1"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "optim.lrr" in bad.stderr


def test_default_yaml_is_what_make_train_runs():
    assert load_config(ROOT / "configs/default.yaml") == load_config(None, ["data.modalities=[text,image]"])


def test_cli_run_prints_json_summary_last(tmp_path):
    cmd = [sys.executable, "scripts/train.py", "--modalities", "image", *SMALL, "--no-progress", f"--out-dir={tmp_path}",
           "train.max_steps=3", "data.task=color", "data.synthetic.n_train=96"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(summary["run_dir"]).parent == tmp_path
    assert set(summary["test"]) == {"loss", "accuracy", "macro_f1"}
    assert json.loads((Path(summary["run_dir"]) / "results.json").read_text())["test"] == summary["test"]


@pytest.mark.parametrize(
    ("mode", "patience", "min_delta", "values", "stop_at", "best_at"),
    [
        ("max", 2, 0.0, [0.5, 0.6, 0.6, 0.55, 0.9], 4, 2),  # two validations without gain after 0.6
        ("max", 2, 0.05, [0.5, 0.52, 0.54, 0.7, 0.72, 0.74], 3, 1),  # gains under min_delta don't count
        ("min", 1, 0.0, [1.0, 0.8, 0.9], 3, 2),
        ("max", 0, 0.0, [0.9, 0.1, 0.1, 0.1], None, 1),  # patience 0: never stops
    ],
)
def test_early_stopping_on_scripted_metrics(mode, patience, min_delta, values, stop_at, best_at):
    stopper = mm_train.EarlyStopping(mode, patience, min_delta)
    stopped = None
    for i, v in enumerate(values, 1):
        stopper.update(v, i)
        if stopper.should_stop:
            stopped = i
            break
    assert stopped == stop_at and stopper.best_step == best_at


def test_training_stops_early_and_tests_the_best_weights(tmp_path, monkeypatch):
    scripted = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.95])
    real = mm_train.evaluate

    def fake_evaluate(model, loader, device, precision, outputs=None, dist=None):
        metrics = real(model, loader, device, precision, outputs, dist)
        if loader.dataset.split == "val" and model.training is False and not outputs:
            metrics["accuracy"] = next(scripted, metrics["accuracy"])
        return metrics

    monkeypatch.setattr(mm_train, "evaluate", fake_evaluate)
    cfg = small_cfg(tmp_path, "encoders.text.source=tiny-bert", "data.synthetic.n_train=96", "train.batch_size=16",
                    "train.eval_every=2", "train.max_steps=20", "train.patience=2")
    results = mm_train.train(cfg, opts(tmp_path))
    # val accuracy at steps 2, 4, 6, 8: 0.5, 0.7 (best), 0.6, 0.65 -> stop at step 8, best step 4
    assert results["stopped_early"] and results["steps"] == 8 and results["best_step"] == 4


def test_train_fraction_takes_a_nested_seeded_subset():
    small, large = mm_train.train_subset(100, 0.1, 3), mm_train.train_subset(100, 0.5, 3)
    assert len(small) == 10 and len(large) == 50 and set(small) <= set(large)
    assert mm_train.train_subset(100, 1.0, 3) == list(range(100))
    assert mm_train.train_subset(100, 0.1, 3) == small and mm_train.train_subset(100, 0.1, 4) != small
