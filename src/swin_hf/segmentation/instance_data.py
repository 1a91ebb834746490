"""Data for instance segmentation: the built-in offline set, reading and checking sets in one column
convention, joint image/mask augmentation, collation.

**The convention**: an `image` column and an `objects` column holding, per image, `segmentation` (one
entry per object: COCO's polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixels, or a COCO RLE
``{"size": [height, width], "counts": str or [int, ...]}``, or either as JSON text, which is how the
built-in set and COCO folders store them since an Arrow column holds one type) and `category` (class
indices, ideally a `ClassLabel`); optional `bbox` (COCO [x, y, w, h], not used: boxes are taken from the
masks) and `iscrowd` (1: a region of many objects). COCO-JSON folders (``annotations/<split>.json`` with
polygon or RLE `segmentation` + images in ``<split>/``) are read by detection.data's
`coco_folder_dataset` into this convention.

**Checks** (`check_instances`, before training), each an error naming the field and the fix:
no objects column, no `segmentation`/`category`, one list longer than the other, a category outside the
class list, an RLE whose size is not its image's, a polygon with an odd number of values, a segmentation
that is neither polygons nor RLE. Counted in the log and metrics.json, and handled:

- polygons with fewer than 3 points: that polygon is left out (the object too, if it has no other);
- masks with no pixel inside the image (polygons wholly outside it): the object is left out; polygons
  reaching past the image are cut at its edge;
- crowd regions (``iscrowd: 1``): left out of the targets (COCO folders: left out when read);
- images without objects: kept (they teach the model to find nothing).

**The built-in set** ("pasted-objects", as detect.py's): detection.data's scenes, each object's mask the
pasted pixels of its cut-out with alpha >= 128 (`pasted_objects_scene(..., with_masks=True)`), so masks
are exact and never overlap. Default size: 1,200 training and 150 validation images of 128x128 pixels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

from ..detection.data import (
    BUILTIN,
    BUILTIN_CLASSES,
    BUILTIN_SIZES,
    builtin_sources,
    class_names_of,
    coco_folder_dataset,
    is_coco_folder,
    pasted_objects_scene,
    stored_image_size,
)
from ..training.data import DataError, SkipCounter, choose_splits, decode_or_skip, file_name

logger = logging.getLogger(__name__)

MIN_POLYGON_POINTS = 3


def instance_features(class_names):
    """`datasets.Features` of the convention: image + objects{segmentation (JSON text), category, bbox, iscrowd}."""
    import datasets

    return datasets.Features({
        "image": datasets.Image(),
        "objects": datasets.Sequence({
            "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
            "category": datasets.ClassLabel(names=list(class_names)),
            "segmentation": datasets.Value("string"),
        }),
    })


def mask_to_rle(mask: np.ndarray) -> dict:
    """A (H, W) bool mask as COCO's compressed RLE {"size": [H, W], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def pasted_instances_dataset(num_train: int = 1200, num_validation: int = 150, size: int = 128, seed: int = 0):
    """The built-in offline instance set as a `datasets.DatasetDict` (`train`, `validation`): detection's
    pasted-objects scenes (the same images and boxes for the same seed) with each object's exact mask as RLE.
    Returns (dataset_dict, id2label).

    Example:
        >>> from swin_hf.segmentation.instance_data import pasted_instances_dataset, object_masks
        >>> splits, id2label = pasted_instances_dataset(num_train=2, num_validation=1, size=64)
        >>> row = splits["train"][0]
        >>> masks, stats = object_masks(row["objects"]["segmentation"], 64, 64)
        >>> masks.shape[0] == len(row["objects"]["category"]), masks.dtype
        (True, dtype('bool'))
    """
    import datasets

    objects, backgrounds = builtin_sources()

    def split(n: int, stream: int):  # one stream per split, as detection's set
        rng = np.random.default_rng([seed, stream])
        scenes = [pasted_objects_scene(rng, size, objects, backgrounds, with_masks=True) for _ in range(n)]
        rows = [{"bbox": s[1], "category": s[2], "segmentation": [json.dumps(mask_to_rle(m)) for m in s[3]]} for s in scenes]
        return datasets.Dataset.from_dict({"image": [s[0] for s in scenes], "objects": rows},
                                          features=instance_features(BUILTIN_CLASSES))

    splits = datasets.DatasetDict({"train": split(num_train, 0), "validation": split(num_validation, 1)})
    return splits, dict(enumerate(BUILTIN_CLASSES))


