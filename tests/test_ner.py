"""NER as the worked example prints it: sentences longer than the window, the per-entity report,
``predict.py --text`` on a token run, and a cased tokenizer."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
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
    from mm.train import RunOptions, train

    cfg = load_config(None, [
        "data.task=tags", "data.modalities=[text]", "head.name=token", "fusion.name=text_tokens",
        "data.synthetic.n_train=160", "data.synthetic.n_val=16", "data.synthetic.n_test=40",
        "fusion.hidden_dim=16", "encoders.text.source=tiny-bert", "train.max_steps=4", "train.batch_size=16",
        "train.metric=entity_f1", "wandb.mode=offline", "head.crf=true",
    ])
    return train(cfg, RunOptions(out_dir=str(tmp_path_factory.mktemp("runs")), progress=False))


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
    # the run had the CRF and (tiny-bert's tokenizer lowercases) the word features; every decoded sequence is valid
    model = load_run(run_dir)[1]
    assert model.head.crf is not None and model.head.word_features is not None
    assert all(valid(list(np.array(preds.classes)[seq])) for seq in np.split(preds.outputs, np.cumsum(preds.lengths)[:-1]))
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


# ---------------------------------------------------------------- valid tag sequences: the scheme, Viterbi, the CRF


def valid(seq: list[str]) -> bool:
    """A tag sequence is valid BIO (IOB2) or IOBES: an inside tag continues an open entity of its type,
    and under IOBES an entity opened by B- is closed by E- (written from the schemes' definitions,
    independently of ``mm.crf.allowed_transitions``)."""
    iobes = any(t[:2] in ("E-", "S-") for t in seq)
    open_type = None  # the type of the entity the previous tag leaves open
    for tag in seq:
        prefix, kind = tag[0], tag[2:]
        if prefix in ("I", "E") and open_type != kind:
            return False
        if iobes and prefix in ("O", "B", "S") and open_type is not None:
            return False
        open_type = kind if prefix in ("B", "I") and (iobes or True) else None
        if not iobes and prefix == "O":
            open_type = None
    return not (iobes and open_type is not None)


def test_the_validity_rules_of_the_tests():
    assert valid(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]) and valid([])
    assert not valid(["O", "I-PER"]) and not valid(["I-PER"]) and not valid(["B-LOC", "I-PER"])
    assert valid(["S-PER", "B-LOC", "I-LOC", "E-LOC", "O"])
    assert not valid(["B-LOC", "O", "S-PER"]) and not valid(["B-LOC", "E-PER", "S-PER"]) and not valid(["S-PER", "B-LOC"])


def test_allowed_transitions_of_bio_and_iobes():
    from mm.crf import allowed_transitions, tag_scheme

    bio = ["B-LOC", "B-PER", "I-PER", "O"]
    start, trans, end = allowed_transitions(bio)
    assert tag_scheme(bio) == "BIO" and start.tolist() == [True, True, False, True] and end.all()
    # to I-PER only from B-PER and I-PER; everything else may follow anything
    assert trans[:, 2].tolist() == [False, True, True, False] and trans[:, [0, 1, 3]].all()
    iobes = ["B-PER", "E-PER", "I-PER", "O", "S-PER"]
    start, trans, end = allowed_transitions(iobes)
    assert tag_scheme(iobes) == "IOBES"
    assert start.tolist() == [True, False, False, True, True] and end.tolist() == [False, True, False, True, True]
    assert trans.int().tolist() == [[0, 1, 1, 0, 0],   # B-PER -> E-PER | I-PER
                                    [1, 0, 0, 1, 1],   # E-PER -> B-PER | O | S-PER
                                    [0, 1, 1, 0, 0],   # I-PER -> E-PER | I-PER
                                    [1, 0, 0, 1, 1],   # O
                                    [1, 0, 0, 1, 1]]   # S-PER


def all_paths(n_tags: int, length: int) -> list[tuple[int, ...]]:
    return list(itertools.product(range(n_tags), repeat=length))


def test_crf_likelihood_and_viterbi_match_brute_force():
    from mm.crf import CRF

    tags = ["B-LOC", "B-PER", "I-PER", "O"]
    torch.manual_seed(0)
    crf = CRF(tags)
    for p in crf.parameters():
        torch.nn.init.normal_(p)
    emissions = torch.randn(3, 4, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    gold = torch.tensor([[1, 2, 3, 0], [0, 3, 0, 0], [0, 0, 0, 0]])

    def score(row: int, path: tuple[int, ...]) -> torch.Tensor:
        s = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[row, t, k] for t, k in enumerate(path))
        return s + sum(crf.transitions[a, b] for a, b in itertools.pairwise(path))

    ll = crf.log_likelihood(emissions, gold, mask)
    for row, n in ((0, 4), (1, 2)):
        log_z = torch.logsumexp(torch.stack([score(row, p) for p in all_paths(4, n)]), 0)
        torch.testing.assert_close(ll[row], score(row, tuple(gold[row, :n].tolist())) - log_z)
    assert ll[2] == 0  # an empty sentence
    # Viterbi: the best allowed path of the brute force (I-PER never first, only after B-PER / I-PER)
    decoded = crf.decode(emissions, mask)
    for row, n in ((0, 4), (1, 2)):
        allowed = [p for p in all_paths(4, n) if valid([tags[k] for k in p])]
        assert decoded[row] == list(max(allowed, key=lambda p: float(score(row, p).detach())))
    assert decoded[2] == []


def test_constrained_decoding_is_always_valid_on_random_scores():
    from mm.crf import constrained_decode

    generator = torch.Generator().manual_seed(0)
    for tags in (["B-LOC", "B-PER", "I-LOC", "I-PER", "O"], ["B-PER", "E-PER", "I-PER", "O", "S-PER", "S-LOC"]):
        scores = torch.randn(64, 9, len(tags), generator=generator).log_softmax(-1)
        lengths = torch.randint(1, 10, (64,), generator=generator)
        mask = torch.arange(9)[None] < lengths[:, None]
        independent = [[tags[k] for k in row[:n]] for row, n in zip(scores.argmax(-1).tolist(), lengths.tolist(), strict=True)]
        decoded = [[tags[k] for k in row] for row in constrained_decode(scores, mask, tags)]
        assert sum(not valid(s) for s in independent) > 10  # random scores break the scheme often...
        assert [len(s) for s in decoded] == lengths.tolist() and all(valid(s) for s in decoded)  # ...Viterbi never


def ambiguous_task() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Two-word names: "x y" is a person (B-PER I-PER) three times as often as "z y" is a place
    (B-LOC I-LOC). Word features are one-hot word ids, so the second word alone says I-PER: decoded
    word by word, every place comes out as B-LOC I-PER, an invalid sequence."""
    tags = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    words = {"x": 0, "y": 1, "z": 2, "w": 3}
    sentences = [(["x", "y", "w"], [1, 3, 4])] * 3 + [(["z", "y", "w"], [0, 2, 4])]
    feats = torch.stack([torch.nn.functional.one_hot(torch.tensor([words[w] for w in s]), 4).float() for s, _ in sentences])
    labels = torch.tensor([t for _, t in sentences])
    return feats, labels, tags


