"""Side-by-side throughput and memory of swin_hf vs transformers' Swin (and timm's, when it imports).

    python benchmarks/throughput.py --model swin-tiny-patch4-window7-224 --batch-size 8 --mode train
    python benchmarks/throughput.py --mode infer --dtype bf16
    python benchmarks/throughput.py --mode train --gradient-checkpointing
    python benchmarks/throughput.py --mode infer --compile
    python benchmarks/throughput.py --host-stand-in --plain-column --rounds 15 --iters 10

What it does, in one process:
  1. builds transformers' SwinForImageClassification from the preset, and ours (and timm's) with the
     *same* weights (`convert_state_dict`), and checks that their logits agree (eval mode, fp32);
  2. warms each model up, then times them in alternating rounds (ours, theirs, [timm], ours, ...) so that
     load from other processes on a shared machine hits every implementation alike; reports the median
     images/s over the rounds and the ratio ours/theirs;
  3. measures peak memory of one step for each implementation in a fresh child process (see
     `peak_step_memory`), one implementation per process so allocator state never leaks across.

Training step = forward with labels (cross-entropy) + backward + AdamW step + zero_grad(set_to_none).
AdamW is the same for every implementation: fused (one kernel over all parameters, as the recipes use; on
this CPU 9 ms per step for Swin-T instead of 51 ms for the default multi-tensor version) unless
`--optimizer foreach`.
bf16 = `torch.autocast(device, torch.bfloat16)` around the forward (weights stay fp32); with --dtype bf16 the
ratio is also given against transformers' fp32 throughput (timed in the same alternating rounds; not with
--no-fp32-baseline) and the top-1 agreement bf16 vs fp32 is checked for every implementation on the same
random images (--agreement-batches, 0: not checked).

On a GPU (`--device cuda`, the default when there is one) the same script runs unchanged; benchmarks/gpu.sh
runs BENCHMARKS.md's GPU table with it.

`--host-stand-in` shrinks every model to the preset's depths and heads at embed dim 12 on 64x64 images
(window 2), batch 2, 1 thread: a step whose arithmetic is negligible, so that it times the Python and
dispatch work a GPU step at a small batch waits for. `--plain-column` adds ours with every speed path
off (`FastPaths.plain()`, the model as modeling_swin.py spells it); benchmarks/fast_paths.py times each path.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))  # the checkout's swin_hf, not an installed one


# ------------------------------------------------------------------------------------------------ models


# --host-stand-in: the preset's depths and heads, every size shrunk until the arithmetic is negligible
HOST_STAND_IN = {"embed_dim": 12, "image_size": 64, "window_size": 2}


def build_models(
    preset: str,
    seed: int = 0,
    with_timm: bool = True,
    pretrained: str | None = None,
    drop_path: float | None = None,
    sizes: dict | None = None,
) -> dict[str, torch.nn.Module]:
    """{'ours': ..., 'transformers': ..., ['timm': ...]}, ours carrying transformers' weights: random ones of
    the preset, or those of a transformers checkpoint (`pretrained`: Hub id or folder) for the bf16
    agreement check with trained weights. `drop_path` replaces the preset's stochastic depth rate, `sizes`
    (HOST_STAND_IN) its embed_dim, image_size and window_size."""
    import transformers

    from swin_hf import SwinConfig, SwinForImageClassification, convert_state_dict

    overrides = {} if drop_path is None else {"drop_path_rate": drop_path}
    overrides.update(sizes or {})
    if pretrained is not None:
        attn = "sdpa" if "sdpa" in _supported_attn(transformers.SwinForImageClassification) else "eager"
        theirs = transformers.AutoModelForImageClassification.from_pretrained(pretrained, attn_implementation=attn, **overrides)
        return {"ours": SwinForImageClassification.from_pretrained(pretrained, **overrides), "transformers": theirs}
    ours_config = SwinConfig.from_preset(preset, num_labels=1000, **overrides)
    fields = (
        "image_size patch_size num_channels embed_dim depths num_heads window_size mlp_ratio qkv_bias "
        "hidden_dropout_prob attention_probs_dropout_prob drop_path_rate hidden_act use_absolute_embeddings "
        "layer_norm_eps initializer_range"
    ).split()
    values = {f: getattr(ours_config, f) for f in fields}
    if ours_config.version == 2:  # transformers' Swinv2
        their_class = transformers.Swinv2ForImageClassification
        values["pretrained_window_sizes"] = ours_config.pretrained_window_sizes
        their_config = transformers.Swinv2Config(**values, num_labels=1000)
    else:
        their_class = transformers.SwinForImageClassification
        their_config = transformers.SwinConfig(**values, num_labels=1000)
    their_config._attn_implementation = "sdpa" if "sdpa" in _supported_attn(their_class) else "eager"
    torch.manual_seed(seed)
    theirs = their_class(their_config)
    ours = SwinForImageClassification(ours_config)
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), source="transformers"))
    models = {"ours": ours, "transformers": theirs}
    if with_timm and ours_config.version == 1:
        timm_model = build_timm(preset, ours_config.drop_path_rate, sizes)
        if timm_model is not None:
            timm_model.load_state_dict(convert_state_dict(ours.state_dict(), to="timm"), strict=True)
            models["timm"] = timm_model
    return models


def _supported_attn(model_class) -> set[str]:
    """{"sdpa"} where transformers' model class supports SDPA (its Swin), else nothing (its Swinv2)."""
    return {"sdpa"} if getattr(model_class, "_supports_sdpa", False) else set()