def load_instance_splits(dataset: str, dataset_config: str | None = None, max_train: int | None = None,
                         max_validation: int | None = None):
    """(DatasetDict, id2label or None): the built-in set (only the first `max_train` / `max_validation` images
    are made), a COCO-JSON folder (polygon or RLE segmentation kept), a saved DatasetDict folder, or anything
    `datasets.load_dataset` takes."""
    import os

    from ..training.data import load_splits

    if dataset == BUILTIN:
        sizes = {k: min(v, limit or v) for (k, v), limit in zip(BUILTIN_SIZES.items(), (max_train, max_validation))}
        return pasted_instances_dataset(**sizes)
    if os.path.exists(dataset) and not os.path.isdir(dataset):
        raise DataError(f"--dataset {dataset!r} is a file; give a COCO folder (annotations/*.json + images), a saved "
                        "DatasetDict folder or a dataset name.")
    if is_coco_folder(dataset):
        return coco_folder_dataset(dataset, features=instance_features)
    return load_splits(dataset=dataset, dataset_config=dataset_config), None


# --------------------------------------------------------------------------------------------------
# Masks from COCO segmentations, and what checking them finds
# --------------------------------------------------------------------------------------------------


@dataclass
class InstanceStats:
    """What checking a split found; every object left out is counted here and logged."""

    images: int = 0
    objects: int = 0
    crowd: int = 0
    short_polygons: int = 0  # polygons of fewer than 3 points, left out
    outside: int = 0  # objects with no pixel inside the image, left out
    empty_images: int = 0
    unreadable: int = 0

    def describe(self, split: str) -> str:
        parts = [f"{split}: {self.images} images, {self.objects} objects"]
        if self.crowd:
            parts.append(f"{self.crowd} crowd regions (iscrowd=1, left out)")
        if self.short_polygons:
            parts.append(f"{self.short_polygons} polygons of fewer than {MIN_POLYGON_POINTS} points (left out)")
        if self.outside:
            parts.append(f"{self.outside} objects with no pixel inside the image (left out)")
        if self.empty_images:
            parts.append(f"{self.empty_images} images without objects (kept: they teach the model to find nothing)")
        if self.unreadable:
            parts.append(f"{self.unreadable} images whose size could not be read (checked when loaded)")
        return "; ".join(parts)


def _parse(segmentation, where: str):
    """COCO polygons (list of lists) or RLE (dict) from a segmentation entry (JSON text allowed)."""
    if isinstance(segmentation, str):
        try:
            segmentation = json.loads(segmentation)
        except ValueError as error:
            raise DataError(f"{where}: segmentation is text but not JSON ({error}); give COCO polygons or an RLE.") from error
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return segmentation
    if isinstance(segmentation, (list, tuple)) and all(isinstance(p, (list, tuple)) for p in segmentation):
        return [list(p) for p in segmentation]
    raise DataError(
        f"{where}: segmentation {str(segmentation)[:60]!r} is neither COCO polygons ([[x1, y1, x2, y2, ...], ...] in "
        "pixels) nor an RLE ({'size': [height, width], 'counts': ...}); convert it to one of them."
    )


def _rles(segmentation, height: int, width: int, where: str, stats: InstanceStats | None):
    """The pycocotools RLE list of one object (empty when it has no usable polygon)."""
    parsed = _parse(segmentation, where)
    if isinstance(parsed, dict):
        size = [int(v) for v in parsed["size"]]
        if size != [height, width]:
            raise DataError(
                f"{where}: RLE size {size} is not its image's [height, width] = [{height}, {width}]; the RLE must be "
                "encoded at the image's own size (re-encode it, or fix the image)."
            )
        counts = parsed["counts"]
        if isinstance(counts, str):
            return [{"size": size, "counts": counts.encode("ascii")}]
        return mask_utils.frPyObjects([{"size": size, "counts": list(counts)}], height, width)
    polygons = []
    for polygon in parsed:
        if len(polygon) % 2:
            raise DataError(f"{where}: a polygon has {len(polygon)} values; each needs x, y pairs ([x1, y1, x2, y2, ...]).")
        if len(polygon) < 2 * MIN_POLYGON_POINTS:
            if stats is not None:
                stats.short_polygons += 1
            continue
        polygons.append([float(v) for v in polygon])
    return mask_utils.frPyObjects(polygons, height, width) if polygons else []


