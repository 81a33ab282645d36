import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mm.config import Config, ConfigError, load_config, to_dict

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
LOCAL_SOURCES = ("minilm", "tiny-bert", "tiny-vit", "tiny-wav2vec2")


def test_defaults_are_the_dataclass_defaults():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.data.modalities == ["text", "image"]
    assert cfg.encoders.text.source == "minilm"
    assert cfg.optim.betas == [0.9, 0.999]


def test_dotted_overrides_change_nested_values_with_types():
    cfg = load_config(None, ["optim.lr=3e-4", "data.modalities=[text,audio]", "train.epochs=7", "wandb.tags=[a,b]"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.data.modalities == ["text", "audio"]
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.wandb.tags == ["a", "b"]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lrr=1", "optim.lrr"),
        ("optim.lr=fast", "optim.lr"),
        ("train.batch_size=big", "train.batch_size"),
        ("encoders.text.trainable=sometimes", "encoders.text.trainable"),
        ("data.modalities=[text,smell]", "data.modalities"),
        ("nosuchsection.x=1", "nosuchsection"),
    ],
)
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "train.epochz" in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_and_builds(path, monkeypatch):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# python scripts/"), f"{path.name}: first line must be the command that runs it"
    cfg = load_config(path)
    assert to_dict(cfg)["data"]["modalities"] == cfg.data.modalities
    # Hub backbones cannot be fetched here: build the same architecture with tiny stand-ins.
    tiny = {"transformers": "tiny-bert", "timm": "tiny-vit", "wav2vec2": "tiny-wav2vec2", "spectrogram": "tiny-cnn"}
    for m in cfg.data.modalities:
        enc = getattr(cfg.encoders, m)
        if enc.source not in LOCAL_SOURCES:
            enc.source = tiny[enc.name]
        elif m == "text":
            enc.source = "tiny-bert"  # same code path as MiniLM, a fraction of the time
    from mm.model import build_model

    tags = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]  # the token head needs its tag names
    model = build_model(cfg, num_classes=5, classes=tags if cfg.head.name == "token" else None)
    assert sorted(model.encoders) == sorted(cfg.data.modalities)
    assert model.head.linear.out_features == 5


@pytest.mark.parametrize(
    ("key", "registry"),
    [
        ("fusion.name", lambda: sorted(importlib.import_module("mm.fusion").FUSIONS)),
        ("head.name", lambda: sorted(importlib.import_module("mm.heads").HEADS)),
        ("encoders.text.trainable", lambda: list(importlib.import_module("mm.encoders.policies").POLICIES)),
        ("data.task", lambda: sorted(importlib.import_module("mm.data.synthetic").TASKS)),
        ("fusion.late_weights", lambda: list(importlib.import_module("mm.fusion.weighted").LATE_WEIGHTS)),
        ("wandb.mode", lambda: list(importlib.import_module("mm.tracking").MODES)),
    ],
)
def test_choices_are_validated_against_their_registries(key, registry):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}=nope"])
    assert str(err.value) == f"invalid value for '{key}': 'nope'; valid: {registry()}"
    for valid in registry():
        load_config(None, [f"{key}={valid}", *(["train.metric=mae"] if (key, valid) == ("head.name", "regression") else [])])


def test_a_new_registry_entry_is_valid_with_no_change_to_the_config(monkeypatch):
    import mm.encoders.policies
    import mm.fusion
    import mm.heads

    for key in ("fusion.name", "head.name", "encoders.text.trainable"):
        with pytest.raises(ConfigError, match=re.escape(f"invalid value for '{key}': 'toy'")):
            load_config(None, [f"{key}=toy"])
    monkeypatch.setitem(mm.fusion.FUSIONS, "toy", mm.fusion.ConcatFusion)
    monkeypatch.setitem(mm.heads.HEADS, "toy", mm.heads.ClassificationHead)
    monkeypatch.setitem(mm.encoders.policies.POLICIES, "toy", mm.encoders.policies.POLICIES["frozen"])
    cfg = load_config(None, ["fusion.name=toy", "head.name=toy", "encoders.text.trainable=toy"])
    assert (cfg.fusion.name, cfg.head.name, cfg.encoders.text.trainable) == ("toy", "toy", "toy")


