"""Length-grouped batches (``data.bucket_by_length``): which batches, from which lengths, and exact resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import mm.train as mm_train
from mm.config import load_config
from mm.data.cached import CachedSplit, FeatureTable
from mm.data.manifest import ManifestDataset
from mm.encoders import SpectrogramEncoder, TextEncoder
from mm.run.options import RunOptions
from mm.run.runtime import epoch_batches, sort_lengths

# Lengths 0..99, shuffled: every sample's length differs, so sorted batches are unambiguous.
LENGTHS = torch.randperm(100, generator=torch.Generator().manual_seed(1)).tolist()


def padding_share(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of a batch's padded positions (to its longest sample) that are padding, over all batches."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def test_random_batches_are_unchanged_without_lengths():
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 100_003 + 2)).tolist()
    assert epoch_batches(10, 4, seed=3, epoch=2) == [perm[0:4], perm[4:8], perm[8:10]]


def test_length_grouped_batches_sort_within_pools_and_shuffle_batches():
    batches = epoch_batches(100, 8, seed=0, epoch=0, lengths=LENGTHS, pool=4)
    # Every sample once; full batches, the short one last.
    assert sorted(i for b in batches for i in b) == list(range(100))
    assert [len(b) for b in batches] == [8] * 12 + [4]
    # Each batch is a run of its pool (32 samples of the epoch's permutation) sorted by length.
    perm = torch.randperm(100, generator=torch.Generator().manual_seed(0)).tolist()
    pools = [sorted(perm[s : s + 32], key=LENGTHS.__getitem__) for s in range(0, 100, 32)]
    runs = [pool[k : k + 8] for pool in pools for k in range(0, len(pool), 8)]
    assert sorted(map(tuple, batches)) == sorted(map(tuple, runs))
    # The batch order is shuffled: not the pools' short-to-long order.
    assert batches != runs
    # Deterministic from (seed, epoch); another epoch or seed groups differently.
    assert batches == epoch_batches(100, 8, seed=0, epoch=0, lengths=LENGTHS, pool=4)
    assert batches != epoch_batches(100, 8, seed=0, epoch=1, lengths=LENGTHS, pool=4)
    assert batches != epoch_batches(100, 8, seed=1, epoch=0, lengths=LENGTHS, pool=4)


def test_length_grouped_batches_waste_less_padding():
    random = padding_share(epoch_batches(100, 8, 0, 0), LENGTHS)
    grouped = {pool: padding_share(epoch_batches(100, 8, 0, 0, LENGTHS, pool), LENGTHS) for pool in (1, 4, 13)}
    assert grouped[1] == pytest.approx(random)  # a pool of one batch sorts nothing that matters
    assert random > 0.4 > grouped[4] > grouped[13]
    assert grouped[13] < 0.1  # one pool: batches of 8 consecutive lengths


def test_sort_lengths_one_or_several_modalities():
    assert sort_lengths({}, [0, 1]) is None
    assert sort_lengths({"text": [3, 5, 7]}, [2, 0]) == [7.0, 3.0]
    # Several: each over its longest in the subset, summed.
    assert sort_lengths({"audio": [100, 400, 200], "text": [4, 2, 8]}, [0, 1, 2]) == [0.75, 1.25, 1.5]


@pytest.fixture(scope="module")
def text_audio_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lengths")
    (root / "a").mkdir()
    for name, frames, rate in (("short", 4000, 8000), ("long", 64000, 16000)):
        sf.write(root / "a" / f"{name}.wav", np.zeros(frames, dtype=np.float32), rate)
    rows = [{"text": "a b", "audio": "a/short.wav", "label": "x"},
            {"text": "one two three four five six seven eight nine ten", "label": "y"},
            {"audio": "a/long.wav", "label": "x"}]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_dataset_lengths_text_pieces_and_audio_samples(text_audio_folder, tiny_bert):
    text = TextEncoder("tiny-bert", max_length=8)
    audio = SpectrogramEncoder("tiny-cnn", pretrained=False, sample_rate=16000, max_s=3.0)
    ds = ManifestDataset(text_audio_folder, "train", {"text": text, "audio": audio}, "label", ["x", "y"])
    lengths = ds.lengths()
    # Word pieces with [CLS]/[SEP], truncated at max_length: what the collated attention mask counts.
    pieces = [int(text.collate([ds.rows[i]["text"]])["attention_mask"].sum()) for i in (0, 1)]
    assert lengths["text"] == [*pieces, 0] and pieces[1] == 8
    # Samples at 16 kHz from the file header: 0.5 s at 8 kHz -> 8000; 4 s cropped to max_s -> 48000.
    assert lengths["audio"] == [8000, 0, 48000]
    # Pictures have no length; a restricted copy (the feature cache's) sees only its modalities.
    cached = CachedSplit(ds, {"text": FeatureTable(torch.zeros(3, 2), torch.zeros(8, 2), torch.zeros(8, dtype=torch.bool),
                                                   torch.tensor([0, 3, 7, 7]), torch.ones(3, dtype=torch.bool))})
    assert cached.lengths() == {"audio": [8000, 0, 48000], "text": [3, 4, 0]}
    assert ds.lengths() is lengths  # read once


RUN = ["data.synthetic.n_train=192", "data.synthetic.n_val=64", "data.synthetic.n_test=64", "train.batch_size=16",
       "train.max_steps=12", "train.eval_every=4", "encoders.image.source=tiny-vit", "encoders.text.source=tiny-bert",
       "encoders.text.trainable=full", "wandb.mode=disabled",
       "data.bucket_by_length=true"]


def test_resume_with_bucketing_is_bitwise_identical(tmp_path, monkeypatch):
    cfg = lambda out: load_config(None, [*RUN, "name=run"])  # noqa: E731
    opts = lambda out, **kw: RunOptions(out_dir=str(out), progress=False, plots=False, **kw)  # noqa: E731
    pieces: dict[int, int] = {}  # sample -> word pieces, read off the batches the run trained on
    seen: list[list[int]] = []
    real_step = mm_train.train_step

    def recording(model, batch, *a, **k):
        seen.append(batch["index"].tolist())
        pieces.update(zip(seen[-1], batch["text"]["attention_mask"].sum(1).tolist(), strict=True))
        return real_step(model, batch, *a, **k)

    monkeypatch.setattr(mm_train, "train_step", recording)
    full = mm_train.train(cfg(tmp_path / "a"), opts(tmp_path / "a"))
    # 12 steps of 16 are the whole epoch once; bucketing acted: far less padding than random batches.
    assert len(seen) == 12 and sorted(i for b in seen for i in b) == list(range(192))
    lengths = [pieces[i] for i in range(192)]
    assert padding_share(seen, lengths) < padding_share(epoch_batches(192, 16, 0, 0), lengths) / 2

    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] > 7:  # dies during step 8, after the checkpoint at step 4
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(mm_train, "train_step", crashing)
    interrupted = cfg(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        mm_train.train(interrupted, opts(tmp_path / "b"))
    monkeypatch.setattr(mm_train, "train_step", real_step)
    resumed = mm_train.train(interrupted, opts(tmp_path / "b", resume=True))

    assert resumed["steps"] == full["steps"] == 12
    assert resumed["val"] == full["val"] and resumed["test"] == full["test"]
    a = load_file(Path(full["run_dir"]) / "checkpoints/last/model.safetensors")
    b = load_file(Path(resumed["run_dir"]) / "checkpoints/last/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
