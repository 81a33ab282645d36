"""Task heads, label codecs, word-piece alignment, CoNLL files and token fusion, on known data."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mm.config import ConfigError, load_config
from mm.data import build_splits, resolve_dataset, training_classes
from mm.data.collate import Collator
from mm.data.conll import read_conll, write_conll
from mm.data.manifest import ManifestDataset, ManifestError
from mm.encoders.base import EncoderOutput
from mm.encoders.text import TextEncoder
from mm.fusion import build_fusion
from mm.fusion.tokens import TextTokensFusion
from mm.heads import ClassificationHead, MultiLabelHead, RegressionHead, TokenHead, build_head
from mm.labels import IGNORE_INDEX, LabelError, align_word_labels, build_codec, label_vocabulary

X = IGNORE_INDEX

# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("plot", [True, False])
def test_classification_report_on_known_predictions(tmp_path, plot):
    from mm.analysis.reports import write_classification_report

    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    paths = write_classification_report(pred, true, ["a", "b", "c"], tmp_path, "test", plot=plot)
    report = json.loads(paths["json"].read_text())
    assert report["confusion_matrix"] == {"classes": ["a", "b", "c"], "counts": [[1, 1, 0], [0, 2, 0], [1, 0, 1]]}
    assert report["b"]["precision"] == pytest.approx(2 / 3) and report["b"]["recall"] == 1.0
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert ("png" in paths) == plot and (tmp_path / "test_confusion.png").is_file() == plot


def test_topk_accuracy_and_confusion_on_known_data():
    head = ClassificationHead(4, 4, top_k=(2, 4, 5))
    assert head.top_k == [2]  # k >= num_classes would always be 1
    logits = torch.tensor([[4.0, 3, 2, 1], [1, 4, 3, 2], [1, 2, 4, 3], [4, 1, 2, 3], [3, 2, 1, 4]])
    labels = torch.tensor([0, 2, 0, 3, 1])  # argmax: 0 1 2 0 3; second best: 1 2 3 3 0
    m = head.metrics([logits[:2], logits[2:]], [labels[:2], labels[2:]])
    assert m["accuracy"] == pytest.approx(1 / 5)
    assert m["top2_accuracy"] == pytest.approx(3 / 5)  # samples 0, 1, 3
    assert set(m) == {"accuracy", "macro_f1", "top2_accuracy"}
    expected = np.zeros((4, 4), dtype=int)
    for t, p in [(0, 0), (2, 1), (0, 2), (3, 0), (1, 3)]:
        expected[t, p] += 1
    assert np.array_equal(head.confusion([logits[:2], logits[2:]], [labels[:2], labels[2:]]), expected)
    assert np.array_equal(head.confusion(logits, labels), expected)


# ---------------------------------------------------------------- multilabel


def test_multilabel_metrics_by_hand():
    head = MultiLabelHead(4, 4)
    # class 3 is never positive (left out of mAP; its F1 counts as 0 in the macro average)
    true = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float)
    logits = torch.tensor([[2.0, -1, -3, -1], [-2, 1, 0.5, -1], [1, 3, -1, -2], [-1, -2, -4, -3]])
    # predicted (logit > 0): [1,0,0,0] [0,1,1,0] [1,1,0,0] [0,0,0,0] -> samples 2 and 3 exactly right
    m = head.metrics([logits[:3], logits[3:]], [true[:3], true[3:]])
    assert m["accuracy"] == pytest.approx(2 / 4)
    assert m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))  # TP 4, FP 1, FN 1
    assert m["macro_f1"] == pytest.approx((1 + 1 + 0 + 0) / 4)
    # AP: class 0 and 1 rank their positives first (1); class 2's only positive ranks 3rd (1/3)
    assert m["map"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert head.loss(torch.zeros(2, 4), {"label": true[:2]}).item() == pytest.approx(math.log(2))


def test_multilabel_codec_is_multi_hot_over_the_sorted_union(tmp_path: Path):
    rows = [{"label": ["dog", "cat"], "_where": "f:1"}, {"label": ["bird"], "_where": "f:2"}, {"label": [], "_where": "f:3"}]
    classes = label_vocabulary("multilabel", rows, "label")
    assert classes == ["bird", "cat", "dog"]
    codec = build_codec("multilabel", classes)
    assert codec.num_outputs == 3 and codec.encode(["dog", "bird"]) == [1.0, 0.0, 1.0] and codec.encode([]) == [0.0] * 3
    with pytest.raises(LabelError, match="'fish' is not one of the 3"):
        codec.encode(["fish"])
    with pytest.raises(LabelError, match="f:2: multilabel label at 'label' must be a list"):
        label_vocabulary("multilabel", [rows[0], {"label": "bird", "_where": "f:2"}], "label")
    with pytest.raises(LabelError, match="f:1: label at 'label' is a list.*head.name=multilabel"):
        label_vocabulary("classification", rows, "label")


# ---------------------------------------------------------------- regression


def test_regression_metrics_and_losses_by_hand():
    head = RegressionHead(3, loss="mse")
    assert head(torch.zeros(5, 3)).shape == (5,)
    pred, true = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 2.0])
    m = head.metrics([pred[:1], pred[1:]], [true[:1], true[1:]])
    assert m["mae"] == pytest.approx(1.0)  # errors 0, -1, 2
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3))
    # deviations from the means: pred (-4/3, -1/3, 5/3), true (-1, 1, 0): cov 1, sums of squares 42/9 and 2
    assert m["pearson"] == pytest.approx(1 / math.sqrt(42 / 9 * 2))
    assert head.loss(pred, {"label": true}).item() == pytest.approx(5 / 3)
    assert RegressionHead(3, loss="l1").loss(pred, {"label": true}).item() == pytest.approx(1.0)
    assert head.metrics([torch.ones(3)], [true])["pearson"] == 0.0  # undefined for constant predictions
    with pytest.raises(ValueError, match=r"unknown regression loss 'huber'; valid: \['mse', 'l1'\]"):
        RegressionHead(3, loss="huber")


def test_regression_codec_and_config_choices():
    rows = [{"y": 2, "_where": "f:1"}, {"y": 0.5, "_where": "f:2"}]
    assert label_vocabulary("regression", rows, "y") == []
    codec = build_codec("regression", [])
    assert codec.num_outputs == 1 and codec.encode(2) == 2.0 and isinstance(codec.encode(2), float)
    with pytest.raises(LabelError, match="f:3: regression label at 'y' must be a number, got 'high'"):
        label_vocabulary("regression", [*rows, {"y": "high", "_where": "f:3"}], "y")
    with pytest.raises(LabelError, match="must be a number, got True"):
        codec.encode(True)
    cfg = load_config(None, ["head.name=regression", "head.loss=l1", "head.top_k=[1,3]", "train.metric=mae"])
    assert (cfg.head.loss, cfg.head.top_k) == ("l1", [1, 3])
    with pytest.raises(ConfigError, match="head.loss"):
        load_config(None, ["head.loss=huber"])
    with pytest.raises(ConfigError, match="head.name"):
        load_config(None, ["head.name=ranking"])


# ---------------------------------------------------------------- token tagging

TAGS = ["B-LOC", "B-PER", "I-PER", "O"]  # ids 0 1 2 3


def test_token_metrics_read_words_from_first_pieces():
    head = TokenHead(4, 4, TAGS)
    # sample a: words B-PER I-PER O B-LOC, predicted B-PER I-PER O O (the LOC missed);
    # ignored pieces are predicted B-LOC, which would add wrong entities if they were read
    lab_a = torch.tensor([[X, 1, 2, X, 3, 0, X]])
    pred_a = torch.tensor([[0, 1, 2, 0, 3, 3, 0]])
    # sample b (another batch, other length): words B-LOC O, predicted B-LOC O
    lab_b = torch.tensor([[X, 0, 3, X]])
    pred_b = torch.tensor([[0, 0, 3, 0]])
    logits = [torch.nn.functional.one_hot(p, 4).float() for p in (pred_a, pred_b)]
    assert head.decode(logits, [lab_a, lab_b]) == (
        [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]],
        [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O"]],
    )
    m = head.metrics(logits, [lab_a, lab_b])
    # gold entities PER, LOC, LOC; predicted PER, LOC, both right
    assert m == pytest.approx({"entity_precision": 1.0, "entity_recall": 2 / 3, "entity_f1": 0.8, "accuracy": 5 / 6})
    # the loss averages over the 6 labelled pieces only
    scores = torch.randn(1, 7, 4, generator=torch.Generator().manual_seed(0))
    keep = lab_a[0] != X
    expected = torch.nn.functional.cross_entropy(scores[0][keep], lab_a[0][keep])
    assert head.loss(scores, {"label": lab_a}).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="text_tokens"):
        head(torch.zeros(2, 4))


def test_align_word_labels():
    assert align_word_labels([None, 0, 1, 1, 1, 2, None, None], [5, 6, 7]) == [X, 5, 6, X, X, 7, X, X]


@pytest.fixture(scope="module")
def text_enc(tiny_bert: Path) -> TextEncoder:
    return TextEncoder(str(tiny_bert), max_length=16)


def test_word_pieces_get_the_tag_on_the_first_piece_only(text_enc: TextEncoder):
    codec = build_codec("token", TAGS)
    samples = [
        {"index": 0, "words": ["Jean", "unaffable", "Damme", "."], "label": codec.encode(["B-PER", "O", "I-PER", "O"])},
        {"index": 1, "words": ["Rome"], "label": codec.encode(["B-LOC"])},
    ]
    for s in samples:
        s["text"] = " ".join(s["words"])
    batch = Collator(["text"], {"text": text_enc}, head="token")(samples)
    tokens = [text_enc.tokenizer.convert_ids_to_tokens(ids) for ids in batch["text"]["input_ids"].tolist()]
    assert tokens == [
        ["[CLS]", "jean", "una", "##ffa", "##ble", "dam", "##me", ".", "[SEP]"],
        ["[CLS]", "rome", "[SEP]", "[PAD]", "[PAD]", "[PAD]", "[PAD]", "[PAD]", "[PAD]"],
    ]
    assert batch["label"].tolist() == [[X, 1, 3, X, X, 2, X, 3, X], [X, 0, X, X, X, X, X, X, X]]
    assert batch["label"].dtype == torch.long and batch["present"]["text"].tolist() == [True, True]


class PlainText:
    """The text side of the encoder data contract, enough for a dataset: a row's text as is."""

    media, augment = False, False

    def load(self, value, root, train=False):
        return str(value)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_token_rows_need_one_word_per_tag(tmp_path: Path):
    write_jsonl(tmp_path / "train.jsonl", [{"tokens": ["Rome", "!"], "tags": ["B-LOC", "O"]},
                                           {"tokens": ["Bob", "runs"], "tags": ["B-PER"]}])
    codec = build_codec("token", TAGS)
    with pytest.raises(ManifestError, match=r"train\.jsonl:2: 2 words at 'tokens' but 1 tags at 'tags'"):
        ManifestDataset(tmp_path, "train", {"text": PlainText()}, "tags", TAGS, codec=codec)
    write_jsonl(tmp_path / "train.jsonl", [{"tokens": ["Rome", "!"], "tags": ["B-LOC", "O"]}])
    ds = ManifestDataset(tmp_path, "train", {"text": PlainText()}, "tags", TAGS, codec=codec)
    assert ds[0] == {"index": 0, "label": [0, 3], "words": ["Rome", "!"], "text": "Rome !"}
    with pytest.raises(LabelError, match="f:1: tag 'PER' is neither 'O' nor B-/I-/E-/S- prefixed"):
        label_vocabulary("token", [{"tags": ["PER"], "_where": "f:1"}], "tags")


