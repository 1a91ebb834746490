"""The products of a Swin-T training step, F.linear (what nn.Linear and transformers' Swin use) vs
swin_hf's token_linear (oneDNN), forward and forward + backward, in GFLOP/s.

    python benchmarks/gemm.py [--threads 2] [--batch-size 8]

Why swin_hf routes its per-token linear layers through oneDNN: on CPUs where MKL's sgemm does not pick
its fastest code (AMD Zen here), oneDNN is about twice as fast. Run this on your CPU to see whether the
difference holds there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from swin_hf.fast_paths import token_linear  # noqa: E402


def swin_t_products(batch: int) -> list[tuple[str, int, int, int]]:
    """(name, tokens, in, out) of every distinct per-token product of Swin-T at 224x224."""
    shapes = []
    for stage, (side, dim) in enumerate([(56, 96), (28, 192), (14, 384), (7, 768)]):
        tokens = batch * side * side
        for name, k, n in [("qkv", dim, 3 * dim), ("proj", dim, dim), ("fc1", dim, 4 * dim), ("fc2", 4 * dim, dim)]:
            shapes.append((f"stage {stage + 1} {name}", tokens, k, n))
        if stage < 3:
            shapes.append((f"stage {stage + 1} merge", tokens // 4, 4 * dim, 2 * dim))
    return shapes


def seconds(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    best = float("inf")
    for _ in range(repeats):  # best of: the products are deterministic, noise only adds time
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}; GFLOP/s")
    print(f"{'product':<16}{'tokens x in -> out':>22}{'F.linear':>10}{'oneDNN':>9}{'ratio':>7}{'fwd+bwd F.linear':>18}{'oneDNN':>9}{'ratio':>7}")
    totals = {"linear": 0.0, "onednn": 0.0, "linear_fb": 0.0, "onednn_fb": 0.0}
    for name, tokens, k, n in swin_t_products(args.batch_size):
        x = torch.randn(tokens, k, requires_grad=True)
        weight = torch.randn(n, k, requires_grad=True)
        bias = torch.randn(n, requires_grad=True)
        grad = torch.randn(tokens, n)
        flops = 2 * tokens * k * n
        with torch.no_grad():
            t_lin = seconds(lambda: F.linear(x, weight, bias), args.repeats)
            t_dnn = seconds(lambda: token_linear(x, weight, bias), args.repeats)
        t_lin_fb = seconds(lambda: torch.autograd.grad(F.linear(x, weight, bias), (x, weight, bias), grad), args.repeats)
        t_dnn_fb = seconds(
            lambda: torch.autograd.grad(token_linear(x, weight, bias), (x, weight, bias), grad), args.repeats
        )
        for key, t in zip(totals, (t_lin, t_dnn, t_lin_fb, t_dnn_fb)):
            totals[key] += t
        print(
            f"{name:<16}{f'{tokens} x {k} -> {n}':>22}{flops / t_lin / 1e9:>10.0f}{flops / t_dnn / 1e9:>9.0f}"
            f"{t_lin / t_dnn:>6.2f}x{3 * flops / t_lin_fb / 1e9:>18.0f}{3 * flops / t_dnn_fb / 1e9:>9.0f}"
            f"{t_lin_fb / t_dnn_fb:>6.2f}x"
        )
    print(
        f"all products, once each: forward {totals['linear'] * 1e3:.0f} ms -> {totals['onednn'] * 1e3:.0f} ms "
        f"({totals['linear'] / totals['onednn']:.2f}x); forward + backward {totals['linear_fb'] * 1e3:.0f} ms -> "
        f"{totals['onednn_fb'] * 1e3:.0f} ms ({totals['linear_fb'] / totals['onednn_fb']:.2f}x)"
    )


if __name__ == "__main__":
    main()
