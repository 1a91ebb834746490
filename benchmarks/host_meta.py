"""The host's share of a GPU training step, measured without a GPU: every model on PyTorch's "meta" device.

    python benchmarks/host_meta.py                       # Swin-T, batch 64, 1 thread, ours/transformers/timm
    python benchmarks/host_meta.py --batch-size 256 --rounds 9

Meta tensors carry shapes and dtypes but no data, so an operator costs only its Python, the dispatcher and
shape inference: what the host does to issue a step, with no arithmetic. Our model takes its non-CPU code
paths there (those CUDA takes: one MLP tile, stochastic depth as a mask, no sample selection), at the real
sizes. Not measured: kernel launches, the CUDA caching allocator, autocast, and any wait on the device;
BENCHMARKS.md ("Session 10") compares it with the H200's profile.

A step is forward with labels (cross-entropy) + backward + dropping the gradients; no optimizer (fused
AdamW has no meta kernel). The report is the median over alternating rounds, and the number of operators
one step dispatches (forward and backward).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from throughput import PLAIN_MLP, build_models, logits_of, with_flag


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def meta_step(model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor):
    def step():
        torch.nn.functional.cross_entropy(logits_of(model, batch), labels).backward()
        for p in model.parameters():
            p.grad = None

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="swin-tiny-patch4-window7-224")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=5, help="steps per timed round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = {name: m.to("meta").train() for name, m in build_models(args.model).items()}
    size = models["ours"].config.image_size
    batch = torch.empty(args.batch_size, 3, size, size, device="meta")
    labels = torch.zeros(args.batch_size, dtype=torch.long, device="meta")
    steps = {name: meta_step(m, batch, labels) for name, m in models.items()}
    steps[PLAIN_MLP] = with_flag("LEAN_MLP", False, meta_step(models["ours"], batch, labels))

    ops = {}
    for name, step in steps.items():
        step()  # warm-up: geometry caches, lazy initialisation
        with _CountOps() as counter:
            step()
        ops[name] = sum(counter.counts.values())
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                step()
            times[name].append((time.perf_counter() - start) / args.iters * 1e3)

    print(f"{args.model}, batch {args.batch_size}, meta device, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'':<18}{'host ms/step':>14}{'operators':>11}{'vs transformers':>17}")
    reference = statistics.median(times["transformers"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<18}{median:>14.1f}{ops[name]:>11}{reference / median:>16.2f}x")


if __name__ == "__main__":
    main()
