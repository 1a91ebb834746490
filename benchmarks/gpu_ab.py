"""A/B of swin_hf's attention on a CUDA GPU, with transformers' and timm's Swin timed in the same rounds.

    python benchmarks/gpu_ab.py --variants eager,sdpa --deadline 280

Variants: our model's `attn_implementation`: "eager" (q k^T + B, softmax, @ v as separate ops; what the
default "auto" runs on CUDA) and "sdpa" (F.scaled_dot_product_attention, PyTorch's choice of kernel).
Phases, each started only while the deadline allows: bf16 inference at batch 256 and 64 for every variant;
a bf16 training step at batch 64; torch.compile'd inference at batch 256 for the first variant and timm.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import build_models, logits_of, make_step, sync, time_alternating  # noqa: E402


def with_attention(model, variant: str):
    """A copy of our model whose attn_implementation is `variant`."""
    if variant not in ("auto", "eager", "sdpa"):
        raise SystemExit(f"unknown variant {variant!r}: auto, eager or sdpa")
    model = copy.deepcopy(model)
    model.set_attn_implementation(variant)
    return model


def random_batch(size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (size, 3, 224, 224), labels (size,)) on `device`."""
    return torch.randn(size, 3, 224, 224, device=device), torch.randint(0, 1000, (size,), device=device)


def table(title: str, timings: dict) -> None:
    print(f"\n{title}")
    best = max(t["median"] for t in timings.values())
    for name, t in timings.items():
        print(f"  {name:<20}{t['median']:>10.0f} images/s  {t['median'] / best:5.2f}x the fastest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="eager,sdpa")
    parser.add_argument("--deadline", type=float, default=280, help="seconds; later phases are skipped after it")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", default="256,64")
    parser.add_argument("--train-batch-size", type=int, default=64)
    args = parser.parse_args()
    start = time.perf_counter()
    left = lambda: args.deadline - (time.perf_counter() - start)  # noqa: E731
    variants = args.variants.split(",")
    device = args.device
    models = {name: m.to(device) for name, m in build_models("swin-tiny-patch4-window7-224").items()}
    variants_of = {v: with_attention(models["ours"], v) for v in variants}
    torch.manual_seed(0)

    # every variant against fp32 (transformers' logits in fp32 for the same weights)
    x = torch.randn(8, 3, 224, 224, device=device)
    with torch.inference_mode():
        reference = logits_of(models["transformers"].eval(), x).float()
        for variant, model in variants_of.items():
            fp32 = logits_of(model.eval(), x)
            with torch.autocast(device, dtype=torch.bfloat16):
                bf16 = logits_of(model, x).float()
            print(f"{variant}: max |fp32 - transformers fp32| {(fp32 - reference).abs().max():.1e}, "
                  f"max |bf16 - transformers fp32| {(bf16 - reference).abs().max():.1e}")

    for size in map(int, args.batch_sizes.split(",")):
        if left() < 30:
            print(f"\n(inference at batch {size}: skipped, deadline)")
            continue
        batch, labels = random_batch(size, device)
        steps = {f"ours {v}": make_step(m, "infer", "bf16", batch, labels, device) for v, m in variants_of.items()}
        steps.update({n: make_step(m, "infer", "bf16", batch, labels, device) for n, m in models.items() if n != "ours"})
        table(f"bf16 inference, batch {size}, eager", time_alternating(steps, size, 2, 5, 10, device))

    if left() > 40:
        size = args.train_batch_size
        batch, labels = random_batch(size, device)
        steps = {}
        for name, model in models.items():
            try:
                steps[name] = make_step(model, "train", "bf16", batch, labels, device)
                steps[name]()
            except Exception as error:  # noqa: BLE001
                print(f"{name} training failed: {type(error).__name__}: {error}")
                steps.pop(name, None)
        table(f"bf16 training (AdamW fused), batch {size}, eager", time_alternating(steps, size, 2, 5, 5, device))
        for model in models.values():
            model.eval()

    size = int(args.batch_sizes.split(",")[0])
    batch, labels = random_batch(size, device)
    compiled = {}
    for name, model in (("ours " + variants[0], variants_of[variants[0]]), ("timm", models.get("timm"))):
        if model is None or left() < 80:
            print(f"\n(compiled {name}: skipped)")
            continue
        t0 = time.perf_counter()
        step = make_step(torch.compile(model), "infer", "bf16", batch, labels, device)
        step()
        sync(device)
        print(f"compiled {name} in {time.perf_counter() - t0:.0f}s")
        compiled[name] = step
    if compiled:
        table(f"bf16 inference, batch {size}, torch.compile", time_alternating(compiled, size, 2, 5, 10, device))
    print(f"\ndone in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
