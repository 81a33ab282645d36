"""Memory savers and speed switches: gradient checkpointing per backbone (same gradients, less
stored activation), and ``train.compile`` (the same run through ``torch.compile``)."""

import pytest
import soundfile
import torch

import mm.train as mm_train
from mm.config import load_config
from mm.encoders import build_encoder
from mm.encoders.policies import enable_grad_checkpointing


def _grads(encoder, inputs):
    """Gradients of a loss, and how many module forwards ran (recomputation in backward adds some)."""
    torch.manual_seed(0)
    encoder.train()
    calls = [0]
    hooks = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for m in encoder.backbone.modules()]
    out = encoder(inputs)
    (out.pooled.square().sum() + out.tokens.mean()).backward()
    for h in hooks:
        h.remove()
    return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}, calls[0]


@pytest.mark.parametrize("modality,source,kind", [("text", "tiny-bert", None), ("image", "tiny-vit", None),
                                                  ("audio", "tiny-cnn", "spectrogram"),
                                                  ("audio", "tiny-wav2vec2", "wav2vec2")])
def test_grad_checkpointing_gives_the_same_gradients(modality, source, kind, tmp_path):
    values = {"text": ["a red circle", "two blue squares on grass"],
              "image": [torch.rand(3, 32, 32), torch.rand(3, 32, 32)],  # transformed pictures (tiny ViT: 32 px)
              "audio": ["a.wav", "b.wav"]}[modality]
    for name, n in (("a.wav", 8000), ("b.wav", 6000)):
        soundfile.write(tmp_path / name, torch.randn(n, generator=torch.Generator().manual_seed(n)).numpy() * 0.1, 16000)
    plain = build_encoder(modality, kind, source=source, trainable="full")
    saved = build_encoder(modality, kind, source=source, trainable="full")
    enable_grad_checkpointing(saved)
    backbone = saved.backbone
    assert getattr(backbone, "is_gradient_checkpointing", False) or getattr(backbone, "grad_checkpointing", False)
    inputs = plain.collate([plain.load(v, tmp_path, False) for v in values] if modality == "audio" else values)
    (a, calls_plain), (b, calls_saved) = _grads(plain, inputs), _grads(saved, inputs)
    assert calls_saved > calls_plain  # blocks really ran again during backward
    assert a.keys() == b.keys() and len(a) > 4
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_grad_checkpointing_from_the_config(tmp_path):
    from mm.model import build_model

    cfg = load_config(None, ["encoders.image.source=tiny-vit", "encoders.text.source=tiny-bert",
                             "encoders.text.trainable=full", "encoders.text.grad_checkpointing=true",
                             "encoders.image.grad_checkpointing=true"])
    model = build_model(cfg, num_classes=4)
    assert model.encoders["text"].backbone.is_gradient_checkpointing
    assert model.encoders["image"].backbone.grad_checkpointing


@pytest.mark.slow
def test_compiled_run_matches_the_eager_run(tmp_path):
    args = ["data.synthetic.n_train=96", "data.synthetic.n_val=32", "data.synthetic.n_test=32",
            "encoders.image.source=tiny-vit", "train.max_steps=3", "train.batch_size=16", "fusion.dropout=0.0",
            "wandb.mode=disabled"]
    opts = lambda out: mm_train.RunOptions(out_dir=str(out), progress=False, plots=False)  # noqa: E731
    eager = mm_train.train(load_config(None, args), opts(tmp_path / "e"))
    compiled = mm_train.train(load_config(None, [*args, "train.compile=true"]), opts(tmp_path / "c"))
    assert compiled["test"]["accuracy"] == eager["test"]["accuracy"]
    assert compiled["val"]["loss"] == pytest.approx(eager["val"]["loss"], rel=1e-4)


def test_tf32_only_for_reduced_precision_on_cuda():
    from mm.run.runtime import fast_float32

    before = torch.backends.cuda.matmul.allow_tf32  # torch's flag object is not monkeypatch-able
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for precision in ("auto", "bf16", "fp16", "fp32"):  # a CPU has no TF32: nothing is switched
            assert fast_float32(torch.device("cpu"), precision) is False
        assert fast_float32(torch.device("cuda"), "fp32") is False  # fp32 stays IEEE (no CUDA call made)
        assert torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tf32_on_for_bf16_on_cuda():
    from mm.run.runtime import fast_float32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        assert fast_float32(torch.device("cuda"), "bf16") is True
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
