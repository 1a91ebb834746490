"""Training-step time of detect.py's default detector (RT-DETR on the built-in small Swin, 128 px, batch 16)
with other head settings, side by side in one process: each variant steps on the same batches of the built-in
set, in turn, and the medians are compared with the first variant.

    python benchmarks/detection_step.py                              # 100 vs 30 vs 0 denoising queries, 2 decoder layers
    python benchmarks/detection_step.py --variants denoising_queries=100,denoising_queries=30 --rounds 9
    python benchmarks/detection_step.py --smoke                      # 64 px, a tiny head, 2 rounds (the test of this script)

A variant is `setting=value` over detect.py's settings (DetectSettings field names); `+` joins several.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swin_hf.detection import image_processor_for  # noqa: E402
from swin_hf.detection.data import BoxAugment, DetectionDataset, collate, to_detr_labels  # noqa: E402
from swin_hf.detection.evaluate import normalise  # noqa: E402
from swin_hf.detection.train import DetectSettings, build_model, load_data  # noqa: E402

DEFAULT_VARIANTS = "denoising_queries=100,denoising_queries=30,denoising_queries=0,denoising_queries=100+decoder_layers=2"
SMOKE = dict(image_size=64, hidden_size=32, num_queries=10, decoder_layers=2, batch_size=4, max_train_samples=16,
             max_eval_samples=4)


def variant_settings(base: DetectSettings, text: str) -> DetectSettings:
    """`base` with the `setting=value` pairs of `text` ('+'-joined), each value of the field's own type."""
    fields = {f.name: f for f in dataclasses.fields(DetectSettings)}
    changes = {}
    for pair in text.split("+"):
        name, value = pair.split("=")
        if name not in fields:
            raise SystemExit(f"error: {name!r} is not a detect.py setting")
        changes[name] = type(getattr(base, name))(value)
    return dataclasses.replace(base, **changes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated variants; the first is the baseline")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--smoke", action="store_true", help="a tiny head at 64 px, 2 rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = DetectSettings(**(SMOKE if args.smoke else {}))
    rounds = 2 if args.smoke else args.rounds
    data = load_data(base)
    dataset = DetectionDataset(data.train, base.image_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=base.batch_size, collate_fn=collate, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    batches = [batch for _, batch in zip(range(rounds + 2), loader)]
    augment = BoxAugment(base.hflip, base.scale_range, base.translate, base.jitter)
    processor = image_processor_for(base.head, base.image_size)

    names = args.variants.split(",")
    models, optimisers = {}, {}
    for name in names:
        torch.manual_seed(0)
        models[name] = build_model(variant_settings(base, name), data.id2label).train()
        optimisers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)

    def step(name: str, batch: dict) -> float:
        images, boxes, labels = augment(batch["pixel_values"].float() / 255.0, batch["boxes"], batch["labels"])
        pixels = normalise(images, processor.image_mean, processor.image_std)
        start = time.perf_counter()
        loss = models[name](pixel_values=pixels, labels=to_detr_labels(boxes, labels, *images.shape[-2:])).loss
        loss.backward()
        optimisers[name].step()
        optimisers[name].zero_grad()
        return time.perf_counter() - start

    times = {name: [] for name in names}
    for index, batch in enumerate(batches):  # every variant on the same batch, in turn
        for name in names:
            elapsed = step(name, batch)
            if index >= 2:
                times[name].append(elapsed)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"{cpu} | torch {torch.__version__} | {args.threads} threads | commit {commit} | {datetime.date.today()} | "
          f"detect.py default detector, {base.image_size} px, batch {base.batch_size}, {rounds} steps each, medians")
    baseline = statistics.median(times[names[0]])
    for name in names:
        median = statistics.median(times[name])
        print(f"  {name:45s} {median:6.3f} s a step   {baseline / median:5.2f}x the first")


if __name__ == "__main__":
    main()