def import_timm():
    """The timm module, or None where it does not import (not installed, or installed with a torchvision
    that does not load against this torch: a RuntimeError, not an ImportError)."""
    try:
        import timm
    except Exception:  # noqa: BLE001
        return None
    return timm


def build_timm(preset: str, drop_path: float, sizes: dict | None = None) -> torch.nn.Module | None:
    """timm's Swin of the same architecture, or None (timm missing or broken). build_models gives it the
    same weights as the other two (`convert_state_dict(..., to="timm")`), so its logits are checked too."""
    timm = import_timm()
    if timm is None:
        return None
    name = preset.replace("-", "_")
    names = {"embed_dim": "embed_dim", "image_size": "img_size", "window_size": "window_size"}
    kwargs = {names[key]: value for key, value in (sizes or {}).items()}
    try:
        return timm.create_model(name, pretrained=False, num_classes=1000, drop_path_rate=drop_path, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure just drops the column
        print(f"[timm] skipped: {error}", file=sys.stderr)
        return None


def logits_of(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    out = model(pixels)
    return out if isinstance(out, torch.Tensor) else out.logits


# ------------------------------------------------------------------------------------------------ steps


def make_step(
    model, mode: str, dtype: str, batch: torch.Tensor, labels: torch.Tensor, device: str, optimizer: str = "fused"
):
    """A zero-argument callable running one inference or training step of `model`."""
    autocast = (
        (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    )
    if mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                logits_of(model, batch)

        return step

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **{optimizer: True})

    def step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(logits_of(model, batch), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


PLAIN = "ours, plain"


def plain_copy(model):
    """A copy of our model with every speed path off (fast_paths.FastPaths.plain())."""
    from swin_hf import FastPaths

    plain = copy.deepcopy(model)
    plain.set_fast_paths(FastPaths.plain())
    return plain


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_alternating(steps: dict, batch_size: int, warmup: int, rounds: int, iters: int, device: str) -> dict:
    """Median images/s per implementation over `rounds` alternating rounds of `iters` timed steps each.

    Every round starts with one untimed step, so that only steady-state steps are timed: with one timed
    step per round and no such step, one run here reported ours/transformers 1.98x for training where
    steady-state rounds give 1.60-1.67x (a model's first step after the other one ran is not typical).
    """
    for name, step in steps.items():
        for _ in range(warmup):
            step()
        sync(device)
    samples = {name: [] for name in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # no one always runs first
        for name in order:
            steps[name]()  # switch-in step, untimed
            sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                steps[name]()
            sync(device)
            samples[name].append(batch_size * iters / (time.perf_counter() - start))
    return {name: {"median": statistics.median(s), "samples": s} for name, s in samples.items()}


# ------------------------------------------------------------------------------------------------ memory


def _rss_kib() -> tuple[int, int]:
    """(current RSS, peak RSS since the last reset) of this process in KiB, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1])
    return values["VmRSS"], values["VmHWM"]


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_memory(args) -> dict:
    """Runs in a fresh process: peak memory of one step of one implementation (CPU: RSS; CUDA: allocator)."""
    torch.set_num_threads(args.threads)
    impl, _, ckpt = args.child_impl.partition("+")
    models = build_models(args.model, with_timm=impl == "timm", drop_path=args.drop_path)
    model = models[impl].to(args.device)
    del models
    if ckpt:
        model.activation_checkpointing_enable()
    torch.manual_seed(1)
    batch = torch.randn(args.batch_size, 3, *_image_size(model), device=args.device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=args.device)
    step = make_step(model, args.mode, args.dtype, batch, labels, args.device, args.optimizer)
    step()  # the first step allocates the optimizer state; it is resident from then on
    step()
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return {"step_peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}
    resting, _ = _rss_kib()
    if not _reset_peak_rss():
        return {"step_peak_mib": float("nan")}
    step()
    _, peak = _rss_kib()
    return {"step_peak_mib": (peak - resting) / 1024, "process_peak_mib": peak / 1024}


def peak_step_memory(args, impl: str) -> dict:
    """Peak memory of one step of `impl`, measured in a fresh child process.

    CPU: the growth of the resident set (VmHWM - VmRSS) over one step, after two warm-up steps so that
    parameters, gradients' first allocation and AdamW state are resident before. glibc is told to serve every
    allocation >= 64 KiB with mmap (MALLOC_MMAP_THRESHOLD_) so that freed tensors go back to the OS at once
    and RSS tracks live tensors instead of the allocator's cache. CUDA: max_memory_allocated over one step.
    """
    command = [sys.executable, os.path.abspath(__file__), "--child-impl", impl] + _forwarded(args)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return {"step_peak_mib": float("nan")}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _forwarded(args) -> list[str]:
    out = ["--model", args.model, "--batch-size", str(args.batch_size), "--mode", args.mode]
    out += ["--dtype", args.dtype, "--device", args.device, "--threads", str(args.threads)]
    out += [] if args.drop_path is None else ["--drop-path", str(args.drop_path)]
    return out + ["--optimizer", args.optimizer]


def _image_size(model) -> tuple[int, int]:
    size = getattr(model.config, "image_size", 224) if hasattr(model, "config") else 224
    return (size, size) if isinstance(size, int) else tuple(size)


# ------------------------------------------------------------------------------------------------ main


def top1_agreement(model, device: str, batch_size: int, n_batches: int, image_size) -> float:
    """Fraction of random images whose top-1 class under bf16 autocast equals fp32's."""
    model.eval()
    agree = total = 0
    generator = torch.Generator().manual_seed(123)
    with torch.inference_mode():
        for _ in range(n_batches):
            x = torch.randn(batch_size, 3, *image_size, generator=generator).to(device)
            ref = logits_of(model, x).argmax(-1)
            with torch.autocast(device, dtype=torch.bfloat16):
                low = logits_of(model, x).argmax(-1)
            agree += (ref == low).sum().item()
            total += batch_size
    return agree / total


FP32_BASELINE = "transformers fp32"


@contextlib.contextmanager
def full_fp32():
    """fp32 products and convolutions in true fp32 (no TF32) inside the block, on any device."""
    saved = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="swin-tiny-patch4-window7-224")
    parser.add_argument(
        "--pretrained", help="transformers Swin checkpoint (Hub id or folder) for both models instead of random weights"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model (fixed shapes)")
    parser.add_argument(
        "--optimized", action="store_true",
        help="inference: add ours as swin_hf.optimize_for_inference makes it (benchmarks/serving.py has the full table)",
    )  # fmt: skip
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="add a column: ours with gradient checkpointing"
    )
    parser.add_argument(
        "--optimizer", choices=("fused", "foreach"), default="fused", help="AdamW implementation (for every model)"
    )
    parser.add_argument(
        "--drop-path", type=float, help="stochastic depth rate for every model (default: the preset's, 0.2 for Swin-T)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=2, help="steps per timed round")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-implementation memory children")
    parser.add_argument(
        "--no-fp32-baseline", action="store_true", help="bf16: do not also time transformers in fp32 (on a GPU: one compile less)"
    )
    parser.add_argument("--agreement-batches", type=int, default=16, help="bf16: random batches for top-1 check")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--host-stand-in", action="store_true",
        help="every model at embed_dim 12 on 64x64 images (window 2), batch 2, 1 thread: host work only",
    )  # fmt: skip
    parser.add_argument("--plain-column", action="store_true", help="add a column: ours with every speed path off")
    parser.add_argument("--child-impl", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_impl:
        print(json.dumps(child_memory(args)))
        return

    if args.host_stand_in:
        args.batch_size, args.threads, args.no_memory = 2, 1, True
    torch.set_num_threads(args.threads)
    device = args.device
    sizes = HOST_STAND_IN if args.host_stand_in else None
    models = build_models(args.model, pretrained=args.pretrained, drop_path=args.drop_path, sizes=sizes)
    for model in models.values():
        model.to(device)
    image_size = _image_size(models["ours"])
    torch.manual_seed(0)
    batch = torch.randn(args.batch_size, 3, *image_size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)

    # 1. same weights, same outputs (every implementation against transformers'), in full fp32: on a GPU
    #    cuDNN's convolutions default to TF32, which is rounding, not a difference between the models
    with torch.no_grad(), full_fp32():
        reference = logits_of(models["transformers"].eval(), batch[:2])
        others = [m for name, m in models.items() if name != "transformers"]
        diff = max((logits_of(m.eval(), batch[:2]) - reference).abs().max().item() for m in others)
    if diff > 1e-4:
        raise SystemExit(f"outputs differ by {diff:.2e}: not the same model, refusing to benchmark")

    agreement = None
    if args.dtype == "bf16" and args.agreement_batches > 0:
        agreement = {  # every implementation on the same images: how much of a miss is the weights, not the code
            name: top1_agreement(m, device, args.batch_size, args.agreement_batches, image_size) for name, m in models.items()
        }

    # 2. throughput, alternating
    if args.gradient_checkpointing:  # ours without and with checkpointing, side by side, plus transformers'
        models = {"ours": models["ours"], "ours+ckpt": copy.deepcopy(models["ours"]), "transformers": models["transformers"]}
        models["ours+ckpt"].activation_checkpointing_enable()
    if args.plain_column:
        models = {"ours": models["ours"], PLAIN: plain_copy(models["ours"]), **models}
    if args.optimized and args.mode == "infer":
        from swin_hf import optimize_for_inference

        models["ours optimized"] = optimize_for_inference(copy.deepcopy(models["ours"]))
    if args.compile:  # (the optimized form compiles itself)
        models = {name: m if name == "ours optimized" else torch.compile(m) for name, m in models.items()}
    steps = {
        name: make_step(m, args.mode, args.dtype, batch, labels, device, args.optimizer) for name, m in models.items()
    }
    if args.dtype == "bf16" and not args.no_fp32_baseline:  # the CPU target compares our bf16 with
        # transformers' fp32: timed in the same rounds
        steps[FP32_BASELINE] = make_step(models["transformers"], args.mode, "fp32", batch, labels, device, args.optimizer)
    timings = time_alternating(steps, args.batch_size, args.warmup, args.rounds, args.iters, device)
    baseline_fp32 = timings.pop(FP32_BASELINE)["median"] if FP32_BASELINE in timings else None

    # 3. memory, one child per implementation
    memory = {}
    if not args.no_memory and not args.compile:
        memory = {name: peak_step_memory(args, name) for name in models if name != "ours optimized"}

    report(args, timings, memory, diff, agreement, baseline_fp32)


def _device_name(device: str) -> str:
    return f"{device} ({torch.cuda.get_device_name()})" if device.startswith("cuda") else device


def report(args, timings, memory, diff, agreement, baseline_fp32) -> None:
    load = os.getloadavg()
    header = (
        f"{args.pretrained or args.model} batch {args.batch_size} {args.mode} {args.dtype}"
        f"{' compiled' if args.compile else ''}{' grad-ckpt' if args.gradient_checkpointing else ''}"
        f"{' (host stand-in: embed_dim 12, 64x64, window 2)' if args.host_stand_in else ''}"
        f"{f' AdamW {args.optimizer}' if args.mode == 'train' else ''}"
        f"{f' drop_path {args.drop_path}' if args.drop_path is not None else ''} | "
        f"{_device_name(args.device)}, {args.threads} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}"
        f" | load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | max |logits diff| {diff:.1e}"
    )
    print(header)
    print(f"{'implementation':<15}{'images/s':>12}{'step peak MiB':>16}{'vs transformers':>18}")
    theirs = timings["transformers"]["median"]
    for name, t in timings.items():
        mem = memory.get(name, {}).get("step_peak_mib", float("nan"))
        print(f"{name:<15}{t['median']:>12.2f}{mem:>16.0f}{t['median'] / theirs:>17.2f}x")
    ours = timings["ours"]["median"]
    if memory:
        ratio = memory["ours"]["step_peak_mib"] / memory["transformers"]["step_peak_mib"]
        print(f"peak memory ours/transformers: {ratio:.2f}x")
    if "ours+ckpt" in timings:
        speed = timings["ours+ckpt"]["median"] / ours
        line = f"gradient checkpointing: {speed:.2f}x the images/s of ours without (cost {1 - speed:.0%})"
        if memory:
            saved = 1 - memory["ours+ckpt"]["step_peak_mib"] / memory["ours"]["step_peak_mib"]
            line += f", step peak memory -{saved:.0%}"
        print(line)
    if baseline_fp32 is not None:
        print(f"transformers fp32: {baseline_fp32:.2f} images/s -> ours bf16 / transformers fp32: {ours / baseline_fp32:.2f}x")
    if agreement is not None:
        shares = ", ".join(f"{name} {share:.1%}" for name, share in agreement.items())
        print(f"top-1 agreement bf16 vs fp32 on the same {args.agreement_batches * args.batch_size} random images: {shares}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "args": vars(args),
                    "load": load,
                    "timings": timings,
                    "memory": memory,
                    "max_logits_diff": diff,
                    "bf16_top1_agreement": agreement,
                    "transformers_fp32_images_per_s": baseline_fp32,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