def fit_head(head: torch.nn.Module, feats: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> torch.nn.Module:
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    batch = {"label": labels}
    for _ in range(steps):
        opt.zero_grad()
        head.loss(head(feats), batch).backward()
        opt.step()
    return head


def test_the_crf_removes_the_invalid_sequences_of_independent_decoding():
    from mm.heads import TokenHead

    feats, labels, tags = ambiguous_task()
    place = ["B-LOC", "I-LOC", "O"]
    results = {}
    for name, kwargs in {"independent": {"constrained": False}, "constrained": {}, "crf": {"crf": True}}.items():
        torch.manual_seed(0)
        head = fit_head(TokenHead(4, len(tags), tags, **kwargs), feats, labels)
        true, pred = head.decode([head(feats)], [labels])
        results[name] = pred
        assert true[-1] == place
    assert results["independent"][-1] == ["B-LOC", "I-PER", "O"] and not valid(results["independent"][-1])
    for name in ("constrained", "crf"):  # both decode the place right, and every sequence is valid
        assert results[name] == [["B-PER", "I-PER", "O"]] * 3 + [place]
        if name == "crf":
            crf_head = head
    head = crf_head
    # the CRF learned it: B-LOC -> I-LOC scores above B-LOC -> I-PER (which is also forbidden at decoding)
    assert head.crf.transitions[0, 2] > head.crf.transitions[0, 3]
    assert head.metrics([head(feats)], [labels])["entity_f1"] == 1.0


# ---------------------------------------------------------------- word-shape features


def test_word_shapes():
    from mm.encoders.word_features import SHAPES, piece_shapes, word_shape

    words = ["Paris", "EU", "U.S.", "A", "McDonald", "iPhone", "1996", "1-0", "3rd", ",", "--", "paris", "日本", "Ärzte"]
    assert [SHAPES[word_shape(w)] for w in words] == [
        "title", "upper", "upper", "single_upper", "mixed", "mixed", "digits", "has_digit", "has_digit", "punct", "punct",
        "lower", "other", "title"]
    assert SHAPES[word_shape("Peter", first=True)] == "title_first"
    # each piece gets its word's shape; special tokens and padding get 0
    assert piece_shapes(["Peter", "flew", "to", "PARIS"], [None, 0, 1, 1, 2, 3, None, None]) == [
        0, SHAPES.index("title_first"), 1, 1, 1, SHAPES.index("upper"), 0, 0]


def test_word_features_default_on_for_an_uncased_tokenizer_off_for_a_cased_one(tiny_bert: Path, tmp_path: Path):
    from mm.encoders.word_features import lowercases

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Paris", "paris"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    folder = tmp_path / "cased"
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=False).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    cased, uncased = TextEncoder(str(folder)), TextEncoder(str(tiny_bert))
    assert (lowercases(cased.tokenizer), lowercases(uncased.tokenizer)) == (False, True)
    assert (cased.word_features, uncased.word_features) == (False, True)
    assert TextEncoder(str(tiny_bert), word_features=False).word_features is False
    assert TextEncoder(str(folder), word_features=True).word_features is True
    base = ["data.modalities=[text]", "head.name=token", "fusion.name=text_tokens", "fusion.hidden_dim=16"]
    for source, extra, has in ((tiny_bert, [], True), (folder, [], False), (tiny_bert, ["encoders.text.word_features=false"], False)):
        model = build_model(load_config(None, [*base, f"encoders.text.source={source}", *extra]), 4, TAGS)
        assert (model.head.word_features is not None) == has and model.head.linear.in_features == 16 + 16 * has


