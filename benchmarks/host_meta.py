"""The host's share of a GPU training step, measured without a GPU: every model on PyTorch's "meta" device.

    python benchmarks/host_meta.py                       # Swin-T, batch 64, 1 thread, ours/transformers/timm
    python benchmarks/host_meta.py --batch-size 256 --rounds 9

Meta tensors carry shapes and dtypes but no data, so an operator costs only its Python, the dispatcher and
shape inference: what the host does to issue a step, with no arithmetic. Our model runs no speed path there
(each is for CPU tensors), as on CUDA, at the real sizes. Not measured: kernel launches, the CUDA caching allocator, autocast, and any wait on the device;
BENCHMARKS.md ("GPU") compares it with an H200's profile.

A step is forward with labels (cross-entropy) + backward + dropping the gradients; no optimizer (fused
AdamW has no meta kernel). Timing is throughput.time_alternating's (alternating rounds, each after
one untimed step; the median), and the operators one step dispatches (forward and backward) are
counted with profile_step.OpTimer.
"""

from __future__ import annotations

import argparse

import torch

from profile_step import OpTimer
from throughput import build_models, logits_of, time_alternating


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

    ops = {}
    for name, step in steps.items():
        step()  # warm-up: geometry caches, lazy initialisation
        with OpTimer() as counter:
            step()
        ops[name] = sum(calls for calls, _, _ in counter.times.values())
    timings = time_alternating(steps, args.batch_size, 0, args.rounds, args.iters, "meta")
    ms = {name: args.batch_size / t["median"] * 1e3 for name, t in timings.items()}  # images/s -> ms/step

    print(f"{args.model}, batch {args.batch_size}, meta device, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'':<18}{'host ms/step':>14}{'operators':>11}{'vs transformers':>17}")
    for name, step_ms in ms.items():
        print(f"{name:<18}{step_ms:>14.1f}{ops[name]:>11}{ms['transformers'] / step_ms:>16.2f}x")


if __name__ == "__main__":
    main()