# ---------------------------------------------------------------- CoNLL

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC


Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O
Rome\tNNP\tB-LOC
"""


def test_conll_reader_rows_and_errors(tmp_path: Path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    assert read_conll(path) == [
        {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"], "_where": f"{path}:3"},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "_where": f"{path}:8"},
        {"tokens": ["Rome"], "tags": ["B-LOC"], "_where": f"{path}:11"},
    ]
    path.write_text(CONLL.replace("rejects VBZ B-VP O", "rejects"))
    with pytest.raises(ManifestError, match=rf"{path}:4: expected a token and a tag, got 'rejects'"):
        read_conll(path)
    path.write_text(CONLL.replace("B-PER", "PER"))
    with pytest.raises(ManifestError, match=rf"{path}:8: tag 'PER' is neither"):
        read_conll(path)
    path.write_text("-DOCSTART- O\n\n")
    with pytest.raises(ManifestError, match="no sentences"):
        read_conll(path)


# ---------------------------------------------------------------- token fusion


def enc_out(batch: int, length: int, dim: int, mask: torch.Tensor | None = None, seed: int = 0) -> EncoderOutput:
    tokens = torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(batch, length, dtype=torch.bool) if mask is None else mask
    return EncoderOutput(tokens, mask, tokens.mean(1))


def test_text_tokens_fusion_shapes_masks_and_gradients():
    dims = {"audio": 5, "image": 6, "text": 8}
    fusion = build_fusion("text_tokens", dims, hidden_dim=16, num_layers=2, dropout=0.0, num_heads=4)
    assert isinstance(fusion, TextTokensFusion) and fusion.out_dim == 16
    audio_mask = torch.tensor([[True, True, False], [True, False, False]])
    outs = {"text": enc_out(2, 7, 8), "image": enc_out(2, 4, 6, seed=1), "audio": enc_out(2, 3, 5, audio_mask, seed=2)}
    fused = fusion(outs, None)
    assert fused.shape == (2, 7, 16)
    # what padded audio frames hold never reaches the output
    noisy = outs["audio"].tokens.masked_fill(~audio_mask[..., None], 1e3)
    outs_noisy = {**outs, "audio": EncoderOutput(noisy, audio_mask, outs["audio"].pooled)}
    torch.testing.assert_close(fusion(outs_noisy, None), fused)
    fused.pow(2).sum().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_text_tokens_fusion_text_alone_is_the_projection():
    fusion = TextTokensFusion({"text": 8}, hidden_dim=6, num_layers=2, dropout=0.0)
    assert len(fusion.layers) == 0
    out = enc_out(2, 5, 8)
    torch.testing.assert_close(fusion({"text": out}), fusion.project(out.tokens))
    with pytest.raises(ValueError, match="needs the text modality"):
        TextTokensFusion({"image": 8})


def test_head_registry_lists_valid_names():
    with pytest.raises(ValueError, match=r"\['classification', 'multilabel', 'regression', 'token'\]"):
        build_head("ranking", 4, 2)
    with pytest.raises(ValueError, match="tag names"):
        build_head("token", 4, 2)


# ---------------------------------------------------------------- end to end: NER on CoNLL files

PEOPLE = [["alice"], ["bob"], ["carol", "smith"], ["jean", "van", "damme"]]
PLACES = [["paris"], ["rome"], ["new", "york"], ["oslo"]]
TEMPLATES = [["{per}", "lives", "in", "{loc}", "."], ["yesterday", "{per}", "flew", "to", "{loc}", "."],
             ["{loc}", "welcomed", "{per}", "."], ["the", "weather", "was", "calm", "."]]


def ner_rows(n: int, seed: int) -> list[dict]:
    """Sentences whose entities come from a small fixed vocabulary: learnable in seconds."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for slot in rng.choice(TEMPLATES):
            if slot in ("{per}", "{loc}"):
                words, kind = (rng.choice(PEOPLE), "PER") if slot == "{per}" else (rng.choice(PLACES), "LOC")
                tokens += words
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
            else:
                tokens.append(slot)
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