def capitals_task() -> tuple[list[list[str]], list[list[str]]]:
    """Capitals decide the tag: "Rose" (and "Bush", "Paris") are names, "rose" (...) are not, in the same
    sentences. An uncased tokenizer gives both spellings the same pieces."""
    sentences, tags = [], []
    for name, kind in (("rose", "PER"), ("bush", "PER"), ("paris", "PER")):
        for context in (["i", "like", "{}", "a", "lot"], ["the", "{}", "is", "here"], ["{}", "flew", "to", "paris"]):
            for cap in (True, False):
                word = name.capitalize() if cap else name
                sentences.append([word if w == "{}" else w for w in context])
                tags.append([(f"B-{kind}" if cap else "O") if w == "{}" else "O" for w in context])
    return sentences, tags


def test_word_features_let_an_uncased_model_tag_by_capitals(tiny_bert: Path):
    sentences, gold = capitals_task()
    tags = ["B-PER", "O"]
    codec = build_codec("token", tags)
    predictions = {}
    for on in (True, False):
        torch.manual_seed(0)
        cfg = load_config(None, ["data.modalities=[text]", "head.name=token", "fusion.name=text_tokens",
                                 "fusion.hidden_dim=16", "fusion.dropout=0", "encoders.text.source=tiny-bert",
                                 f"encoders.text.word_features={str(on).lower()}"])
        model = build_model(cfg, len(tags), tags)
        samples = [{"index": i, "words": s, "label": codec.encode(t)} for i, (s, t) in enumerate(zip(sentences, gold, strict=True))]
        batch = Collator(["text"], dict(model.encoders), head="token")(samples)
        assert ("word_shape" in batch) and batch["word_shape"].shape == batch["label"].shape
        with torch.no_grad():  # the backbone is frozen: its outputs once, then the fusion and head train on them
            encoded = model.encode(batch)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.03)
        model.train()
        for _ in range(100):
            opt.zero_grad()
            model.head.loss(model(batch, encoded), batch).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            true, predictions[on] = model.head.decode([model(batch, encoded)], [batch["label"]])
        assert true == gold
    assert predictions[True] == gold  # every capitalised name found, no lower-case word taken for one
    # without them the pair "Rose" / "rose" in the same sentence reads the same: the same tags, so half wrong
    pairs = list(zip(predictions[False][::2], predictions[False][1::2], strict=True))
    assert all(a == b for a, b in pairs)
    assert all(valid(p) for p in predictions[True] + predictions[False])


