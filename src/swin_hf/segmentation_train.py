"""Training-side pieces of semantic segmentation with UperNet + Swin that do not depend on the launcher:
one optimisation step, evaluation to mIoU / pixel accuracy, overlays, and saving a folder that
``pipeline("image-segmentation")`` loads.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from .segmentation_data import IGNORE_INDEX, JointTransform
from .segmentation_eval import denormalise, load_mean_iou, save_overlay_panel

logger = logging.getLogger(__name__)


def segmentation_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """UperNet's loss: cross-entropy of the decode head + auxiliary_loss_weight x that of the auxiliary
    head, ignoring label IGNORE_INDEX (`config.loss_ignore_index`)."""
    return model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss


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

    `gather` (e.g. Fabric's all_gather) collects predictions from every process before computing.
    Example: see tests/test_dense.py::test_segmentation_steps_with_evaluate_miou.
    """
    metric = metric or load_mean_iou()
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for batch in loader:
        pixels, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
        prediction = predict(model, pixels)
        if gather is not None:
            prediction, labels = gather(prediction).flatten(0, -3), gather(labels).flatten(0, -3)
        metric.add_batch(predictions=prediction.cpu().numpy(), references=labels.cpu().numpy())
    model.train(was_training)
    result = metric.compute(num_labels=num_labels, ignore_index=ignore_index)
    return {k: result[k] for k in ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou")}


def save_overlays(model, split, transform: JointTransform, directory: str, num_labels: int, count: int = 4,
                  image_column: str = "image", label_column: str = "annotation") -> list[str]:
    """PNG panels (image | ground truth | prediction) for the first `count` rows of `split`."""
    os.makedirs(directory, exist_ok=True)
    device = next(model.parameters()).device
    paths = []
    was_training = model.training
    model.eval()
    for i in range(min(count, len(split))):
        row = split[i]
        pixels, labels = transform(row[image_column], row[label_column])
        prediction = predict(model, pixels[None].to(device))[0].cpu().numpy()
        image = denormalise(pixels, transform.mean.view(-1).tolist(), transform.std.view(-1).tolist())
        path = os.path.join(directory, f"validation_{i:03d}.png")
        save_overlay_panel(path, image, labels.numpy(), prediction, num_labels)
        paths.append(path)
    model.train(was_training)
    return paths


def image_processor_for(transform: JointTransform, reduce_labels: bool = False):
    """A transformers image processor matching the evaluation transform (resize to S x S, same mean/std)
    with `post_process_semantic_segmentation`, so that pipeline("image-segmentation") works on the saved
    folder. Segformer's processor is used: its preprocessing is exactly resize + rescale + normalise."""
    try:
        from transformers import SegformerImageProcessor

        processor_class = SegformerImageProcessor
        import torchvision  # noqa: F401  (the default backend needs it)
    except ImportError:
        from transformers.models.segformer.image_processing_pil_segformer import SegformerImageProcessorPil

        processor_class = SegformerImageProcessorPil
    return processor_class(
        size={"height": transform.size, "width": transform.size},
        image_mean=transform.mean.view(-1).tolist(),
        image_std=transform.std.view(-1).tolist(),
        do_reduce_labels=reduce_labels,
    )


def save_for_pipeline(model, transform: JointTransform, directory: str, reduce_labels: bool = False) -> None:
    """Save model + image processor so ``pipeline("image-segmentation", model=directory)`` loads it
    (after ``import swin_hf``, which teaches transformers the "swin_hf" backbone type)."""
    model.save_pretrained(directory)
    image_processor_for(transform, reduce_labels).save_pretrained(directory)
    logger.info("Saved a pipeline-ready segmentation model to %s", directory)


def pixel_counts(split, label_column: str = "annotation", num_labels: int | None = None) -> np.ndarray:
    """How many pixels of each class a split holds (for logging class balance)."""
    counts = np.zeros(num_labels or 256, dtype=np.int64)
    for row in split:
        values = np.asarray(row[label_column]).reshape(-1)
        counts += np.bincount(values[values < len(counts)], minlength=len(counts))[: len(counts)]
    return counts


__all__ = [
    "evaluate_segmentation",
    "image_processor_for",
    "pixel_counts",
    "predict",
    "save_for_pipeline",
    "save_overlays",
    "segmentation_loss",
]