@pytest.fixture(scope="module")
def ner_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ner")
    for split, n, seed in (("train", 160, 0), ("val", 40, 1), ("test", 40, 2)):
        write_conll(root / f"{split}.txt", ner_rows(n, seed))
    return root


def test_conll_folder_is_a_token_dataset(ner_folder: Path, text_enc: TextEncoder):
    cfg = load_config(None, [f"data.dataset={ner_folder}", "data.modalities=[text]"])
    assert resolve_dataset(cfg.data) == (ner_folder, "tags")
    tags = training_classes(cfg.data, "token")
    assert tags == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    splits, _ = build_splits(cfg.data, {"text": text_enc}, head="token")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [160, 40, 40]
    assert splits["val"][0]["words"] == ner_rows(40, 1)[0]["tokens"]


def test_ner_trains_end_to_end_on_conll_files(ner_folder: Path, tmp_path: Path):
    from mm.train import RunOptions, train

    cfg = load_config(None, [
        f"data.dataset={ner_folder}", "data.modalities=[text]", "head.name=token", "fusion.name=text_tokens",
        "fusion.hidden_dim=32", "encoders.text.source=tiny-bert", "encoders.text.trainable=full",
        "train.max_steps=60", "train.batch_size=16", "train.eval_every=20", "train.metric=entity_f1",
        "optim.lr=3e-3", "optim.backbone_lr=1e-3", "wandb.mode=disabled",
    ])
    results = train(cfg, RunOptions(out_dir=str(tmp_path), progress=False))
    assert set(results["test"]) == {"loss", "entity_precision", "entity_recall", "entity_f1", "accuracy"}
    assert json.loads((Path(results["run_dir"]) / "classes.json").read_text()) == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    # tagging every word O finds no entity (entity F1 0) and gets only the O words right
    o_rate = np.mean([tag == "O" for row in ner_rows(40, 1) for tag in row["tags"]])
    assert 0.5 < o_rate < 0.7
    assert results["val"]["entity_f1"] > 0.9 and results["test"]["entity_f1"] > 0.9, results
    assert results["val"]["accuracy"] > o_rate + 0.25


