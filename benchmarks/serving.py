"""Inference speed of swin_hf.optimize_for_inference against transformers' Swin at its best, side by side.

    python benchmarks/serving.py                                  # Swin-T 224², batches 1, 8 and 64
    python benchmarks/serving.py --batch-sizes 8 --variants freezing,no-freezing,max-autotune
    python benchmarks/serving.py --int8                           # also the int8 form (needs torchao)

Columns, all with the same weights (checked: logits of every form against transformers' fp32):
  - "transformers fp32": transformers' SwinForImageClassification, eager, fp32 (the baseline);
  - "transformers best": the same model, bf16 autocast + torch.compile (default Inductor settings);
  - "ours optimized": `swin_hf.optimize_for_inference(model)` (its default: bf16 where native, freezing);
  - further "ours ..." variants of optimize_for_inference's settings (--variants) and int8 (--int8).
Each form is compiled and warmed up first (compile time is printed), then timed in alternating rounds
(median images/s). The roofline line: Swin-T's multiply-adds per image (swin_hf.measure_cost) times the
best images/s, against the rate of the device's largest square bf16 (or fp32) product measured here.
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
    parser.add_argument("--smoke", action="store_true", help="a tiny model, one round (the test of this script)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    sizes = throughput.HOST_STAND_IN if args.smoke else None
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


if __name__ == "__main__":
    main()
