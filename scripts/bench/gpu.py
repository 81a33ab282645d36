#!/usr/bin/env python
"""Training throughput and MFU on one GPU: ViT-B/16 at 224 px and BERT-base at sequence length 128.

    python scripts/bench/gpu.py [--steps 30] [--warmup 10] [--reps 3] [--vit-batch 256] [--bert-batch 256]
                                [--compile] [--peak-tflops X] [--out runs/bench]

Both models are built from their configurations with random weights (timm ``vit_base_patch16_224``,
transformers ``BertConfig()`` with a 2-class head): no hub download, the same FLOPs as the
pretrained ones. Each training step is bf16 autocast, fused attention (timm's fused attention,
``attn_implementation="sdpa"`` for BERT), fused AdamW, TF32 matmuls for what stays in fp32; the
timed steps follow ``--warmup`` untimed ones, between two ``torch.cuda.synchronize()``, ``--reps``
times per model, interleaved (ViT BERT ViT BERT ...).

MFU = model FLOPs per second / the device's peak dense bf16 FLOP/s (``PEAK_BF16``, or
``--peak-tflops``). Model FLOPs per training sample (forward + backward = 3 x forward, the
convention of the PaLM paper's appendix B):

    6 * N * T  +  12 * L * T^2 * d

with N the parameters of the matrix multiplications (every ``nn.Linear``, and the patch-embedding
convolution, which runs once per patch), T tokens per sample (ViT: 196 patches + [CLS] = 197; BERT:
128), L layers and d the model width (the attention scores and their product with the values:
2 * T^2 * d multiply-adds each per layer, forward). Embedding lookups, norms, softmax and
activations are not counted; recomputation would not be either (there is none here).

Without a GPU it prints "no GPU, skipped" and exits 0. Measured rows go to ``<out>/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Peak dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' data sheets, matched against
# torch.cuda.get_device_name() in order (the first name contained in it wins).
PEAK_BF16 = {
    "H200": 989.4e12,  # SXM; the NVL part is rated lower: pass --peak-tflops
    "GH200": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100 NVL": 835.0e12,
    "H100": 989.4e12,  # SXM
    "H800": 989.4e12,
    "B200": 2250e12,
    "A100": 312.0e12,
    "A800": 312.0e12,
    "A10": 125.0e12,
    "L40S": 362.1e12,
    "L4": 121.0e12,
    "RTX 4090": 165.2e12,
    "RTX 3090": 71.0e12,
}


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def matmul_params(model: nn.Module) -> tuple[int, int]:
    """N of the formula, in two parts: the parameters of every ``nn.Linear`` (applied at every token) and
    of every ``nn.Conv2d`` (the patch embedding, applied at every patch)."""
    linear = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                 for m in model.modules() if isinstance(m, nn.Linear))
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    return linear, conv


def flops_per_sample(linear: int, conv: int, patches: int, tokens: int, layers: int, width: int) -> float:
    """6 N T + 12 L T^2 d, with the convolution applied to ``patches`` positions (not the [CLS] token)."""
    return 6 * (linear * tokens + conv * patches) + 12 * layers * tokens**2 * width


def vit_job(batch: int, device: torch.device) -> tuple[nn.Module, Callable[[], dict], float]:
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000).to(device)
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    linear, conv = matmul_params(model)
    flops = flops_per_sample(linear, conv, patches=196, tokens=197, layers=12, width=768)
    return model, lambda: nn.functional.cross_entropy(model(x), y), flops


def bert_job(batch: int, device: torch.device, seq: int = 128) -> tuple[nn.Module, Callable[[], dict], float]:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(num_labels=2, attn_implementation="sdpa")  # bert-base: 12 x 768, 30522 pieces
    model = BertForSequenceClassification(config).to(device)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    mask = torch.ones_like(ids)
    y = torch.randint(0, 2, (batch,), device=device)
    linear, conv = matmul_params(model)
    flops = flops_per_sample(linear, conv, patches=0, tokens=seq, layers=12, width=768)
    return model, lambda: model(input_ids=ids, attention_mask=mask, labels=y).loss, flops


def runner(model: nn.Module, loss_fn: Callable[[], torch.Tensor], compile_: bool) -> Callable[[], None]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    if compile_:
        model.forward = torch.compile(model.forward)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def timed(step: Callable[[], None], steps: int, warmup: int) -> float:
    """Seconds per step after ``warmup`` untimed steps (synchronized before and after)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--vit-batch", type=int, default=256)
    parser.add_argument("--bert-batch", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="torch.compile each model's forward")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of this GPU")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no GPU, skipped: scripts/bench/gpu.py measures CUDA training throughput (torch.cuda.is_available() "
              "is False here)")
        return 0

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # what stays in fp32 under autocast (the optimizer's own math is fp32)
    torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = peak_flops(name, args.peak_tflops)
    jobs = {"vit_b16_224": (vit_job, args.vit_batch), "bert_base_128": (bert_job, args.bert_batch)}
    built = {}
    for key, (make, batch) in jobs.items():
        model, loss_fn, flops = make(batch, device)
        built[key] = (runner(model, loss_fn, args.compile), batch, flops)
    seconds: dict[str, list[float]] = {k: [] for k in jobs}
    for rep in range(args.reps):
        for key, (step, batch, _) in built.items():
            seconds[key].append(timed(step, args.steps, args.warmup if rep == 0 else 2))
            print(f"rep {rep} {key}: {batch / seconds[key][-1]:.0f} samples/s", flush=True)

    rows: list[dict[str, Any]] = []
    for key, (_, batch, flops) in built.items():
        rates = [batch / s for s in seconds[key]]
        rate = statistics.median(rates)
        rows.append({"model": key, "batch": batch, "samples_per_s": rate, "range": [min(rates), max(rates)],
                     "flops_per_sample": flops, "model_tflops": rate * flops / 1e12,
                     "mfu": rate * flops / peak if peak else None})
    result = {"device": name, "peak_bf16_flops": peak, "torch": torch.__version__, "compile": args.compile,
              "steps": args.steps, "warmup": args.warmup, "reps": args.reps, "rows": rows,
              "command": "python scripts/bench/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{name}, peak bf16 {peak / 1e12 if peak else float('nan'):.0f} TFLOP/s\n")
    print("| model | batch | samples/s (median, range) | GFLOP/sample | TFLOP/s | MFU |\n|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "peak unknown (--peak-tflops)"
        print(f"| {r['model']} | {r['batch']} | {r['samples_per_s']:.0f} ({r['range'][0]:.0f}-{r['range'][1]:.0f}) | "
              f"{r['flops_per_sample'] / 1e9:.1f} | {r['model_tflops']:.0f} | {mfu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
