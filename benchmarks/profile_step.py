"""Where a Swin-T step spends its time, ours vs transformers' (and timm's): every aten op timed, by kind.

    python benchmarks/profile_step.py train              # forward + backward + fused AdamW, batch 8, 224x224
    python benchmarks/profile_step.py infer
    python benchmarks/profile_step.py infer --dtype bf16 # bf16 autocast
    python benchmarks/profile_step.py train --no-trim    # glibc keeps freed memory: no page faults
    python benchmarks/profile_step.py train --top 30     # also the 30 costliest (op, shapes) of each model
    python benchmarks/profile_step.py train --drop-path 0  # stochastic depth off in every model

timm's column is there when timm imports (BENCHMARKS.md, "Three implementations"). Each model runs in
its own child process (allocator state never leaks from one to the other). An op is timed with
time.perf_counter around its call, from a TorchDispatchMode that sees every aten op of forward and
backward. CPU ops are synchronous, so the times add up: on the benchmark machine they sum to ~96% of the
untimed step. torch.profiler is not used. On that machine it read a 0.75 s step as 1.5 s of self time
and inflated elementwise kernels up to 30x. Page faults per step are counted too. On that machine a
first touch of a 4 KiB page costs ~0.9 us, so a step that grows the heap and gives it back pays for it
every time. The fault time is inside the times of the ops that first write the new memory.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import build_models, import_timm, make_step  # noqa: E402

CATEGORIES = {
    # names as seen in training; under inference_mode some composite ops arrive undecomposed (linear, ...)
    "products (linear, 1x1 conv, fwd + bwd)": ("linear", "mm", "addmm", "mkldnn_convolution", "convolution", "convolution_backward", "_linear_pointwise"),
    "attention bmm / SDPA": ("bmm", "matmul", "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu"),
    "softmax": ("softmax", "_softmax", "_safe_softmax", "_softmax_backward_data"),
    "copies (permute, stack, cat, gather)": ("clone", "copy_", "stack", "cat", "index_select", "index_add", "index", "index_put", "roll", "slice_backward", "constant_pad_nd", "new_zeros", "zero_", "fill_"),
    "GELU": ("gelu", "gelu_backward"),
    "LayerNorm": ("layer_norm", "native_layer_norm", "native_layer_norm_backward"),
    "optimizer (fused AdamW)": ("_fused_adamw_",),
}


class OpTimer(TorchDispatchMode):
    """Accumulates calls, wall time and page faults per (op, shapes of its first two tensor arguments)."""

    def __init__(self):
        super().__init__()
        self.times: dict[tuple[str, str], list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        faults, start = _minor_faults(), time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed, faults = time.perf_counter() - start, _minor_faults() - faults
        shapes = str([tuple(a.shape) for a in args if isinstance(a, torch.Tensor)][:2])
        entry = self.times.setdefault((func.overloadpacket.__name__, shapes), [0, 0.0, 0])
        entry[0] += 1
        entry[1] += elapsed
        entry[2] += faults
        return out


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def child(impl: str, mode: str, dtype: str, no_trim: bool, steps: int, drop_path: float | None) -> dict:
    if no_trim:  # glibc: serve every allocation from the heap and never give it back to the OS
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        if not (libc.mallopt(-3, 1 << 30) and libc.mallopt(-1, 1 << 30)):  # M_MMAP_ and M_TRIM_THRESHOLD
            raise SystemExit("mallopt failed: --no-trim needs glibc")
    torch.set_num_threads(2)
    model = build_models("swin-tiny-patch4-window7-224", with_timm=impl == "timm", drop_path=drop_path)[impl]
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
    step = make_step(model, mode, dtype, x, y, "cpu")
    for _ in range(3):
        step()
    faults, start = _minor_faults(), time.perf_counter()
    for _ in range(steps):
        step()
    untimed = (time.perf_counter() - start) / steps
    faults = (_minor_faults() - faults) / steps
    timer = OpTimer()
    with timer:
        for _ in range(steps):
            step()
    ops = {f"{op} {shapes}": (n / steps, t / steps, f / steps) for (op, shapes), (n, t, f) in timer.times.items()}
    return {"step_s": untimed, "faults": faults, "ops": ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("train", "infer"))
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument("--no-trim", action="store_true", help="glibc never returns memory (no page faults)")
    parser.add_argument("--steps", type=int, default=3, help="steps timed (after 3 warm-up steps)")
    parser.add_argument("--drop-path", type=float, help="stochastic depth rate (default: the preset's, 0.2)")
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest (op, shapes) per model")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.mode, args.dtype, args.no_trim, args.steps, args.drop_path)))
        return
    results = {}
    for impl in ("ours", "transformers") + (("timm",) if import_timm() is not None else ()):
        command = [sys.executable, os.path.abspath(__file__), args.mode, "--child", impl, "--steps", str(args.steps), "--dtype", args.dtype]
        command += [] if args.drop_path is None else ["--drop-path", str(args.drop_path)]
        done = subprocess.run(command + (["--no-trim"] if args.no_trim else []), capture_output=True, text=True, check=True)
        results[impl] = json.loads(done.stdout.strip().splitlines()[-1])

    def by_category(ops: dict) -> dict:
        rows = dict.fromkeys([*CATEGORIES, "other (add, mul, sum, views, ...)"], 0.0)
        for key, (_, seconds, _) in ops.items():
            op = key.split(" ", 1)[0]
            name = next((c for c, members in CATEGORIES.items() if op in members), "other (add, mul, sum, views, ...)")
            rows[name] += seconds * 1e3
        return rows

    cats = {impl: by_category(r["ops"]) for impl, r in results.items()}
    print(f"Swin-T {args.mode} {args.dtype}, batch 8, 2 threads, glibc trimming {'off' if args.no_trim else 'on (default)'}")
    print("| ms per step | " + " | ".join(results) + " |\n|---|" + "---:|" * len(results))
    for name in cats["ours"]:
        print(f"| {name} | " + " | ".join(f"{cats[impl][name]:.0f}" for impl in results) + " |")
    for label, fn in [("sum of the timed ops", lambda r, c: f"{sum(c.values()):.0f}"),
                      ("step, untimed", lambda r, c: f"{r['step_s'] * 1e3:.0f}"),
                      ("page faults per step", lambda r, c: f"{r['faults']:.0f}")]:  # fmt: skip
        print(f"| {label} | " + " | ".join(fn(results[impl], cats[impl]) for impl in results) + " |")
    for impl in results if args.top else ():
        print(f"\n{impl}: the {args.top} costliest (op, input shapes): ms per step (calls, page faults)")
        for key, (n, seconds, faults) in sorted(results[impl]["ops"].items(), key=lambda kv: -kv[1][1])[: args.top]:
            print(f"{seconds * 1e3:8.2f} ({n:.0f}, {faults:.0f})  {key}")


if __name__ == "__main__":
    main()
