"""NER as the worked example prints it: sentences longer than the window, the per-entity report,
``predict.py --text`` on a token run, and a cased tokenizer."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from mm.analysis.reports import report_table, token_report, write_token_report
from mm.config import load_config
from mm.data.collate import Collator
from mm.encoders.text import TextEncoder
from mm.labels import IGNORE_INDEX, build_codec
from mm.model import build_model
from mm.predict import decode

ROOT = Path(__file__).resolve().parents[1]
TAGS = ["B-LOC", "B-PER", "I-PER", "O"]
# Words of one, two and three word pieces in the (uncased) tiny-bert vocabulary, so that 300 words
# make more pieces than BERT has positions (512).
VOCAB = ["paris", "unaffable", "flew", "damme", "to", "jean", "xylophonist", "."]


def long_sentence(n: int = 300) -> tuple[list[str], list[str]]:
    words = [VOCAB[i % len(VOCAB)] for i in range(n)]
    tags = ["B-LOC" if w == "paris" else "B-PER" if w == "jean" else "I-PER" if w == "damme" else "O" for w in words]
    return words, tags


@pytest.fixture(scope="module")
def windowed(tiny_bert: Path) -> TextEncoder:
    return TextEncoder(str(tiny_bert), max_length=32, stride=8)


def reference_windows(enc: TextEncoder, ids: torch.Tensor) -> torch.Tensor:
    """Per position of one unpadded row ``[T]``: the backbone run alone on the window where the
    position is most central (an independent, slow reading of ``encode_windows``' contract)."""
    width = enc.window - 2  # [CLS] ... [SEP]
    step = width - enc.stride
    text = ids[1:-1]
    starts = [0]
    while starts[-1] + width < len(text):
        starts.append(starts[-1] + step)
    outs = [enc.backbone(input_ids=torch.cat([ids[:1], text[s : s + width], ids[-1:]])[None]).last_hidden_state[0]
            for s in starts]
    rows = [outs[0][0]]  # [CLS] from the first window
    for p in range(len(text)):
        scores = [min(p - s, min(s + width, len(text)) - 1 - p) if s <= p < s + width else -1 for s in starts]
        k = max(range(len(starts)), key=lambda i: (scores[i], -i))  # most central; ties: the earlier window
        rows.append(outs[k][1 + p - starts[k]])
    last = min(starts[-1] + width, len(text)) - starts[-1]
    rows.append(outs[-1][1 + last])  # [SEP] from the last window
    return torch.stack(rows)


# ---------------------------------------------------------------- windows over long sentences


def test_a_long_sentence_keeps_every_word_piece_and_label(windowed: TextEncoder):
    words, tags = long_sentence()
    codec = build_codec("token", TAGS)
    samples = [{"index": 0, "words": words, "label": codec.encode(tags)},
               {"index": 1, "words": ["jean", "flew"], "label": codec.encode(["B-PER", "O"])}]
    batch = Collator(["text"], {"text": windowed}, head="token")(samples)
    n_pieces = len(windowed.tokenizer(words, is_split_into_words=True)["input_ids"])
    assert n_pieces > 512  # more than the backbone's positions: truncation would have lost words
    assert batch["text"]["input_ids"].shape == (2, n_pieces) and batch["label"].shape == (2, n_pieces)
    assert batch["text"]["attention_mask"].sum(1).tolist() == [n_pieces, 4]
    kept = batch["label"][0][batch["label"][0] != IGNORE_INDEX].tolist()
    assert kept == codec.encode(tags)  # every word's tag, in order


def test_windows_are_capped_at_the_backbone_positions(tiny_bert: Path):
    assert TextEncoder(str(tiny_bert), max_length=1024).window == 512
    enc = TextEncoder(str(tiny_bert), max_length=32, stride=8)
    assert (enc.window, enc.n_prefix, enc.n_suffix) == (32, 1, 1)
    with pytest.raises(ValueError, match="stride must be >= 0"):
        TextEncoder(str(tiny_bert), stride=-1)


@torch.no_grad()
def test_stitched_windows_match_the_backbone_on_each_window(windowed: TextEncoder):
    words, _ = long_sentence()
    inputs, _ = windowed.tokenize_words([words, ["jean", "unaffable", "flew"]])
    n = int(inputs["attention_mask"][0].sum())
    seen = []
    hook = windowed.backbone.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["input_ids"].shape),
                                                   with_kwargs=True)
    try:
        out = windowed(inputs)
    finally:
        hook.remove()
    # 30 text pieces per window, 8 shared: windows start every 22 pieces; the short row is one window
    width, step = 30, 22
    n_windows = 1 + -(-(n - 2 - width) // step)
    assert seen == [(n_windows + 1, 32)]
    assert out.tokens.shape == (2, n, 32) and out.mask.tolist() == inputs["attention_mask"].bool().tolist()
    torch.testing.assert_close(out.tokens[0], reference_windows(windowed, inputs["input_ids"][0]), rtol=0, atol=1e-5)
    # the short row in the long batch: what the backbone gives it alone; its padding is zeros
    alone, _ = windowed.tokenize_words([["jean", "unaffable", "flew"]])
    short = windowed.backbone(**alone).last_hidden_state[0]
    torch.testing.assert_close(out.tokens[1, : len(short)], short, rtol=0, atol=1e-5)
    assert torch.equal(out.tokens[1, len(short):], torch.zeros(n - len(short), 32))
    torch.testing.assert_close(out.pooled[1], short.mean(0), rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_batch_that_fits_one_window_is_encoded_as_before(windowed: TextEncoder):
    inputs, _ = windowed.tokenize_words([["jean", "unaffable", "damme"], ["paris"]])
    assert inputs["input_ids"].shape[1] <= windowed.window
    out = windowed(inputs)
    assert torch.equal(out.tokens, windowed.backbone(**inputs).last_hidden_state)  # bitwise: no windows
    # classification keeps truncating at max_length: one window, as before
    text = windowed.tokenize([" ".join(long_sentence()[0])])
    assert text["input_ids"].shape == (1, 32)


def test_gradients_reach_the_backbone_through_the_windows(tiny_bert: Path):
    enc = TextEncoder(str(tiny_bert), trainable="full", max_length=32, stride=8)
    inputs, _ = enc.tokenize_words([long_sentence(60)[0]])
    assert inputs["input_ids"].shape[1] > 32
    out = enc(inputs)
    # a random read-out: the plain sum of a LayerNorm's outputs has no gradient (it is constant)
    weights = torch.randn(5, out.tokens.shape[-1], generator=torch.Generator().manual_seed(0))
    (out.tokens[0, -5:] * weights).sum().backward()  # the last pieces come from the last window
    grad = enc.backbone.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@torch.no_grad()
def test_a_300_word_sentence_gets_one_prediction_per_word(tiny_bert: Path):
    cfg = load_config(None, ["data.modalities=[text]", "head.name=token", "fusion.name=text_tokens",
                             "fusion.hidden_dim=16", "encoders.text.source=tiny-bert",
                             "encoders.text.max_length=32", "encoders.text.stride=8"])
    model = build_model(cfg, num_classes=len(TAGS), classes=TAGS).eval()
    assert (model.encoders["text"].window, model.encoders["text"].stride) == (32, 8)
    words, tags = long_sentence()
    codec = build_codec("token", TAGS)
    samples = [{"index": 0, "words": words, "label": codec.encode(tags)},
               {"index": 1, "words": ["paris", "."], "label": codec.encode(["B-LOC", "O"])}]
    batch = Collator(["text"], dict(model.encoders), head="token")(samples)
    logits = model(batch)
    preds = decode("token", logits, batch, TAGS, [words, ["paris", "."]])
    assert [len(p["prediction"]) for p in preds] == [300, 2] and preds[0]["tokens"] == words
    true, pred = model.head.decode([logits], [batch["label"]])
    assert true == [tags, ["B-LOC", "O"]] and [len(p) for p in pred] == [300, 2]


# ---------------------------------------------------------------- the per-entity report


def test_token_report_counts_every_entity_type(tmp_path: Path):
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-SHAPE_RED", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-SHAPE_RED", "O", "B-PER"]]
    report = token_report(true, pred)
    assert list(report) == ["LOC", "PER", "SHAPE_RED", "micro avg", "macro avg", "weighted avg"]
    assert report["LOC"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 2}
    assert report["PER"] == {"precision": 0.5, "recall": 1.0, "f1-score": pytest.approx(2 / 3), "support": 1}
    assert report["micro avg"] == {"precision": pytest.approx(2 / 3), "recall": 0.5, "f1-score": pytest.approx(4 / 7),
                                   "support": 4}
    assert report["macro avg"]["f1-score"] == pytest.approx((0 + 2 / 3 + 1) / 3)
    paths = write_token_report(report, tmp_path, "test")
    assert json.loads(paths["json"].read_text()) == report
    md = paths["md"].read_text().splitlines()
    assert md[0] == "| entity | precision | recall | f1 | support |" and md[3] == "| PER | 0.500 | 1.000 | 0.667 | 1 |"
    assert paths["txt"].read_text().splitlines()[-3].split() == ["micro", "avg", "0.667", "0.500", "0.571", "4"]
    columns, rows = report_table(report)
    assert columns == ["entity", "precision", "recall", "f1", "support"] and rows[0] == ["LOC", 0.0, 0.0, 0.0, 2]
    # no entity anywhere: zeros, not NaN
    assert token_report([["O"]], [["O"]])["macro avg"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}