# ---------------------------------------------------------------- a tokens + tags manifest as documented


def write_tag_manifest(root: Path, key: str = "tags", n: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        rows = [{"tokens": ["Peter", "flew", "to", "Paris"], key: ["B-PER", "O", "O", "B-LOC"]},
                {"tokens": ["Jean", "Van", "Damme", "smiled"], key: ["B-PER", "I-PER", "I-PER", "O"]}] * (n // 2)
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_a_tokens_and_tags_manifest_needs_no_label_key(tmp_path: Path, tiny_bert: Path):
    from mm.data import build_splits, resolve_dataset, training_classes
    from mm.data.validate import check_dataset

    root = write_tag_manifest(tmp_path / "ner")
    cfg = load_config(None, [f"data.dataset={root}", "data.modalities=[text]", "head.name=token",
                             "fusion.name=text_tokens"])
    assert resolve_dataset(cfg.data, "token") == (root, "tags")
    assert resolve_dataset(cfg.data) == (root, "label")  # other heads: the key as configured
    assert check_dataset(cfg.data, head_name="token").ok
    assert training_classes(cfg.data, "token") == ["B-LOC", "B-PER", "I-PER", "O"]
    splits, _ = build_splits(cfg.data, {"text": TextEncoder(str(tiny_bert))}, head="token")
    assert splits["test"][1]["words"] == ["Jean", "Van", "Damme", "smiled"] and splits["test"][1]["label"] == [1, 2, 2, 3]
    # a manifest that does keep its tags under "label" is still read there
    labelled = write_tag_manifest(tmp_path / "at_label", key="label")
    assert resolve_dataset(load_config(None, [f"data.dataset={labelled}"]).data, "token") == (labelled, "label")


def test_a_label_key_missing_on_every_row_is_said_once_with_the_fix(tmp_path: Path):
    from mm.data.errors import ManifestError
    from mm.data.validate import check_dataset

    root = write_tag_manifest(tmp_path / "ner", key="ner_tags", n=40)
    cfg = load_config(None, [f"data.dataset={root}", "data.modalities=[text]", "head.name=token"])
    report = check_dataset(cfg.data, head_name="token", strict=False)
    assert [str(p) for p in report.problems] == [
        f"no label at key 'tags' in 120 of 120 rows ({root}/train.jsonl:1, {root}/train.jsonl:2, "
        f"{root}/train.jsonl:3, ...); set data.label_key to the key of the label (the rows have: ner_tags, tokens)"]
    # a classification manifest whose rows keep their class under "labels": the fix names that key
    for split in ("train", "val", "test"):
        (root / f"{split}.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "labels": "ab"[i % 2]}) + "\n"
                                                     for i in range(10)))
    cfg = load_config(None, [f"data.dataset={root}", "data.modalities=[text]"])
    with pytest.raises(ManifestError) as err:
        check_dataset(cfg.data, head_name="classification")
    assert str(err.value).splitlines()[1:] == [f"  no label at key 'label' in 30 of 30 rows ({root}/train.jsonl:1, "
                                               f"{root}/train.jsonl:2, {root}/train.jsonl:3, ...); the rows have "
                                               "'labels': set data.label_key=labels"]


def test_make_ner_lengths_writes_a_corpus_of_the_given_shape(tmp_path: Path):
    import make_ner_lengths

    source = tmp_path / "fortunes"
    source.mkdir()
    for topic in ("computers", "politics", "science", "songs-poems"):
        (source / topic).write_text("Peter flew to Paris, said the BBC.\n%\nall quiet here 42 times\n%\n" * 20)
    out = tmp_path / "out"
    assert make_ner_lengths.main([str(out), "--train", "50", "--val", "7", "--test", "9", "--source", str(source)]) == 0
    rows = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 50, "val": 7, "test": 9}
    for row in rows["train"]:
        assert 1 <= len(row["tokens"]) <= 113 and len(row["tags"]) == len(row["tokens"])
        assert row["tags"] == ["B-MISC" if i and w[0].isupper() else "O" for i, w in enumerate(row["tokens"])]
    assert make_ner_lengths.main([str(out), "--source", str(tmp_path / "none")]) == 2
