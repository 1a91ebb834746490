"""One training (or inference) step of swin_hf at another git revision vs this checkout, in one process.

    python benchmarks/compare_revisions.py HEAD~1                    # Swin-T, batch 8, preset drop_path
    python benchmarks/compare_revisions.py 8b85d4a --drop-path 0 --steps 20
    python benchmarks/compare_revisions.py HEAD~1 --mode infer [--dtype bf16]
    python benchmarks/compare_revisions.py HEAD~1 --host-stand-in --steps 200   # Python/dispatch time only

On a small shared machine the throughput of one model drifts by 5-10% between runs, more than most single
changes are worth. Here both revisions train the same weights on the same batch in one process, their
steps alternate (ABBA), each pair draws the same random numbers, and the report is the median of the
per-pair time ratios: drift that lasts longer than a step cancels out. The other revision's `swin_hf` is
exported with `git archive` into a temporary folder and imported under another package name.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)
from throughput import HOST_STAND_IN  # noqa: E402


def import_revision(revision: str, folder: str):
    """swin_hf as it is at `revision`, imported as the package `swin_hf_at_revision`."""
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", revision, "src/swin_hf"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.rename(os.path.join(folder, "src", "swin_hf"), os.path.join(folder, "swin_hf_at_revision"))
    sys.path.insert(0, folder)
    return importlib.import_module("swin_hf_at_revision")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revision", help="git revision to compare this checkout with")
    parser.add_argument("--model", default="swin-tiny-patch4-window7-224")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--drop-path", type=float, help="stochastic depth rate (default: the preset's)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per revision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument(
        "--host-stand-in", action="store_true",
        help="the model's depths and heads at embed_dim 12 on 64x64 images (window 2, batch 2, 1 thread): a "
        "step whose arithmetic is negligible, so that it times the host work a GPU step may wait for",
    )  # fmt: skip
    args = parser.parse_args()
    if args.host_stand_in:
        args.batch_size, args.threads = 2, 1
    torch.set_num_threads(args.threads)

    sys.path.insert(0, os.path.join(ROOT, "src"))
    import swin_hf

    with tempfile.TemporaryDirectory() as folder:
        packages = {args.revision: import_revision(args.revision, folder), "this checkout": swin_hf}
        overrides = {} if args.drop_path is None else {"drop_path_rate": args.drop_path}
        overrides.update(HOST_STAND_IN if args.host_stand_in else {})
        runs, state = {}, None
        for name, package in packages.items():
            config = package.SwinConfig.from_preset(args.model, num_labels=1000, **overrides)
            model = package.SwinForImageClassification(config).train(args.mode == "train")
            if state is None:
                state = model.state_dict()
            model.load_state_dict(state)
            runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True))

        torch.manual_seed(0)
        size = runs[args.revision][0].config.image_size
        x, labels = torch.randn(args.batch_size, 3, size, size), torch.randint(0, 1000, (args.batch_size,))

        def step(name: str, seed: int) -> float:
            model, optimizer = runs[name]
            torch.manual_seed(seed)  # the same stochastic depth draws for both revisions
            start = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16, enabled=args.dtype == "bf16"):
                if args.mode == "infer":
                    with torch.inference_mode():
                        model(x)
                    return time.perf_counter() - start
                loss = model(x, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        for name in runs:  # warm-up
            for _ in range(2):
                step(name, 0)
        old, new = args.revision, "this checkout"
        times = {old: [], new: []}
        for i in range(args.steps):
            for name in (old, new) if i % 2 else (new, old):
                times[name].append(step(name, i))

    what = f"{args.mode} step {args.dtype}" + (" (host stand-in)" if args.host_stand_in else "")
    what += (f", drop_path {config.drop_path_rate}" if args.mode == "train" else "")
    print(f"{args.model} batch {args.batch_size} {what}, {args.steps} pairs")
    for name, t in times.items():
        print(f"{name:>16}: median {statistics.median(t) * 1e3:.1f} ms, min {min(t) * 1e3:.1f} ms")
    ratio = statistics.median(n / o for n, o in zip(times[new], times[old]))
    print(f"this checkout / {old}: {ratio:.3f} (median of per-pair ratios)")


if __name__ == "__main__":
    main()
