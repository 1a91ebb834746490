"""Inference speed of swin_hf.optimize_for_inference against transformers' Swin at its best, side by side.

    python benchmarks/serving.py                                  # Swin-T 224², batches 1, 8 and 64
    python benchmarks/serving.py --batch-sizes 8 --variants freezing,no-freezing,max-autotune
    python benchmarks/serving.py --int8                           # also the int8 form (needs torchao)
    python benchmarks/serving.py --batch-sizes 8 --profile        # and where the optimized form's time goes

Columns, all with the same weights (checked: logits of every form against transformers' fp32):
  - "transformers fp32": transformers' SwinForImageClassification, eager, fp32 (the baseline);
  - "transformers best": the same model, bf16 autocast + torch.compile (default Inductor settings);
  - "ours optimized": `swin_hf.optimize_for_inference(model)` (its default: bf16 where native, freezing);
  - further "ours ..." variants of optimize_for_inference's settings (--variants) and int8 (--int8).
Each form is compiled and warmed up first (compile time is printed), then timed in alternating rounds
(median images/s). The roofline line: Swin-T's multiply-adds per image (swin_hf.measure_cost) times the
best images/s, against the rate of the device's largest square bf16 (or fp32) product measured here.
--profile (CPU): the optimized form compiled once more with Inductor's per-kernel profiling, its calls at
the first batch size under torch.profiler, self time by kind (products, window attention, the generated
kernels: LayerNorm, shift and window copies, GELU where not fused, residual adds; the compiled graph's own
calls and guards), with the graph's calls made from Python (cpp_wrapper=False: the library kernels are
recorded by name only then). The profiler's records cost time of their own: the untimed call is printed too.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import throughput  # noqa: E402  (puts the checkout's src first on the path)

from swin_hf import measure_cost, optimize_for_inference  # noqa: E402
from swin_hf.inference import native_bf16  # noqa: E402

VARIANTS = {  # optimize_for_inference keyword arguments of each "ours" column
    "freezing": {},
    "no-compile": {"compile": False},
    "max-autotune": {"max_autotune": True},
    "fp32": {"dtype": "fp32"},
}


def theirs_best(model, bf16: bool):
    """transformers' fastest inference: bf16 autocast (where native) around torch.compile's default."""
    compiled = torch.compile(model.eval())

    def call(x):
        with torch.inference_mode(), torch.autocast("cpu" if x.device.type == "cpu" else x.device.type, enabled=bf16):
            return compiled(x).logits.float()

    return call


def plain_call(model):
    def call(x):
        with torch.inference_mode():
            return model.eval()(x).logits

    return call


def peak_product_rate(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the median of `repeats` size x size x size products in `dtype` (2 FLOPs per multiply-add)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        throughput.sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


PROFILE_KINDS = (  # (kind, test on a profiler row's name), first match wins
    ("products (oneDNN linear / conv, addmm, mm)", lambda n: any(k in n for k in ("mkldnn::", "aten::addmm", "aten::mm", "aten::convolution", "aten::mkldnn_convolution"))),
    ("window attention (SDPA kernel)", lambda n: n.startswith("aten::_scaled_dot_product")),
    ("generated kernels with LayerNorm", lambda n: n.startswith("graph_") and "layer_norm" in n),
    ("generated kernels preparing attention (q/k/v, bias, mask)", lambda n: n.startswith("graph_") and "attention" in n),
    ("other generated kernels (copies, casts, adds)", lambda n: n.startswith("graph_")),
    ("compiled graph's own calls, guards", lambda n: "CompiledFxGraph" in n or "Dynamo" in n or "Compiled Region" in n),
)


def profile_optimized(model, x: torch.Tensor, calls: int = 5) -> None:
    """Self time of the optimized form's calls by kind (PROFILE_KINDS), per batch."""
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    inductor_config.cpp.enable_kernel_profile = True  # the generated kernels appear by name
    # (the library calls appear by name only from Inductor's Python wrapper: the same kernels, called from Python)
    form = optimize_for_inference(copy.deepcopy(model), cpp_wrapper=False)
    form(x)
    start = time.perf_counter()
    for _ in range(calls):
        form(x)
    untimed = (time.perf_counter() - start) / calls
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            form(x)
    inductor_config.cpp.enable_kernel_profile = False
    kinds = dict.fromkeys([k for k, _ in PROFILE_KINDS] + ["other"], 0.0)
    for row in prof.key_averages():
        kind = next((k for k, test in PROFILE_KINDS if test(row.key)), "other")
        kinds[kind] += row.self_cpu_time_total / 1e3 / calls  # ms per call
    total = sum(kinds.values())
    print(f"\nwhere ours optimized spends a batch of {len(x)} (torch.profiler self time, ms per call):")
    for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<60}{ms:>8.1f}{ms / total:>7.0%}")
    print(f"  {'sum under the profiler':<60}{total:>8.1f}\n  {'the same call untimed':<60}{untimed * 1e3:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="swin-tiny-patch4-window7-224")
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--variants", default="freezing", help=f"ours' columns, of {', '.join(VARIANTS)}")
    parser.add_argument("--int8", action="store_true", help="add ours quantized to int8 (PT2E, needs torchao)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also where the optimized form's time goes (CPU)")
    parser.add_argument("--smoke", action="store_true", help="a tiny 5-block model, one round (the test of this script)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    sizes = {**throughput.HOST_STAND_IN, "depths": [2, 1, 1, 1]} if args.smoke else None  # (W-MSA and SW-MSA)
    if args.smoke:
        args.rounds, args.iters = 1, 1
    models = throughput.build_models(args.model, with_timm=False, sizes=sizes)
    ours, theirs = models["ours"].to(device).eval(), models["transformers"].to(device).eval()
    image = throughput._image_size(ours)
    bf16 = native_bf16(torch.device(device))
    print(
        f"{throughput.cpu_name() if device == 'cpu' else torch.cuda.get_device_name()} | torch {torch.__version__} | "
        f"{args.threads} threads | commit {throughput.commit()} | {datetime.date.today()} | {args.model} {image[0]}x{image[1]}"
        f" | native bf16: {bf16}"
    )
    forms = {"transformers fp32": plain_call(theirs), "transformers best": theirs_best(copy.deepcopy(theirs), bf16)}
    for name in args.variants.split(","):
        forms[f"ours {name}" if name != "freezing" else "ours optimized"] = optimize_for_inference(
            copy.deepcopy(ours), **VARIANTS[name]
        )
    if args.int8:
        calibration = torch.randn(32, 3, *image, generator=torch.Generator().manual_seed(7)).to(device)
        forms["ours int8"] = optimize_for_inference(copy.deepcopy(ours), quantize="int8", calibration=calibration)
    forms = {n: (f if not isinstance(f, torch.nn.Module) else (lambda m: lambda x: m(x).logits)(f)) for n, f in forms.items()}

    check = torch.randn(2, 3, *image, device=device)
    with torch.inference_mode():
        reference = forms["transformers fp32"](check)
    for name, form in forms.items():
        start = time.perf_counter()
        out = form(check)
        print(f"{name}: first call {time.perf_counter() - start:.0f} s, max |logits - transformers fp32| "
              f"{(out.float() - reference).abs().max():.2e}")

    macs = measure_cost(ours.config, image_size=image).flops  # multiply-adds per image
    peak = peak_product_rate(torch.bfloat16 if bf16 else torch.float32, device)
    for batch in map(int, args.batch_sizes.split(",")):
        x = torch.randn(batch, 3, *image, device=device)
        steps = {name: (lambda f: lambda: f(x))(form) for name, form in forms.items()}
        timings = throughput.time_alternating(steps, batch, 1, args.rounds, args.iters, device)
        base, best = timings["transformers fp32"]["median"], timings["transformers best"]["median"]
        print(f"\nbatch {batch}: images/s (vs transformers fp32, vs transformers best)")
        for name, t in timings.items():
            rate = t["median"]
            print(f"  {name:<22}{rate:>10.1f}{rate / base:>9.2f}x{rate / best:>9.2f}x")
        top = max(t["median"] for t in timings.values())
        print(f"  roofline: {2 * macs * top / 1e12:.2f} of {peak / 1e12:.2f} TFLOP/s "
              f"({'bf16' if bf16 else 'fp32'} {2048}^3 product here): {2 * macs * top / peak:.0%} of the matrix peak")
    if args.profile:
        profile_optimized(ours, torch.randn(int(args.batch_sizes.split(",")[0]), 3, *image, device=device))


if __name__ == "__main__":
    main()
