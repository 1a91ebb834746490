"""The product roofline of a Swin step on this machine, and the largest ratio ours/transformers it allows.

    python benchmarks/roofline.py                   # Swin-T, batch 8: train fp32, infer fp32, infer bf16
    python benchmarks/roofline.py --batch-size 32 --steps 3

Ours and transformers' Swin do the same matrix products, except that ours skips the residual branches
stochastic depth drops in training. A step can be no faster than its products at the best rate this CPU
reaches on a large, well-shaped product:

    step time >= products' FLOPs / best product rate

The script
  1. counts the products of one step (forward, and backward in training) on transformers' model with
     torch's FlopCounterMode, eager attention so that QK^T and PV are counted too;
  2. subtracts the share of them ours skips: each block's two branches, times that block's drop rate;
  3. measures the best fp32 and bf16 product rates here: a large square product and two Swin-shaped
     ones through oneDNN (token_linear) and MKL (torch.mm), the best median of all;
  4. times both models' steps (alternating, median), as in throughput.py.
It prints the product-only step time, the measured times, and the largest ratio ours/transformers that
any implementation doing ours' products could reach (every other op free): a target above it cannot be
met on this machine by the same arithmetic.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import build_models, make_step, time_alternating  # noqa: E402

from swin_hf.fast_paths import token_linear  # noqa: E402
from swin_hf.modeling_swin import SwinBlock  # noqa: E402


def best_product_rate(dtype: torch.dtype) -> float:
    """GFLOP/s of the fastest of oneDNN (token_linear) and MKL (torch.mm) over a square product and two
    Swin-shaped ones (median of 5 each): the rate a step's products could at best all run at here."""
    rates = []
    for tokens, k, n in ((2048, 2048, 2048), (4096, 384, 1536), (3136, 192, 768)):
        x, w = torch.randn(tokens, k).to(dtype), torch.randn(n, k).to(dtype)
        for product in (lambda: token_linear(x, w), lambda: x @ w.t()):
            product()
            times = []
            for _ in range(5):
                start = time.perf_counter()
                product()
                times.append(time.perf_counter() - start)
            rates.append(2 * tokens * k * n / statistics.median(times) / 1e9)
    return max(rates)


def count_products(model, batch: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """FlopCounterMode's counts (per module name and "Global") of a forward (labels None, no autograd) or a
    forward + backward of cross-entropy, with eager attention (SDPA's CPU kernel is not in its table)."""
    attn = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            if labels is None:
                with torch.no_grad():
                    model(batch)
            else:
                torch.nn.functional.cross_entropy(model(batch).logits, labels).backward()
    finally:
        model.config._attn_implementation = attn
        model.zero_grad(set_to_none=True)
    return counter.get_flop_counts()


def step_products(theirs, ours, mode: str, batch: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(GFLOP of transformers' step, GFLOP ours does in expectation), products only.

    A Swin block is its two residual branches, and ours skips both for a sample with the block's drop
    rate p. A branch's backward products are twice its forward ones (input and weight gradients, or
    both operands of QK^T and PV), so ours does 3 p F_block fewer in expectation, F_block being the
    block's forward products. (Forward counts per module are exact; FlopCounterMode's attribution of
    backward ops to modules is not, so only the step's total is taken from the backward count.)
    """
    theirs.train(mode == "train")
    total = sum(count_products(theirs, batch, labels if mode == "train" else None)["Global"].values()) / 1e9
    if mode != "train":
        return total, total
    theirs.eval()  # forward per block, every branch computed
    forward = count_products(theirs, batch, None)
    blocks = sorted((name for name in forward if name.split(".")[-2:-1] == ["blocks"]), key=_block_order)
    rates = [block.drop_path for block in ours.modules() if isinstance(block, SwinBlock)]
    skipped = sum(3 * p * sum(forward[name].values()) / 1e9 for name, p in zip(blocks, rates, strict=True))
    return total, total - skipped


def _block_order(name: str) -> tuple[int, int]:
    """(stage, block) of a module name like '...layers.2.blocks.5'."""
    parts = name.split(".")
    return int(parts[-3]), int(parts[-1])


def measured_step_s(models: dict, mode: str, dtype: str, batch, labels, rounds: int) -> dict[str, float]:
    """Median seconds per step of each model, timed as throughput.py times them (alternating rounds)."""
    steps = {name: make_step(m, mode, dtype, batch, labels, "cpu") for name, m in models.items()}
    rates = time_alternating(steps, len(batch), warmup=1, rounds=rounds, iters=1, device="cpu")
    return {name: len(batch) / r["median"] for name, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="swin-tiny-patch4-window7-224")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and mode")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = build_models(args.model, with_timm=False)
    ours, theirs = models["ours"], models["transformers"]
    torch.manual_seed(0)
    size = ours.config.image_size
    batch, labels = torch.randn(args.batch_size, 3, size, size), torch.randint(0, 1000, (args.batch_size,))
    peak = {"fp32": best_product_rate(torch.float32), "bf16": best_product_rate(torch.bfloat16)}
    print(f"{args.model} batch {args.batch_size}, {args.threads} threads, torch {torch.__version__}")
    print(f"best product rate here: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    print("| step | products GFLOP (theirs / ours) | products alone at the best rate, ours | "
          "measured ms (ours / transformers) | ratio: measured | ratio: largest possible |")  # fmt: skip
    print("|---|---|---:|---|---:|---:|")
    theirs_fp32_infer = None
    for mode, dtype in (("train", "fp32"), ("infer", "fp32"), ("infer", "bf16")):
        flops_theirs, flops_ours = step_products(theirs, ours, mode, batch, labels)
        measured = measured_step_s(models, mode, dtype, batch, labels, args.steps)
        if mode == "infer" and dtype == "fp32":
            theirs_fp32_infer = measured["transformers"]
        reference = theirs_fp32_infer if dtype == "bf16" else measured["transformers"]
        bound = flops_ours / peak[dtype]  # seconds
        label = f"{mode} {dtype}" + (" (vs transformers' fp32)" if dtype == "bf16" else "")
        print(
            f"| {label} | {flops_theirs:.0f} / {flops_ours:.0f} | {bound * 1e3:.0f} ms | "
            f"{measured['ours'] * 1e3:.0f} / {measured['transformers'] * 1e3:.0f} | "
            f"{reference / measured['ours']:.2f}x | {reference / bound:.2f}x |"
        )


if __name__ == "__main__":
    main()