@pytest.fixture(scope="module")
def tags_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from mm.train import train

    cfg = load_config(None, [
        "data.task=tags", "data.modalities=[text]", "head.name=token", "fusion.name=text_tokens",
        "data.synthetic.n_train=160", "data.synthetic.n_val=16", "data.synthetic.n_test=40",
        "fusion.hidden_dim=16", "encoders.text.source=tiny-bert", "train.max_steps=4", "train.batch_size=16",
        "train.metric=entity_f1", "train.progress=false", "wandb.mode=offline",
        f"train.out_dir={tmp_path_factory.mktemp('runs')}",
    ])
    return train(cfg)


def test_training_writes_the_per_entity_report(tags_run: dict):
    from mm.analysis.evaluation import load_run
    from mm.data import resolve_dataset
    from mm.data.manifest import read_manifest
    from mm.wandb_offline import read_offline_history

    run_dir = Path(tags_run["run_dir"])
    cfg, _, _ = load_run(run_dir)
    root, _ = resolve_dataset(cfg.data)
    gold = [row["labels"]["tags"] for row in read_manifest(root / "test.jsonl")]
    n_entities = sum(tag.startswith("B-") for tags in gold for tag in tags)  # BIO: one B- per entity
    types = ["ANIMAL", "COUNT", "SHAPE_BLUE", "SHAPE_GREEN", "SHAPE_RED", "SHAPE_YELLOW"]
    assert sorted({tag[2:] for tags in gold for tag in tags if tag != "O"}) == types  # the test split has them all
    report = json.loads((run_dir / "report" / "test_report.json").read_text())
    assert list(report) == [*types, "micro avg", "macro avg", "weighted avg"]
    assert sum(report[t]["support"] for t in types) == n_entities == report["micro avg"]["support"]
    assert report["micro avg"]["f1-score"] == pytest.approx(tags_run["test"]["entity_f1"])
    assert report["micro avg"]["precision"] == pytest.approx(tags_run["test"]["entity_precision"])
    md = (run_dir / "report" / "test_report.md").read_text().splitlines()
    assert len(md) == 2 + 9 and all(line.startswith(f"| {t} |") for line, t in zip(md[2:], types, strict=False))
    assert (run_dir / "report" / "test_report.txt").read_text().split()[:5] == ["entity", "precision", "recall",
                                                                                 "f1", "support"]
    table = [row for row in read_offline_history(run_dir) if "test/entity_report._type" in row]
    assert [(row["test/entity_report._type"], row["test/entity_report.nrows"]) for row in table] == [("table-file", 9)]
    # the predictions for scripts/compare.py (word-level tag ids per sentence) and the metric's interval
    from mm.analysis.stats import Predictions, decompose

    preds = Predictions.load(run_dir / "report" / "test_predictions.npz")
    assert preds.head == "token" and preds.lengths.tolist() == [len(tags) for tags in gold]
    assert decompose(preds, "entity_f1").value() == pytest.approx(tags_run["test"]["entity_f1"])
    ci = tags_run["test_ci"]
    assert (ci["metric"], ci["n"]) == ("entity_f1", 40) and ci["low"] <= ci["value"] <= ci["high"]
    assert tags_run["test_ece"] is None


