"""Evaluating segmentation: predictions, mIoU / pixel accuracy through `evaluate`, and PNG overlays
(upscaled, titled, with a legend naming the classes).

The metric module ships in this package (`metrics/mean_iou.py`), so `evaluate` loads it by path with
no Hub access (``evaluate.load("mean_iou")`` would download the Hub's module).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from PIL import Image

from .data import IGNORE_INDEX, JointTransform

logger = logging.getLogger(__name__)

MEAN_IOU_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "metrics", "mean_iou.py")


def load_mean_iou():
    """evaluate's Metric for mean IoU and pixel accuracy, from the module shipped in swin_hf (offline).

    Example:
        >>> from swin_hf.segmentation.evaluate import load_mean_iou
        >>> metric = load_mean_iou()
        >>> result = metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 1]]], num_labels=2)
        >>> round(result["mean_iou"], 4), result["overall_accuracy"]
        (0.5833, 0.75)
    """
    import evaluate

    return evaluate.load(MEAN_IOU_PATH)


def palette(num_labels: int, seed: int = 0) -> np.ndarray:
    """(num_labels, 3) uint8 colours: a few distinct ones first, then seeded random ones."""
    base = np.array(
        [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [70, 240, 240],
         [245, 130, 48], [240, 50, 230], [210, 245, 60], [0, 128, 128]],
        dtype=np.uint8,
    )
    if num_labels <= len(base):
        return base[:num_labels]
    extra = np.random.default_rng(seed).integers(0, 256, size=(num_labels - len(base), 3), dtype=np.uint8)
    return np.concatenate([base, extra])


def overlay(image: Image.Image, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5,
            ignore_index: int = 255) -> Image.Image:
    """`image` with each pixel blended with its class colour; ignored pixels are left as they are."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"label map is {labels.shape} but the image is {rgb.shape[:2]} (height, width).")
    valid = labels != ignore_index
    colour = colours[np.where(valid, labels, 0)].astype(np.float32)
    blended = np.where(valid[..., None], (1 - alpha) * rgb + alpha * colour, rgb)
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))


def denormalise(pixel_values: torch.Tensor, mean, std) -> Image.Image:
    """(3, H, W) normalised tensor -> RGB PIL image."""
    x = pixel_values.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def save_overlay_panel(path: str, image: Image.Image, reference: np.ndarray, prediction: np.ndarray,
                       class_names: list[str], ignore_index: int = 255, min_height: int = 256) -> None:
    """One PNG a person can read: the image | ground truth overlaid | prediction overlaid, side by side,
    each shown at least `min_height` pixels high (labels upscaled without blending), titled, with a legend
    naming the class of each colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = palette(len(class_names))
    width, height = image.size
    scale = max(1, -(-min_height // height))  # whole-number upscaling: every label pixel stays a square
    panels = [image.convert("RGB"), overlay(image, reference, colours, ignore_index=ignore_index),
              overlay(image, prediction, colours, ignore_index=ignore_index)]
    valid = reference != ignore_index
    accuracy = float((prediction[valid] == reference[valid]).mean()) if valid.any() else float("nan")
    titles = ["image", "ground truth", f"prediction ({accuracy:.0%} of pixels right)"]
    dpi = 100
    fig, axes = plt.subplots(1, 3, figsize=(3 * width * scale / dpi + 0.6, height * scale / dpi + 1.3), dpi=dpi)
    for ax, panel, title in zip(axes, panels, titles):
        ax.imshow(np.asarray(panel), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    shown = sorted(set(np.unique(reference).tolist()) | set(np.unique(prediction).tolist()))
    handles = [Patch(color=colours[i] / 255.0, label=class_names[i]) for i in shown if 0 <= i < len(class_names)]
    if (~valid).any():
        handles.append(Patch(facecolor="none", edgecolor="black", label="ignored (not scored)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


@torch.no_grad()
def predict(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H, W) class indices (logits are at input resolution for UperNet)."""
    logits = model(pixel_values=pixel_values).logits
    if logits.shape[-2:] != pixel_values.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


@torch.no_grad()
def evaluate_segmentation(model, loader, num_labels: int, ignore_index: int = IGNORE_INDEX, metric=None,
                          gather=None) -> dict:
    """mIoU, mean per-class accuracy and pixel accuracy over `loader` via the shipped `evaluate` module.

    `gather` (e.g. Fabric's all_gather) collects predictions from every process before computing. Batches
    that carry the examples' "index" count each example once (a distributed sampler repeats a few to give
    every process as many).
    Example: see tests/test_dense.py::test_segmentation_steps_with_evaluate_miou.
    """
    metric = metric or load_mean_iou()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seen: set[int] = set()
    for batch in loader:
        pixels, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
        index = batch.get("index")
        prediction = predict(model, pixels)
        if gather is not None:
            prediction, labels = gather(prediction).flatten(0, -3), gather(labels).flatten(0, -3)
            index = gather(index.to(device)).flatten() if index is not None else None
        if index is not None:
            first = [i for i, example in enumerate(index.tolist()) if not (example in seen or seen.add(example))]
            if len(first) < len(index):
                prediction, labels = prediction[first], labels[first]
        metric.add_batch(predictions=prediction.cpu().numpy(), references=labels.cpu().numpy())
    model.train(was_training)
    result = metric.compute(num_labels=num_labels, ignore_index=ignore_index)
    return {k: result[k] for k in ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou")}


def overlay_examples(model, split, transform: JointTransform, count: int = 4, image_column: str = "image",
                     label_column: str = "annotation") -> list[tuple[Image.Image, np.ndarray, np.ndarray]]:
    """(image, ground truth, prediction) for the first `count` rows of `split` (a map-style split whose
    columns are PIL images or undecoded {bytes, path}). Every process calls it (a sharded model's forward
    needs all of them); process 0 then draws them (`save_overlays`)."""
    from .data import open_image

    device = next(model.parameters()).device
    examples = []
    was_training = model.training
    model.eval()
    for i in range(min(count, len(split))):
        row = split[i]
        pixels, labels = transform(open_image(row[image_column]), open_image(row[label_column]))
        prediction = predict(model, pixels[None].to(device))[0].cpu().numpy()
        image = denormalise(pixels, transform.mean.view(-1).tolist(), transform.std.view(-1).tolist())
        examples.append((image, labels.numpy(), prediction))
    model.train(was_training)
    return examples


def save_overlays(examples: list[tuple[Image.Image, np.ndarray, np.ndarray]], directory: str, class_names: list[str]) -> list[str]:
    """validation_000.png, ... in `directory`: one legible panel (`save_overlay_panel`) per example."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, (image, reference, prediction) in enumerate(examples):
        path = os.path.join(directory, f"validation_{i:03d}.png")
        save_overlay_panel(path, image, reference, prediction, class_names)
        paths.append(path)
    return paths


__all__ = [
    "MEAN_IOU_PATH",
    "denormalise",
    "evaluate_segmentation",
    "load_mean_iou",
    "overlay",
    "overlay_examples",
    "palette",
    "predict",
    "save_overlay_panel",
    "save_overlays",
]
