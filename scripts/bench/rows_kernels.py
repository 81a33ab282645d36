"""Rows on single pieces of a step, on this CPU: attention kernels, the optimizer step, the finiteness check.

- ``attention``: a training step (forward + backward) of the text backbone with
  ``attn_implementation="sdpa"`` (what mm loads) against ``"eager"``, on one batch of real
  sentences padded to the longest; and a timm ViT forward + backward with fused attention (timm's
  default, ``F.scaled_dot_product_attention``) against its unfused path.
- ``optimizer``: one AdamW step over the text backbone's parameters, fused (what mm builds) against
  torch's default implementation on this device.
- ``channels_last``: a CNN image backbone's forward + backward (the packaged EfficientNet-Lite0,
  batch 32 at 64 px, the default job's pictures) on channels-last input (what mm's image encoder
  passes a CNN) against the usual NCHW layout; and a ViT, to which mm passes NCHW.
- ``finite_check``: the per-step host check mm no longer makes (``bool(torch.isfinite(norm))``)
  against the device-side bookkeeping that replaced it (``NonFiniteGuard`` counters), in µs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from common import interleave, ratios, row


def timed(fn: Callable[[], Any], n: int) -> float:
    """Seconds per call of ``fn``, over ``n`` calls after one untimed call."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def attention(source: str, texts: list[str], vit: str, image_size: int, reps: int, n: int) -> dict:
    import timm
    from transformers import AutoModel, AutoTokenizer

    from mm.encoders.sources import resolve_source

    path = resolve_source(source)
    batch = dict(AutoTokenizer.from_pretrained(path)(texts, padding="longest", truncation=True, max_length=128,
                                                     return_tensors="pt"))
    models = {impl: AutoModel.from_pretrained(path, attn_implementation=impl).train() for impl in ("sdpa", "eager")}
    models["eager"].load_state_dict(models["sdpa"].state_dict())
    net = timm.create_model(vit, pretrained=False, img_size=image_size).train()
    pictures = torch.randn(8, 3, image_size, image_size)

    def text_step(impl: str):
        def step() -> None:
            models[impl](**batch).last_hidden_state.mean().backward()
        return lambda rep: {"ms": 1e3 * timed(step, n)}

    def vit_step(fused: bool):
        def step() -> None:
            for m in net.modules():
                if hasattr(m, "fused_attn"):
                    m.fused_attn = fused
            net(pictures).mean().backward()
        return lambda rep: {"ms": 1e3 * timed(step, n)}

    return interleave({"text_sdpa": text_step("sdpa"), "text_eager": text_step("eager"),
                       "vit_fused": vit_step(True), "vit_unfused": vit_step(False)}, reps)


def optimizer(source: str, reps: int, n: int) -> dict:
    from mm.encoders.text import TextEncoder

    params = [p for p in TextEncoder(source, trainable="full").parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opts = {"fused": torch.optim.AdamW(params, lr=1e-9, fused=True), "default": torch.optim.AdamW(params, lr=1e-9)}
    return interleave({k: (lambda rep, o=o: {"ms": 1e3 * timed(o.step, n)}) for k, o in opts.items()}, reps)


def layout(cnn: str, vit: str, vit_size: int, reps: int, n: int) -> dict:
    from mm.encoders.image import create_backbone

    nets = {"cnn": create_backbone(cnn).train(), "vit": create_backbone(vit, {"img_size": vit_size}, False).train()}
    pictures = {"cnn": torch.randn(32, 3, 64, 64), "vit": torch.randn(8, 3, vit_size, vit_size)}

    def step(name: str, last: bool):
        x = pictures[name].contiguous(memory_format=torch.channels_last) if last else pictures[name]
        return lambda rep: {"ms": 1e3 * timed(lambda: nets[name](x).mean().backward(), n)}

    return interleave({"cnn_nchw": step("cnn", False), "cnn_channels_last": step("cnn", True),
                       "vit_nchw": step("vit", False), "vit_channels_last": step("vit", True)}, reps)


def finite_check(reps: int, n: int) -> dict:
    norm = torch.tensor(0.5)
    counters = [torch.zeros(()) for _ in range(3)]

    def host() -> None:
        bool(torch.isfinite(norm))

    def device() -> None:
        bad = (~torch.isfinite(norm)).float()
        counters[0] += bad
        counters[1] = (counters[1] + bad) * bad
        torch.maximum(counters[2], counters[1], out=counters[2])

    return interleave({"host_check": lambda rep: {"us": 1e6 * timed(host, n)},
                       "device_counters": lambda rep: {"us": 1e6 * timed(device, n)}}, reps)


def kernel_rows(att: dict, opt: dict, check: dict, command: str, settings: dict[str, Any],
                lay: dict | None = None) -> list[dict[str, Any]]:
    rows = [
        row("attention", command, att, {"text eager / sdpa (time)": ratios(att, "ms", "text_eager", "text_sdpa"),
                                        "vit unfused / fused (time)": ratios(att, "ms", "vit_unfused", "vit_fused")},
            settings, notes="ms per forward + backward; ratio > 1: the fast kernel is faster"),
        row("optimizer", command, opt, {"default / fused (time)": ratios(opt, "ms", "default", "fused")}, settings,
            notes="ms per AdamW step over the text backbone's parameters"),
        row("finite_check", command, check, {"host check / device counters (time)":
                                             ratios(check, "us", "host_check", "device_counters")}, settings,
            notes="µs per step on the CPU, where a host read waits for nothing; on a GPU the host read also "
                  "waits for the step's kernels to finish"),
    ]
    if lay:
        rows.append(row("channels_last", command, lay, {
            "cnn nchw / channels-last (time)": ratios(lay, "ms", "cnn_nchw", "cnn_channels_last"),
            "vit nchw / channels-last (time)": ratios(lay, "ms", "vit_nchw", "vit_channels_last")}, settings,
            notes="ms per forward + backward; ratio > 1: channels-last is faster (mm uses it for CNN backbones)"))
    return rows
