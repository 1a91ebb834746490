"""Each speed path of swin_hf (fast_paths.py) against the plain model, on the machine at hand.

    python benchmarks/fast_paths.py                          # all four modes, Swin-T 224², batch 8
    python benchmarks/fast_paths.py --modes infer-fp32 --rounds 9

For every mode (fp32 / bf16 autocast, inference / training step) it builds one Swin with random weights
and times, in alternating rounds in one process (medians over rounds): the plain model (every path off),
the plain model with one path on (each path in turn), the default of this CPU (`FastPaths.for_this_cpu()`),
and transformers' Swin with the same weights. It prints images/s and the ratios to the plain model and
to transformers, and says for each path whether it pays here. Training step = forward + cross-entropy +
backward + fused AdamW step, as benchmarks/throughput.py.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import throughput  # noqa: E402  (puts the checkout's src first on the path)

from swin_hf.fast_paths import CpuFeatures, FastPaths  # noqa: E402

# each path as the change to the plain settings that turns it on
PATHS = {
    "onednn_products": dict(onednn_products=True),
    "mlp_tile_tokens=4096": dict(mlp_tile_tokens=4096),
    "inference_group_size=2^20": dict(inference_group_size=1 << 20),
    "skip_dropped_branches": dict(skip_dropped_branches=True),
}
MODES = ("infer-fp32", "infer-bf16", "train-fp32", "train-bf16")
# paths that change nothing in a mode (not timed there)
INERT = {"infer": {"skip_dropped_branches"}, "train": {"inference_group_size=2^20"}}


def measure(mode: str, args) -> dict:
    """images/s medians for one mode: {'plain': ..., path: ..., 'default': ..., 'transformers': ...}."""
    kind, dtype = mode.split("-")
    sizes = throughput.HOST_STAND_IN if args.host_stand_in else None
    models = throughput.build_models(args.model, with_timm=False, sizes=sizes)
    ours = models["ours"].to(args.device)
    torch.manual_seed(0)
    size = throughput._image_size(ours)
    batch = torch.randn(args.batch_size, 3, *size, device=args.device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=args.device)
    variants = {"plain": FastPaths.plain()}
    for name, change in PATHS.items():
        if name not in INERT[kind]:
            variants[name] = dataclasses.replace(FastPaths.plain(), **change)
    default = FastPaths.for_this_cpu()
    if default not in variants.values():
        variants["default"] = default
    steps = {}
    for name, paths in variants.items():
        model = copy.deepcopy(ours)
        model.set_fast_paths(paths)
        steps[name] = throughput.make_step(model, kind, dtype, batch, labels, args.device)
    steps["transformers"] = throughput.make_step(models["transformers"].to(args.device), kind, dtype, batch, labels, args.device)
    iters = 1 if kind == "train" else 2
    timings = throughput.time_alternating(steps, args.batch_size, args.warmup, args.rounds, iters, args.device)
    result = {name: t["median"] for name, t in timings.items()}
    result["default is"] = next((n for n, p in variants.items() if p == default), "default")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="swin-tiny-patch4-window7-224")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--host-stand-in", action="store_true", help="the model shrunk to embed_dim 12 on 64x64 images (a smoke test)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{throughput.cpu_name()} ({CpuFeatures.of_this_machine().isa}) | "
        f"torch {torch.__version__} | {args.threads} threads | commit {throughput.commit()} | {datetime.date.today()} | "
        f"{args.model} batch {args.batch_size}, {args.rounds} alternating rounds, medians"
    )
    print(f"default here: {FastPaths.for_this_cpu()}")
    for mode in args.modes:
        result = measure(mode, args)
        plain, theirs = result["plain"], result["transformers"]
        print(f"\n{mode} (default = {result.pop('default is')})")
        print(f"  {'variant':<28}{'images/s':>10}{'vs plain':>10}{'vs transformers':>17}")
        for name, rate in result.items():
            verdict = ""
            if name in PATHS:
                verdict = "  pays" if rate > plain * 1.02 else ("  costs" if rate < plain * 0.98 else "  no change")
            print(f"  {name:<28}{rate:>10.2f}{rate / plain:>9.2f}x{rate / theirs:>16.2f}x{verdict}")


if __name__ == "__main__":
    main()
