"""Evaluating instance segmentation: predictions as `pipeline("image-segmentation", subtask="instance")`
makes them (masks at each original image's size), COCO mask and box mAP through torchmetrics'
`MeanAveragePrecision(iou_type=("segm", "bbox"))` (pycocotools' COCOeval), and PNGs of validation images
with their true and predicted masks.

As in detection.evaluate, torchmetrics' `update` would import torchvision only to convert box formats; the
`MeanAveragePrecision` here converts (x_min, y_min, x_max, y_max) boxes itself and encodes masks as COCO RLE
with pycocotools; the matching and the 101-point interpolated precision are torchmetrics' and pycocotools'.
"""

from __future__ import annotations

import os
from unittest import mock

import numpy as np
import torch
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from torchmetrics.detection import mean_ap as _torchmetrics_mean_ap

from ..detection.evaluate import class_colours, normalise, xyxy_to_xywh

# metrics.json's result keys -> torchmetrics' keys
KEYS = {"mask_map": "segm_map", "mask_map50": "segm_map_50", "mask_map75": "segm_map_75",
        "box_map": "bbox_map", "box_map50": "bbox_map_50", "box_map75": "bbox_map_75"}


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) masks -> (N, 4) boxes (x_min, y_min, x_max, y_max) in pixels bounding their pixels
    (zeros for an empty mask)."""
    masks = masks.bool()
    if not len(masks):
        return torch.zeros(0, 4)
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (N, H), (N, W)
    boxes = torch.zeros(len(masks), 4)
    for i, (r, c) in enumerate(zip(rows, cols)):
        if r.any():
            y, x = torch.nonzero(r).reshape(-1), torch.nonzero(c).reshape(-1)
            boxes[i] = torch.tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
    return boxes


class MaskMeanAveragePrecision(_torchmetrics_mean_ap.MeanAveragePrecision):
    """torchmetrics' COCO mask and box mAP (pycocotools), fed per image ``masks`` (N, H, W) bool, ``labels``,
    (predictions) ``scores``, and optionally ``boxes`` (N, 4) xyxy pixels (default: the masks' bounding
    boxes); no torchvision needed. `compute()` returns torchmetrics' dict with ``segm_*`` and ``bbox_*`` keys.

    Example:
        >>> import torch
        >>> from swin_hf.segmentation.instance_evaluate import MaskMeanAveragePrecision
        >>> masks = torch.zeros(2, 20, 30, dtype=torch.bool); masks[0, 2:8, 3:9] = True; masks[1, 10:18, 12:28] = True
        >>> metric = MaskMeanAveragePrecision()
        >>> metric.update([{"masks": masks, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}],
        ...               [{"masks": masks, "labels": torch.tensor([0, 1])}])
        >>> result = metric.compute()
        >>> float(result["segm_map"]), float(result["bbox_map"])
        (1.0, 1.0)
    """

    def __init__(self, class_metrics: bool = False, **kwargs):
        with mock.patch.object(_torchmetrics_mean_ap, "_TORCHVISION_AVAILABLE", True):
            super().__init__(box_format="xyxy", iou_type=("segm", "bbox"), class_metrics=class_metrics, **kwargs)

    @staticmethod
    def _rles(masks: torch.Tensor) -> tuple:
        out = []
        for mask in masks.bool().cpu().numpy():
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            out.append((tuple(rle["size"]), rle["counts"]))
        return tuple(out)

    def update(self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"{len(preds)} predictions for {len(target)} targets; give one of each per image.")
        for item in preds:
            boxes = item.get("boxes", mask_boxes(item["masks"]))
            self.detection_box.append(xyxy_to_xywh(boxes.reshape(-1, 4).float().cpu()))
            self.detection_mask.append(self._rles(item["masks"]))
            self.detection_labels.append(item["labels"].cpu())
            self.detection_scores.append(item["scores"].float().cpu())
        for item in target:
            boxes = item.get("boxes", mask_boxes(item["masks"]))
            self.groundtruth_box.append(xyxy_to_xywh(boxes.reshape(-1, 4).float().cpu()))
            self.groundtruth_mask.append(self._rles(item["masks"]))
            self.groundtruth_labels.append(item["labels"].cpu())
            self.groundtruth_crowds.append(item.get("iscrowd", torch.zeros_like(item["labels"])).cpu())
            self.groundtruth_area.append(item.get("area", torch.zeros_like(item["labels"])).cpu())


def instance_average_precision(predictions: list[dict], targets: list[dict]) -> dict:
    """COCO mask and box mAP of per-image predictions (``masks`` (N, H, W) bool, ``scores``, ``labels``) and
    targets (``masks``, ``labels``) at the same image sizes: {mask_map, mask_map50, mask_map75, box_map,
    box_map50, box_map75, images}.

    Example:
        >>> import torch
        >>> from swin_hf.segmentation.instance_evaluate import instance_average_precision
        >>> masks = torch.zeros(1, 16, 16, dtype=torch.bool); masks[0, 4:12, 2:9] = True
        >>> result = instance_average_precision([{"masks": masks, "scores": torch.tensor([0.5]), "labels": torch.tensor([3])}],
        ...                                     [{"masks": masks, "labels": torch.tensor([3])}])
        >>> result["mask_map"], result["mask_map50"], result["box_map"]
        (1.0, 1.0, 1.0)
    """
    metric = MaskMeanAveragePrecision()
    metric.update(predictions, targets)
    result = metric.compute()
    summary = {key: float(result[source]) for key, source in KEYS.items()}
    summary["images"] = len(targets)
    return summary


@torch.no_grad()
def predict_instances(model, processor, pixel_values: torch.Tensor, sizes, threshold: float = 0.0) -> list[dict]:
    """Instances per image as the pipeline makes them (the processor's `post_process_instance_segmentation`,
    each query's own mask kept whole): ``masks`` (N, h, w) bool at `sizes[i]` = (h, w), ``scores`` (N,),
    ``labels`` (N,), on the CPU."""
    outputs = model(pixel_values=pixel_values)
    sizes = [tuple(int(v) for v in s) for s in torch.as_tensor(sizes).reshape(-1, 2).tolist()]
    found = processor.post_process_instance_segmentation(outputs, threshold=threshold, target_sizes=sizes,
                                                         return_binary_maps=True)
    out = []
    for item, (h, w) in zip(found, sizes):
        info = item["segments_info"]
        masks = item["segmentation"]
        if not info or masks is None or masks.dim() != 3:
            masks = torch.zeros(0, h, w, dtype=torch.bool)
        out.append({"masks": masks.bool().cpu(), "scores": torch.tensor([s["score"] for s in info], dtype=torch.float32),
                    "labels": torch.tensor([s["label_id"] for s in info], dtype=torch.long)})
    return out


@torch.no_grad()
def evaluate_instances(model, processor, loader, dataset, gather=None, skipped: set | None = None) -> dict:
    """`instance_average_precision` over every image of `loader` (batches of `instance_data.collate` from
    `dataset`, an `InstanceDataset`), compared at each image's own size. With several processes `gather`
    collects the rows (duplicates dropped by row index) and every process gets the same result."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = {}
    for batch in loader:
        if skipped is not None:
            skipped.update(("validation", name) for name in batch["skipped_files"])
        if batch["pixel_values"] is None:
            continue
        pixels = normalise(batch["pixel_values"].to(device), processor.image_mean, processor.image_std)
        found = predict_instances(model, processor, pixels, batch["sizes"])
        for index, prediction, (h, w) in zip(batch["index"].tolist(), found, batch["sizes"].tolist()):
            masks, labels = dataset.truth(index, h, w)
            rows[index] = (_compact(prediction), _compact({"masks": torch.from_numpy(masks), "labels": torch.tensor(labels, dtype=torch.long)}))
    model.train(was_training)
    if gather is not None:
        rows = {index: row for part in gather(rows) for index, row in part.items()}
    order = sorted(rows)
    return instance_average_precision([_expand(rows[i][0]) for i in order], [_expand(rows[i][1]) for i in order])


def _compact(item: dict) -> dict:
    """Masks as bit-packed arrays (8x smaller) for gathering between processes."""
    masks = item["masks"].bool().numpy()
    return {**{k: v for k, v in item.items() if k != "masks"}, "packed": np.packbits(masks, axis=-1), "shape": masks.shape}


def _expand(item: dict) -> dict:
    shape = item["shape"]
    masks = np.unpackbits(item["packed"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)
    return {**{k: v for k, v in item.items() if k not in ("packed", "shape")}, "masks": torch.from_numpy(masks)}


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------


def draw_instances(image: Image.Image, masks, labels, id2label: dict[int, str], scores=None, scale: float = 1.0) -> Image.Image:
    """A copy of `image` enlarged `scale` times with each mask tinted in its class's colour, outlined, and
    named at its top-left corner (with its score, if given)."""
    width, height = image.size
    size = (round(width * scale), round(height * scale))
    canvas = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32)
    colours = class_colours(max(len(id2label), 1))
    masks = torch.as_tensor(masks).bool()
    names = []
    for i, (mask, label) in enumerate(zip(masks, torch.as_tensor(labels).reshape(-1).tolist())):
        big = np.asarray(Image.fromarray(mask.numpy().astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        tint = np.array(colours[int(label) % len(colours)], dtype=np.float32)
        canvas[big] = 0.45 * canvas[big] + 0.55 * tint
        edge = big & ~(np.roll(big, 1, 0) & np.roll(big, -1, 0) & np.roll(big, 1, 1) & np.roll(big, -1, 1))
        canvas[edge] = tint
        if big.any():
            ys, xs = np.nonzero(big)
            text = id2label.get(int(label), str(int(label))) + (f" {float(scores[i]):.2f}" if scores is not None else "")
            names.append((int(xs.min()), int(ys.min()), text, tuple(int(v) for v in tint)))
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for x, y, text, tint in names:
        left, top, right, bottom = draw.textbbox((x + 2, y + 1), text)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=tint)
        draw.text((x + 2, y + 1), text, fill=(0, 0, 0))
    return picture


def save_instance_picture(path: str, image: Image.Image, truth: dict, prediction: dict, id2label: dict[int, str],
                          threshold: float = 0.5) -> None:
    """One PNG: the image with its true masks | with the predicted masks scoring at least `threshold` (with
    their scores). Small images are enlarged to about 320 pixels."""
    scale = max(1.0, 320 / max(image.size))
    keep = prediction["scores"] >= threshold
    left = draw_instances(image, truth["masks"], truth["labels"], id2label, scale=scale)
    right = draw_instances(image, prediction["masks"][keep], prediction["labels"][keep], id2label,
                           scores=prediction["scores"][keep], scale=scale)
    canvas = Image.new("RGB", (left.width * 2 + 4, left.height + 16), (255, 255, 255))
    canvas.paste(left, (0, 16))
    canvas.paste(right, (left.width + 4, 16))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), "truth", fill=(0, 0, 0))
    draw.text((left.width + 8, 2), f"prediction (score >= {threshold:g})", fill=(0, 0, 0))
    canvas.save(path)