def object_masks(segmentations, height: int, width: int, where: str = "objects", stats: InstanceStats | None = None,
                 decode: bool = True):
    """The masks of one image's objects: ((K, height, width) bool array, or (K,) pixel areas when not
    `decode`; the indices of the K objects kept). Objects with no usable polygon or no pixel in the image are
    left out (counted in `stats`)."""
    out, kept = [], []
    for i, segmentation in enumerate(segmentations or []):
        rles = _rles(segmentation, height, width, f"{where}, object {i}", stats)
        if not rles:
            continue
        rle = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
        area = int(mask_utils.area(rle))
        if area == 0:
            if stats is not None:
                stats.outside += 1
            continue
        out.append(mask_utils.decode(rle).astype(bool) if decode else area)
        kept.append(i)
    if decode:
        masks = np.stack(out) if out else np.zeros((0, height, width), dtype=bool)
    else:
        masks = np.asarray(out, dtype=np.int64)
    return masks, kept


def _crowd(entry: dict) -> list[bool]:
    flags = entry.get("iscrowd")
    return [bool(v) for v in flags] if flags else [False] * len(entry.get("category") or [])


def check_instances(split, split_name: str, num_labels: int, image_column: str = "image",
                    objects_column: str = "objects") -> InstanceStats:
    """Check every row of a split before training (see the module's list); returns what was counted. Raises
    DataError naming the row, the field and the fix."""
    import datasets

    columns = split.column_names
    if objects_column not in columns:
        raise DataError(
            f"Split {split_name!r} has columns {columns} but no {objects_column!r} column. Instance sets need, per image, "
            "objects with 'segmentation' (COCO polygons or RLE) and 'category' (class index); name the column with "
            "--objects-column."
        )
    if image_column not in columns:
        raise DataError(f"Split {split_name!r} has columns {columns} but no image column {image_column!r}; "
                        "name it with --image-column.")
    sizes = [stored_image_size(v) for v in split.cast_column(image_column, datasets.Image(decode=False))[image_column]]
    stats = InstanceStats(images=len(split))
    for row, (entry, size) in enumerate(zip(split[objects_column], sizes)):
        where = f"Split {split_name!r}, row {row}"
        if not isinstance(entry, dict) or "segmentation" not in entry or "category" not in entry:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DataError(f"{where}: {objects_column!r} holds {keys}, not 'segmentation' and 'category'. Each image's "
                            "objects need 'segmentation' (COCO polygons or RLE per object) and 'category' (class indices).")
        segmentations, categories = entry["segmentation"] or [], entry["category"] or []
        if len(segmentations) != len(categories):
            raise DataError(f"{where}: {len(segmentations)} segmentations but {len(categories)} categories; give one "
                            "category per object.")
        bad = [c for c in categories if not isinstance(c, (int, np.integer)) or not 0 <= c < num_labels]
        if bad:
            raise DataError(
                f"{where}: category {bad[0]!r} is outside the {num_labels} classes (0..{num_labels - 1}). Fix the data, "
                "or give the full class list with --id2label (or --num-labels)."
            )
        crowd = _crowd(entry)
        stats.crowd += sum(crowd)
        kept_in = [s for s, c in zip(segmentations, crowd) if not c]
        stats.objects += len(kept_in)
        if size is None:
            stats.unreadable += 1
            continue
        width, height = size
        _, kept = object_masks(kept_in, height, width, where, stats, decode=False)
        stats.empty_images += not kept
    return stats


# --------------------------------------------------------------------------------------------------
# A checked set, ready to train on
# --------------------------------------------------------------------------------------------------


