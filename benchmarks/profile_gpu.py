"""Where a GPU step goes, ours vs transformers' (and timm's): kernel time of one step, by kernel.

    python benchmarks/profile_gpu.py --batch-size 256 --dtype bf16            # inference
    python benchmarks/profile_gpu.py --mode train --batch-size 64 --top 20
    python benchmarks/profile_gpu.py --compile                                # torch.compile'd models

On a GPU torch.profiler reads each kernel's own time from CUPTI, so these times are the device's, not
the inflated CPU op times that profile_step.py avoids the profiler for. Per implementation it prints the
step's wall time (CUDA events), the host's time to issue it (the step's Python and dispatch, timed
from a synchronized start to the return of the last call, without waiting for the GPU), the kernels'
total (a wall above the kernels' total is the GPU waiting for the host), the kernel count, the costliest
kernels and the operators that take the most host time (profiler-inflated, but in the right order).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import build_models, make_step  # noqa: E402


def kernel_times(prof) -> dict[str, tuple[float, int]]:
    """{kernel name: (total device ms, calls)} over everything the profiler saw."""
    out = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        ms, calls = out.get(event.name, (0.0, 0))
        out[event.name] = (ms + event.time_range.elapsed_us() / 1000, calls + 1)
    return out


def profile_one(name, model, args, batch, labels) -> None:
    step = make_step(torch.compile(model) if args.compile else model, args.mode, args.dtype, batch, labels, "cuda")
    for _ in range(3):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(args.steps):
        step()
    end.record()
    torch.cuda.synchronize()
    wall = start.elapsed_time(end) / args.steps
    host = []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        host.append(time.perf_counter() - t0)  # until the last launch returned; a full launch queue would block
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    kernels = kernel_times(prof)
    total = sum(ms for ms, _ in kernels.values()) / args.steps
    launches = sum(calls for _, calls in kernels.values()) // args.steps
    issue = statistics.median(host) * 1000
    print(f"\n== {name}: step {wall:.2f} ms wall, host {issue:.2f} ms to issue it, kernels {total:.2f} ms ({launches} launches per step)")
    for kernel, (ms, calls) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"  {ms / args.steps:8.3f} ms {calls // args.steps:5d}x  {kernel[:110]}")
    print("  host: operators by self CPU time (profiled), per step")
    averages = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
    for e in averages:
        print(f"  {e.self_cpu_time_total / 1000 / args.steps:8.3f} ms {e.count // args.steps:5d}x  {e.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="swin-tiny-patch4-window7-224")
    parser.add_argument("--mode", choices=("train", "infer"), default="infer")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--compile", action="store_true", help="torch.compile each model (fixed shapes)")
    args = parser.parse_args()
    models = build_models(args.model)
    torch.manual_seed(0)
    batch = torch.randn(args.batch_size, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 1000, (args.batch_size,), device="cuda")
    compiled = " compiled" if args.compile else ""
    print(f"{args.model} batch {args.batch_size} {args.mode} {args.dtype}{compiled} | {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name, model in models.items():
        try:
            profile_one(name, model.cuda(), args, batch, labels)
        except Exception as error:  # noqa: BLE001 - one implementation failing still leaves the others' profiles
            print(f"\n== {name}: failed: {type(error).__name__}: {error}")
        model.cpu()


if __name__ == "__main__":
    main()