@torch.no_grad()
def save_instance_pictures(model, processor, dataset, directory: str, id2label: dict[int, str], count: int = 8,
                           threshold: float = 0.5) -> list[str]:
    """`save_instance_picture` for the first `count` readable images of `dataset` (an `InstanceDataset`), drawn
    on the original images: validation_000.png, ..."""
    from ..training.data import decode_image

    os.makedirs(directory, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    paths = []
    for index in range(len(dataset)):
        if len(paths) >= count:
            break
        pixels, _, _, _, size, _ = dataset[index]
        if pixels is None:
            continue
        pixels = normalise(pixels[None].to(device), processor.image_mean, processor.image_std)
        prediction = predict_instances(model, processor, pixels, [size])[0]
        masks, labels = dataset.truth(index, *size)
        image = decode_image(dataset.split[index][dataset.image_column])
        path = os.path.join(directory, f"validation_{len(paths):03d}.png")
        save_instance_picture(path, image, {"masks": torch.from_numpy(masks), "labels": torch.tensor(labels)}, prediction,
                              id2label, threshold)
        paths.append(path)
    model.train(was_training)
    return paths


__all__ = [
    "KEYS",
    "MaskMeanAveragePrecision",
    "draw_instances",
    "evaluate_instances",
    "instance_average_precision",
    "mask_boxes",
    "predict_instances",
    "save_instance_picture",
    "save_instance_pictures",
]
