import numpy as np
import pytest
import torch

from mm.encoders.base import EncoderOutput
from mm.fusion import ConcatFusion, build_fusion
from mm.heads import ClassificationHead, build_head


def outputs(dims: dict[str, int], batch: int = 3, seed: int = 0) -> dict[str, EncoderOutput]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m, d in dims.items():
        tokens = torch.randn(batch, 5, d, generator=g)
        out[m] = EncoderOutput(tokens, torch.ones(batch, 5, dtype=torch.bool), tokens.mean(1))
    return out


@pytest.mark.parametrize("dims", [{"text": 8}, {"image": 6, "text": 8}, {"audio": 4, "image": 6, "text": 8}])
def test_concat_shapes_and_gradients(dims):
    fusion = ConcatFusion(dims, hidden_dim=16, num_layers=1, dropout=0.0)
    fused = fusion(outputs(dims))
    assert fused.shape == (3, 16) and fusion.out_dim == 16
    fused.pow(2).sum().backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_concat_without_layers_is_the_normed_concatenation():
    dims = {"image": 6, "text": 8}
    fusion = ConcatFusion(dims, num_layers=0)
    assert fusion.out_dim == 14
    outs = outputs(dims)
    expected = torch.cat([torch.nn.functional.layer_norm(outs[m].pooled, (dims[m],)) for m in ("image", "text")], -1)
    torch.testing.assert_close(fusion(outs), expected)


def test_concat_ignores_dict_order():
    dims = {"audio": 4, "image": 6, "text": 8}
    torch.manual_seed(0)
    fusion = ConcatFusion(dims, hidden_dim=16).eval()
    outs = outputs(dims)
    reordered = {m: outs[m] for m in ("text", "audio", "image")}
    assert torch.equal(fusion(outs), fusion(reordered))


def test_registries_list_valid_names():
    with pytest.raises(ValueError, match=r"unknown fusion 'nope'; valid: \[.*'concat'.*'text_tokens'\]"):
        build_fusion("nope", {"text": 4})
    with pytest.raises(ValueError, match="classification"):
        build_head("nope", 4, 2)


def test_classification_metrics_on_known_data():
    head = ClassificationHead(4, 3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(pred, 3).float()
    m = head.metrics([logits[:4], logits[4:]], [labels[:4], labels[4:]])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per-class F1: class0 p=1/2 r=1/2 -> .5; class1 p=2/3 r=1 -> .8; class2 p=1 r=1/2 -> 2/3
    assert m["macro_f1"] == pytest.approx(np.mean([0.5, 0.8, 2 / 3]))
    loss = head.loss(logits * 100, {"label": labels})
    assert loss.item() == pytest.approx(2 / 6 * 100, rel=1e-4)
