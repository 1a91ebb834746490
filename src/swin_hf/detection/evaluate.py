"""Evaluating detection: predictions in pixels of the original images, COCO mAP through torchmetrics'
`MeanAveragePrecision`, PNGs of validation images with their predicted and true boxes, training curves.

torchmetrics computes COCO's mAP with pycocotools (the reference `COCOeval`); its `update` imports
torchvision only to convert box formats, and torchvision's wheels need the torch build they were made
for, so `MeanAveragePrecision` here takes boxes as (x_min, y_min, x_max, y_max) pixels and converts them
to COCO's (x, y, width, height) itself. Everything else - the matching, the 101-point interpolated
precision, the per-class AP - is torchmetrics' and pycocotools' own.
"""

from __future__ import annotations

import logging
import os
from unittest import mock

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchmetrics.detection import mean_ap as _torchmetrics_mean_ap

logger = logging.getLogger(__name__)


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) corners -> (N, 4) COCO (x, y, width, height)."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


class MeanAveragePrecision(_torchmetrics_mean_ap.MeanAveragePrecision):
    """torchmetrics' COCO box mAP (pycocotools), fed (x_min, y_min, x_max, y_max) pixel boxes, with
    per-class AP on by default; no torchvision needed.

    `compute()` returns torchmetrics' dict: ``map`` (AP at IoU 0.50:0.95), ``map_50``, ``map_75``,
    ``map_small/medium/large``, ``mar_*``, and with ``class_metrics`` ``map_per_class`` for the
    ``classes`` present in predictions or targets (-1 for a class without targets).

    Example:
        >>> import torch
        >>> from swin_hf.detection.evaluate import MeanAveragePrecision
        >>> metric = MeanAveragePrecision()
        >>> boxes = torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 90.0, 40.0]])
        >>> metric.update([{"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}],
        ...               [{"boxes": boxes, "labels": torch.tensor([0, 1])}])
        >>> result = metric.compute()
        >>> float(result["map"]), float(result["map_50"]), result["map_per_class"].tolist()
        (1.0, 1.0, [1.0, 1.0])
    """

    def __init__(self, class_metrics: bool = True, **kwargs):
        # the only use torchmetrics makes of torchvision is the box conversion that `update` below replaces
        with mock.patch.object(_torchmetrics_mean_ap, "_TORCHVISION_AVAILABLE", True):
            super().__init__(box_format="xyxy", iou_type="bbox", class_metrics=class_metrics, **kwargs)

    def update(self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]) -> None:
        """`preds`: per image ``boxes`` (N, 4) xyxy pixels, ``scores`` (N,), ``labels`` (N,); `target`: per
        image ``boxes`` and ``labels`` (optionally ``iscrowd``, ``area``)."""
        if len(preds) != len(target):
            raise ValueError(f"{len(preds)} predictions for {len(target)} targets; give one of each per image.")
        for item in preds:
            self.detection_box.append(xyxy_to_xywh(item["boxes"].reshape(-1, 4).float()))
            self.detection_labels.append(item["labels"])
            self.detection_scores.append(item["scores"])
        for item in target:
            self.groundtruth_box.append(xyxy_to_xywh(item["boxes"].reshape(-1, 4).float()))
            self.groundtruth_labels.append(item["labels"])
            self.groundtruth_crowds.append(item.get("iscrowd", torch.zeros_like(item["labels"])))
            self.groundtruth_area.append(item.get("area", torch.zeros_like(item["labels"])))


# --------------------------------------------------------------------------------------------------
# Predictions and mAP
# --------------------------------------------------------------------------------------------------


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, 3, H, W) or float in 0-1 -> float normalised with the image processor's mean and std."""
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def predict(model, processor, pixel_values: torch.Tensor, sizes, threshold: float = 0.0) -> list[dict[str, torch.Tensor]]:
    """Detections per image as the `object-detection` pipeline makes them (the processor's
    `post_process_object_detection`): ``boxes`` (N, 4) corners in pixels of the original image of size
    `sizes[i]` = (height, width), ``scores`` (N,), ``labels`` (N,), on the CPU."""
    outputs = model(pixel_values=pixel_values)
    sizes = torch.as_tensor(sizes).reshape(-1, 2)
    found = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    return [{k: v.detach().float().cpu() if k != "labels" else v.detach().cpu() for k, v in d.items()} for d in found]


def targets_in_pixels(boxes: list[torch.Tensor], labels: list[torch.Tensor], sizes, image_size: tuple[int, int]):
    """Boxes in pixels of the model's input (`image_size` = (height, width)) -> pixels of each original image."""
    height, width = image_size
    out = []
    for box, classes, (h, w) in zip(boxes, labels, torch.as_tensor(sizes).reshape(-1, 2).tolist()):
        scale = torch.tensor([w / width, h / height, w / width, h / height])
        out.append({"boxes": box.float().cpu().reshape(-1, 4) * scale, "labels": classes.cpu()})
    return out