def test_predict_text_tags_each_word_of_a_token_run(tags_run: dict, capsys: pytest.CaptureFixture):
    import predict as script
    text = "two  small dogs sit beside a red   circle ."
    assert script.main([tags_run["run_dir"], "--text", text]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    classes = json.loads((Path(tags_run["run_dir"]) / "classes.json").read_text())
    assert out["id"] == 0 and out["tokens"] == text.split()
    assert len(out["prediction"]) == len(text.split()) and set(out["prediction"]) <= set(classes)


# ---------------------------------------------------------------- a cased tokenizer


def test_a_cased_checkpoint_keeps_its_casing(tiny_bert: Path, tmp_path: Path):
    """``bert-base-cased`` and the like bring ``do_lower_case=False`` with their tokenizer: the same
    loading path honours it (here a tiny BERT with a cased WordPiece vocabulary made in the test)."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Paris", "paris", "flew", "to", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    folder = tmp_path / "tiny-bert-cased"
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=False).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    cased = TextEncoder(str(folder))
    inputs, _ = cased.tokenize_words([["Paris"], ["paris"]])
    assert inputs["input_ids"].tolist() == [[2, 5, 3], [2, 6, 3]]
    uncased = TextEncoder(str(tiny_bert))  # bert-base-uncased's tokenizer lowercases
    inputs, _ = uncased.tokenize_words([["Paris"], ["paris"]])
    assert inputs["input_ids"][0].tolist() == inputs["input_ids"][1].tolist()
