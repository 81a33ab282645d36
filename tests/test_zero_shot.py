"""Zero-shot text classification: class-prompt embeddings, cosine logits, and a constructed task with the
real all-MiniLM-L6-v2 whose accuracy follows from its construction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mm.config import load_config
from mm.lowdata.zero_shot import check_modalities, class_embeddings, zero_shot, zero_shot_logits

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["astronomy", "cooking", "football", "music"]
TEMPLATE = "this is about {}."
# Test rows (the class named in the text, the label): six say their class; the text of the last two
# names another class than their label, so zero-shot must get exactly those two wrong.
TEST = [("astronomy", "astronomy"), ("cooking", "cooking"), ("football", "football"), ("music", "music"),
        ("astronomy", "astronomy"), ("cooking", "cooking"), ("football", "music"), ("music", "astronomy")]


def test_class_embeddings_average_unit_template_vectors():
    vectors = {"a x": [3.0, 4.0], "a y": [0.0, 2.0], "b x": [1.0, 0.0], "b y": [1.0, 0.0]}

    def embed(texts: list[str]) -> torch.Tensor:
        return torch.tensor([vectors[t] for t in texts])

    out = class_embeddings(embed, ["x", "y"], ["a {}", "b {}"])
    # x: mean of (0.6, 0.8) and (1, 0) = (0.8, 0.4), scaled to unit length; y: mean of (0, 1) and (1, 0).
    assert torch.allclose(out, torch.tensor([[0.8, 0.4], [0.5, 0.5]]) / torch.tensor([[math.sqrt(0.8)], [math.sqrt(0.5)]]))
    logits = zero_shot_logits(torch.tensor([[2.0, 0.0], [0.0, -1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), scale=20)
    assert torch.equal(logits, torch.tensor([[20.0, 0.0], [0.0, -20.0]]))
    with pytest.raises(ValueError, match="exactly one"):
        class_embeddings(embed, ["x"], ["no slot"])


@pytest.mark.parametrize("modalities", [["image"], ["text", "audio"]])
def test_image_and_audio_need_a_joint_model(modalities):
    with pytest.raises(ValueError, match="joint embedding model"):
        check_modalities(modalities)


@pytest.fixture(scope="module")
def topics(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("topics")
    rows = {"train": [(c, c) for c in CLASSES], "val": [(c, c) for c in CLASSES], "test": TEST}
    for split, pairs in rows.items():
        (root / f"{split}.jsonl").write_text("".join(
            json.dumps({"text": TEMPLATE.format(named), "label": label}) + "\n" for named, label in pairs))
    return root


def overrides(root: Path, out: Path) -> list[str]:
    return [f"data.dataset={root}", "data.modalities=[text]", "encoders.text.source=minilm", "wandb.mode=disabled"]


def test_minilm_zero_shot_accuracy_follows_from_the_construction(topics, tmp_path):
    # With the one template the texts were written with, each text's embedding is its class's (cosine 1,
    # the largest there is): the 6 texts that name their own class are right and the 2 others wrong.
    result = zero_shot(load_config(None, overrides(topics, tmp_path)), [TEMPLATE])
    assert result.metrics["val"]["accuracy"] == 1.0 and result.metrics["val"]["macro_f1"] == 1.0
    assert result.metrics["test"]["accuracy"] == 0.75
    # Per class F1: astronomy P=1 R=2/3 -> 0.8; cooking 1; football P=1/2 R=1 -> 2/3; music P=1/2 R=1/2 -> 1/2.
    assert math.isclose(result.metrics["test"]["macro_f1"], (0.8 + 1 + 2 / 3 + 0.5) / 4)
    assert torch.allclose(result.logits["test"].max(1).values, torch.full((8,), 20.0), atol=1e-4)  # cosine 1, x 20


def test_script_writes_results_and_reports_like_a_trained_run(topics, tmp_path, capsys):
    import zero_shot as script
    assert script.main([*overrides(topics, tmp_path), f"--out-dir={tmp_path}", "--no-plots", "name=topics",
                        "--template", TEMPLATE]) == 0
    run = tmp_path / "topics"
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["accuracy"] == 0.75 and results["val"]["accuracy"] == 1.0
    assert results["params"]["params/trainable"] == 0 and results["templates"] == [TEMPLATE]
    assert json.loads((run / "classes.json").read_text()) == CLASSES
    report = json.loads((run / "report" / "test_report.json").read_text())
    assert report["football"]["precision"] == 0.5 and report["confusion_matrix"]["counts"][3] == [0, 0, 1, 1]
    assert (run / "report" / "test_predictions.npz").is_file() and (run / "config.yaml").is_file()
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["test"]["accuracy"] == 0.75
    # Pictures cannot be classified without a joint model: a clear error, exit status 2.
    assert script.main([*overrides(topics, tmp_path), "data.modalities=[image]"]) == 2
    assert "joint embedding model" in capsys.readouterr().err