def mean_average_precision(predictions: list[dict], targets: list[dict], id2label: dict[int, str]) -> dict:
    """COCO box mAP of per-image predictions and targets (pixels, any order as long as they pair up):
    ``map`` (IoU 0.50:0.95), ``map_50``, ``map_75``, ``map_small/medium/large``, ``mar_100`` and
    ``per_class_ap`` {class name: AP} for the classes with targets (a class the model predicts but no
    image holds has no AP).

    Example:
        >>> import torch
        >>> from swin_hf.detection.evaluate import mean_average_precision
        >>> truth = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}]
        >>> guess = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([1])}]
        >>> result = mean_average_precision(guess, truth, {0: "cat", 1: "dog"})
        >>> result["map"], result["per_class_ap"]
        (1.0, {'dog': 1.0})
    """
    metric = MeanAveragePrecision()
    metric.update(predictions, targets)
    result = metric.compute()
    summary = {key: float(result[key]) for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")}
    classes = result["classes"].reshape(-1).tolist()
    per_class = result["map_per_class"].reshape(-1).tolist()
    with_targets = {int(label) for t in targets for label in t["labels"].tolist()}
    summary["per_class_ap"] = {id2label.get(int(c), str(c)): ap for c, ap in zip(classes, per_class) if int(c) in with_targets}
    summary["images"] = len(targets)
    return summary


@torch.no_grad()
def evaluate_detection(model, processor, loader, id2label: dict[int, str], gather=None, skipped: set | None = None) -> dict:
    """`mean_average_precision` over every image of `loader` (batches of `detection.data.collate`). With
    several processes `gather` (a list of every process's object) collects the predictions, duplicates
    (the padding of a distributed sampler) are dropped by row index, and every process gets the same
    result. Unreadable images are left out and added to `skipped` as ("validation", file)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mean, std = processor.image_mean, processor.image_std
    rows = {}
    for batch in loader:
        if skipped is not None:
            skipped.update(("validation", name) for name in batch["skipped_files"])
        if batch["pixel_values"] is None:
            continue
        pixels = batch["pixel_values"]
        found = predict(model, processor, normalise(pixels.to(device), mean, std), batch["sizes"])
        truth = targets_in_pixels(batch["boxes"], batch["labels"], batch["sizes"], tuple(pixels.shape[-2:]))
        for index, prediction, target in zip(batch["index"].tolist(), found, truth):
            rows[index] = (prediction, target)
    model.train(was_training)
    if gather is not None:
        rows = {index: row for part in gather(rows) for index, row in part.items()}
    order = sorted(rows)
    return mean_average_precision([rows[i][0] for i in order], [rows[i][1] for i in order], id2label)


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------

TRUTH_COLOUR = (40, 220, 60)


def class_colours(num_labels: int) -> list[tuple[int, int, int]]:
    """A distinct colour per class (the segmentation palette)."""
    from ..segmentation.evaluate import palette

    return [tuple(int(v) for v in c) for c in palette(num_labels)]


def draw_boxes(image: Image.Image, boxes, labels, id2label: dict[int, str], scores=None, colour=None,
               scale: float = 1.0) -> Image.Image:
    """A copy of `image` enlarged `scale` times with each box outlined and named (with its score, if given);
    one colour per class unless `colour` is given."""
    width, height = image.size
    canvas = image.convert("RGB").resize((round(width * scale), round(height * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    colours = class_colours(max(len(id2label), 1))
    for i, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), np.asarray(labels).reshape(-1))):
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        tint = colour or colours[int(label) % len(colours)]
        draw.rectangle((x0, y0, x1, y1), outline=tint, width=2)
        text = id2label.get(int(label), str(int(label))) + (f" {float(scores[i]):.2f}" if scores is not None else "")
        left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=tint)
        draw.text((x0 + 2, y0 + 1), text, fill=(0, 0, 0))
    return canvas


def save_picture(path: str, image: Image.Image, truth: dict, prediction: dict, id2label: dict[int, str],
                 threshold: float = 0.5) -> None:
    """One PNG: the image with its true boxes (green) | with the predicted boxes scoring at least
    `threshold` (a colour per class, with scores). Small images are enlarged to about 320 pixels."""
    scale = max(1.0, 320 / max(image.size))
    keep = prediction["scores"] >= threshold
    left = draw_boxes(image, truth["boxes"], truth["labels"], id2label, colour=TRUTH_COLOUR, scale=scale)
    right = draw_boxes(image, prediction["boxes"][keep], prediction["labels"][keep], id2label,
                       scores=prediction["scores"][keep], scale=scale)
    canvas = Image.new("RGB", (left.width * 2 + 4, left.height), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + 4, 0))
    canvas.save(path)


@torch.no_grad()
def save_pictures(model, processor, dataset, directory: str, id2label: dict[int, str], count: int = 8,
                  threshold: float = 0.5) -> list[str]:
    """`save_picture` for the first `count` readable images of `dataset` (a `detection.data.DetectionDataset`),
    drawn on the original images: validation_000.png, ..."""
    from ..training.data import decode_image

    os.makedirs(directory, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    paths = []
    for index in range(len(dataset)):
        if len(paths) >= count:
            break
        pixels, boxes, labels, _, size, _ = dataset[index]
        if pixels is None:
            continue
        prediction = predict(model, processor, normalise(pixels[None].to(device), processor.image_mean, processor.image_std), [size])[0]
        truth = targets_in_pixels([boxes], [labels], [size], tuple(pixels.shape[-2:]))[0]
        image = decode_image(dataset.split[index][dataset.image_column])
        path = os.path.join(directory, f"validation_{len(paths):03d}.png")
        save_picture(path, image, truth, prediction, id2label, threshold)
        paths.append(path)
    model.train(was_training)
    return paths


__all__ = [
    "MeanAveragePrecision",
    "TRUTH_COLOUR",
    "class_colours",
    "draw_boxes",
    "evaluate_detection",
    "mean_average_precision",
    "normalise",
    "predict",
    "save_picture",
    "save_pictures",
    "targets_in_pixels",
    "xyxy_to_xywh",
]