@dataclass
class InstanceData:
    train: object  # datasets.Dataset, images not decoded
    validation: object
    id2label: dict[int, str]
    image_column: str = "image"
    objects_column: str = "objects"
    stats: dict[str, InstanceStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def prepare_instances(splits, id2label: dict[int, str] | None = None, image_column: str = "image",
                      objects_column: str = "objects", validation_fraction: float = 0.1,
                      max_train_samples: int | None = None, max_eval_samples: int | None = None, seed: int = 0,
                      train_split: str | None = None) -> InstanceData:
    """Choose the train/validation splits (training.data.choose_splits), find the class names (`id2label`, else
    the `category` ClassLabel), check every row (`check_instances`) and log what will be left out."""
    import datasets

    if isinstance(splits, datasets.Dataset):
        splits = datasets.DatasetDict(train=splits)
    train_name, validation_name = choose_splits(splits, train_split)
    train = splits[train_name]
    validation = splits[validation_name] if validation_name else None
    notes = []
    if validation is None:
        parts = train.train_test_split(test_size=validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
        notes.append(f"validation = {validation_fraction:.0%} of {train_name!r} (seed {seed})")
    if max_train_samples:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples:
        validation = validation.select(range(min(max_eval_samples, len(validation))))
    for name, split in (("train", train), ("validation", validation)):
        if len(split) == 0:
            raise DataError(f"The {name} split is empty; it needs at least one image.")
    if id2label is None:
        names = class_names_of(train, objects_column) if objects_column in train.column_names else None
        if names is None:
            raise DataError("The objects' 'category' has no class names (not a ClassLabel); give them with --id2label "
                            "FILE.json ({\"0\": \"cat\", ...}) or their number with --num-labels.")
        id2label = dict(enumerate(names))
    stats = {}
    for name, split in (("train", train), ("validation", validation)):
        stats[name] = check_instances(split, name, len(id2label), image_column, objects_column)
        logger.info("%s", stats[name].describe(name))
        notes.append(stats[name].describe(name))
    if stats["train"].objects - stats["train"].outside == 0:
        raise DataError("The training split has no usable object mask at all; a model cannot learn from it.")
    train = train.cast_column(image_column, datasets.Image(decode=False))
    validation = validation.cast_column(image_column, datasets.Image(decode=False))
    return InstanceData(train, validation, id2label, image_column, objects_column, stats, notes)


# --------------------------------------------------------------------------------------------------
# Items, batches, augmentation
# --------------------------------------------------------------------------------------------------


class InstanceDataset(torch.utils.data.Dataset):
    """Items of a checked split: (uint8 pixels (3, S, S) resized without keeping the aspect ratio, or None for
    an unreadable image; uint8 masks (K, S, S); labels (K,); row index; original (height, width); file name).
    The image is resized with PIL's bilinear, as the saved image processor does, masks with nearest.
    `truth(index)` gives the masks at the image's own size (what evaluation compares with)."""

    def __init__(self, split, size: int, image_column: str = "image", objects_column: str = "objects",
                 skipped: SkipCounter | None = None):
        self.split, self.size = split, size
        self.image_column, self.objects = image_column, split[objects_column]
        self.skipped = skipped or SkipCounter()

    def __len__(self) -> int:
        return len(self.split)

    def truth(self, index: int, height: int, width: int) -> tuple[np.ndarray, list[int]]:
        """((K, height, width) bool masks, K labels) of the non-crowd objects of row `index`."""
        entry = self.objects[index]
        crowd = _crowd(entry)
        segmentations = [s for s, c in zip(entry["segmentation"] or [], crowd) if not c]
        categories = [int(k) for k, c in zip(entry["category"] or [], crowd) if not c]
        masks, kept = object_masks(segmentations, height, width, f"row {index}")
        return masks, [categories[i] for i in kept]

    def __getitem__(self, index: int):
        index = int(index)
        value = self.split[index][self.image_column]
        image = decode_or_skip(value, index, lambda image: image, self.skipped)
        if image is None:
            return None, None, None, index, None, file_name(value, index)
        width, height = image.size
        masks, labels = self.truth(index, height, width)
        S = self.size
        pixels = torch.from_numpy(np.asarray(image.resize((S, S), Image.BILINEAR), dtype=np.uint8).copy()).permute(2, 0, 1)
        small = torch.from_numpy(masks.astype(np.uint8))
        if len(small) and (height, width) != (S, S):
            small = F.interpolate(small[None].float(), size=(S, S), mode="nearest")[0].to(torch.uint8)
        elif not len(small):
            small = torch.zeros(0, S, S, dtype=torch.uint8)
        return pixels, small, torch.tensor(labels, dtype=torch.long), index, (height, width), file_name(value, index)


def collate(items) -> dict:
    """A batch: pixel_values uint8 (B, 3, S, S) (None if every image was unreadable), masks and labels (lists,
    one tensor per image: (K, S, S) uint8, (K,)), index (B,), sizes (B, 2) original (height, width),
    skipped_files."""
    good = [item for item in items if item[0] is not None]
    batch = {"skipped_files": [item[5] for item in items if item[0] is None]}
    if not good:
        return {**batch, "pixel_values": None, "masks": [], "labels": [], "index": None, "sizes": None}
    return {
        **batch,
        "pixel_values": torch.stack([item[0] for item in good]),
        "masks": [item[1] for item in good],
        "labels": [item[2] for item in good],
        "index": torch.tensor([item[3] for item in good]),
        "sizes": torch.tensor([item[4] for item in good]),
    }


class MaskAugment(torch.nn.Module):
    """Joint image/mask augmentation of a training batch: horizontal flip, random zoom (`scale`: below 1 zooms
    out) and shift (`translate`, a fraction of the side), one affine map per image applied to the image
    (bilinear; what it uncovers is black) and its masks (nearest), then a brightness/contrast jitter of the
    image only. A mask keeping less than `min_visible` of its pixels (or none) is left out with its label.
    Draws from torch's global RNG (which checkpoints hold: a resumed run sees the same augmentation).

    Example:
        >>> import torch
        >>> from swin_hf.segmentation.instance_data import MaskAugment
        >>> augment = MaskAugment(hflip=1.0, scale=(1.0, 1.0), translate=0.0, jitter=0.0)
        >>> mask = torch.zeros(1, 8, 8, dtype=torch.uint8); mask[0, 2:4, 0:3] = 1
        >>> _, masks, labels = augment(torch.zeros(1, 3, 8, 8), [mask], [torch.tensor([2])])
        >>> masks[0][0, 2].int().tolist(), labels[0].tolist()
        ([0, 0, 0, 0, 0, 1, 1, 1], [2])
    """

    def __init__(self, hflip: float = 0.5, scale: tuple[float, float] = (0.6, 1.4), translate: float = 0.1,
                 jitter: float = 0.2, min_visible: float = 0.3):
        super().__init__()
        self.hflip, self.scale, self.translate, self.jitter, self.min_visible = hflip, tuple(scale), translate, jitter, min_visible

    def forward(self, images: torch.Tensor, masks: list[torch.Tensor], labels: list[torch.Tensor]):
        """images (B, 3, H, W) in 0-1; masks per image (K, H, W) 0/1 -> the same, augmented (masks float 0/1)."""
        B = images.shape[0]
        device, dtype = images.device, images.dtype
        flip = torch.where(torch.rand(B) < self.hflip, -1.0, 1.0)
        lo, hi = self.scale
        zoom = torch.exp(torch.empty(B).uniform_(np.log(lo), np.log(hi)))
        shift = torch.empty(B, 2).uniform_(-self.translate, self.translate) * 2  # in grid units (-1..1 spans the side)
        # the output pixel at grid point p samples the input at (p * flip_x / zoom - shift): (B, 2, 3)
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0] = flip / zoom
        theta[:, 1, 1] = 1.0 / zoom
        theta[:, :, 2] = -shift
        theta = theta.to(device=device, dtype=dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out_images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.jitter:
            brightness = 1 + torch.empty(B, 1, 1, 1).uniform_(-self.jitter, self.jitter).to(device, dtype)
            contrast = 1 + torch.empty(B, 1, 1, 1).uniform_(-self.jitter, self.jitter).to(device, dtype)
            mean = out_images.mean(dim=(1, 2, 3), keepdim=True)
            out_images = ((out_images - mean) * contrast + mean * brightness).clamp(0, 1)
        out_masks, out_labels = [], []
        for b, (mask, classes) in enumerate(zip(masks, labels)):
            if not len(mask):
                out_masks.append(mask.float())
                out_labels.append(classes)
                continue
            moved = F.grid_sample(mask[None].to(device, dtype), grid[b:b + 1], mode="nearest", padding_mode="zeros",
                                  align_corners=False)[0]
            before = mask.flatten(1).float().sum(1).to(device) * (zoom[b].to(device) ** 2)
            after = moved.flatten(1).sum(1)
            keep = (after > 0) & (after >= self.min_visible * before)
            out_masks.append(moved[keep])
            out_labels.append(classes[keep.to(classes.device)])
        return out_images, out_masks, out_labels


__all__ = [
    "BUILTIN",
    "InstanceData",
    "InstanceDataset",
    "InstanceStats",
    "MIN_POLYGON_POINTS",
    "MaskAugment",
    "check_instances",
    "collate",
    "instance_features",
    "load_instance_splits",
    "mask_to_rle",
    "object_masks",
    "pasted_instances_dataset",
    "prepare_instances",
]