def test_synthetic_task_is_checked_only_for_the_synthetic_dataset(tmp_path):
    with pytest.raises(ConfigError, match=r"'data\.task': 'nope'"):
        load_config(None, ["data.task=nope"])
    assert load_config(None, [f"data.dataset={tmp_path}", "data.task=nope"]).data.task == "nope"


def test_config_module_imports_without_torch():
    code = "import sys, mm.config; assert 'torch' not in sys.modules, 'mm.config imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.mark.parametrize(("old", "new", "value"), [
    ("encoders.audio.encoder", "encoders.audio.name", "wav2vec2"),
    ("encoders.text.encoder", "encoders.text.name", "transformers"),
    ("encoders.audio.max_seconds", "encoders.audio.max_s", "5"),
    ("train.label_smoothing", "head.label_smoothing", "0.1"),
    ("data.modality_dropout", "fusion.modality_dropout", "0.5"),
])
def test_a_renamed_key_fails_fast_naming_the_new_one(old, new, value, tmp_path):
    message = rf"'{re.escape(old)}' was renamed to '{re.escape(new)}'"
    with pytest.raises(ConfigError, match=rf"^command-line overrides: {message}"):
        load_config(None, [f"{old}={value}"])
    section, *middle, key = old.split(".")
    nested = f"{section}:\n" + "".join(f"{'  ' * (i + 1)}{m}:\n" for i, m in enumerate(middle))
    path = tmp_path / "old.yaml"
    path.write_text(nested + f"{'  ' * (len(middle) + 1)}{key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_config(path)
    assert load_config(None, [f"{new}={value}"])  # the new key is accepted


def test_config_sections_are_assembled_from_the_registries():
    from mm.registry import ENCODERS, FUSIONS, HEADS

    cfg = load_config()
    assert list(to_dict(cfg)["encoders"]) == list(ENCODERS) == ["text", "image", "audio"]
    assert [getattr(cfg.encoders, m).name for m in ENCODERS] == ["transformers", "timm", "spectrogram"]
    # a modality's section: its default kind's settings, then what its other kinds add
    audio = to_dict(cfg)["encoders"]["audio"]
    assert audio["n_mels"] == 64 and audio["freeze_feature_encoder"] is True and audio["max_s"] == 10.0
    fusion_fields = set(to_dict(cfg)["fusion"]) - {"name", "modality_dropout"}
    assert fusion_fields == {a for cls in FUSIONS.values() for a in importlib.import_module("mm.fusion").declared_arguments(cls)}
    assert {"top_k", "label_smoothing", "loss"} <= set(to_dict(cfg)["head"]) and set(HEADS) >= {"classification", "token"}
    assert load_config() == load_config()  # the assembled sections compare equal


def test_the_config_module_imports_no_implementation():
    # Statically: mm/config.py imports nothing of mm but the registry (implementations import it).
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "mm" / "config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("mm")} == {"mm.registry"}
    # At run time: importing it loads no other mm module.
    code = "import sys, mm.config; print(sorted(m for m in sys.modules if m.startswith('mm')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "['mm', 'mm.config', 'mm.registry']"


def test_a_run_folders_config_written_before_the_renames_still_loads(tmp_path):
    # What mm wrote into a run folder (a whole resolved config) is read with the new names, so old
    # runs still evaluate and resume; a config someone wrote with an old spelling is refused (above).
    import yaml

    tree = to_dict(load_config(None, ["head.label_smoothing=0.1", "fusion.modality_dropout=0.2",
                                      "encoders.audio.max_s=4"]))
    tree["train"]["label_smoothing"] = tree["head"].pop("label_smoothing")
    tree["data"]["modality_dropout"] = tree["fusion"].pop("modality_dropout")
    for section in tree["encoders"].values():
        section["encoder"] = section.pop("name")
    tree["encoders"]["audio"]["max_seconds"] = tree["encoders"]["audio"].pop("max_s")
    tree["train"].update(out_dir="runs", resume=False, progress=True, plots=True)  # run options then
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump(tree))
    cfg = load_config(old)
    assert (cfg.head.label_smoothing, cfg.fusion.modality_dropout, cfg.encoders.audio.max_s) == (0.1, 0.2, 4.0)
    assert cfg.encoders.audio.name == "spectrogram" and cfg.encoders.text.name == "transformers"