# ---------------------------------------------------------------- the synthetic tasks through data and model

TINY_SYNTHETIC = ["data.synthetic.n_train=24", "data.synthetic.n_val=8", "data.synthetic.n_test=8"]


def test_synthetic_multilabel_and_regression_batches(text_enc: TextEncoder):
    from mm.data.synthetic import task_classes

    cfg = load_config(None, [*TINY_SYNTHETIC, "data.task=multilabel", "data.modalities=[text]"])
    with pytest.raises(ValueError, match="synthetic task 'multilabel' needs head.name=multilabel, not 'classification'"):
        training_classes(cfg.data, "classification")
    splits, classes = build_splits(cfg.data, {"text": text_enc}, list(task_classes("multilabel")), head="multilabel")
    rows = splits["train"].rows[:4]
    batch = Collator(["text"], {"text": text_enc}, head="multilabel")([splits["train"][i] for i in range(4)])
    expected = [[float(c in r["labels"]["multilabel"]) for c in classes] for r in rows]
    assert batch["label"].dtype == torch.float32 and batch["label"].tolist() == expected
    assert batch["label"].sum(1).tolist() == [4.0] * 4  # colour, shape, animal, pitch

    cfg = load_config(None, [*TINY_SYNTHETIC, "data.task=regression", "data.modalities=[text]"])
    assert training_classes(cfg.data, "regression") == []
    splits, _ = build_splits(cfg.data, {"text": text_enc}, head="regression")
    batch = Collator(["text"], {"text": text_enc}, head="regression")([splits["val"][i] for i in range(4)])
    targets = [int(r["factors"]["count"]) + 3.0 * (r["factors"]["pitch"] == "high") for r in splits["val"].rows[:4]]
    assert batch["label"].dtype == torch.float32 and batch["label"].tolist() == targets


def test_synthetic_tags_run_through_the_multimodal_token_model():
    from mm.data.synthetic import task_classes
    from mm.model import build_model

    cfg = load_config(None, [
        *TINY_SYNTHETIC, "data.task=tags", "data.modalities=[text,image]", "head.name=token",
        "fusion.name=text_tokens", "fusion.hidden_dim=16", "encoders.text.source=tiny-bert",
        "encoders.image.source=tiny-vit",
    ])
    tags = list(task_classes("tags"))
    model = build_model(cfg, num_classes=len(tags), classes=tags)
    splits, _ = build_splits(cfg.data, dict(model.encoders), tags, head="token")
    samples = [splits["train"][i] for i in range(3)]
    del samples[1]["image"]  # an absent picture: its tokens are the learned missing embedding
    batch = Collator(["text", "image"], dict(model.encoders), head="token")(samples)
    assert batch["present"]["image"].tolist() == [True, False, True]
    logits = model(batch)
    assert logits.shape == (*batch["text"]["input_ids"].shape, len(tags))
    loss = model.head.loss(logits, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.fusion.context["image"][1].weight.grad.abs().sum() > 0
    words = [(batch["label"][i] != X).sum().item() for i in range(3)]
    assert words == [len(splits["train"].rows[i]["tokens"]) for i in range(3)]
