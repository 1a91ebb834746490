"""Data for object detection: the built-in offline set, reading and checking sets in the Hub's detection
convention, joint image/box augmentation, collation.

**The convention** (transformers' object-detection example, e.g. the Hub's cppe-5): an `image` column and
an `objects` column holding, per image, `bbox` (a list of COCO boxes ``[x_min, y_min, width, height]`` in
pixels) and `category` (a list of class indices, ideally a `ClassLabel`). COCO-JSON folders
(``annotations/*.json`` + images) are converted to it (`coco_folder_dataset`).

**The built-in set** ("pasted objects") needs no network. Its objects are real photographs and glyphs that
ship inside PyPI packages swin_hf's recipes already depend on, cut out with exact masks:

- ``flower``: the dahlia of scikit-learn's flower.jpg, cut along a circle;
- ``face``: Grace Hopper's head (with her cap) from matplotlib's grace_hopper.jpg, cut along an ellipse;
- ``present``: matplotlib's Minduka_Present_Blue_Pack.png, a gift box with its own alpha channel;
- ``digit``: scikit-learn's 1,797 handwritten digits, as ink of a random colour (alpha = stroke intensity).

Each image is a random crop of a real photo background (scikit-learn's china.jpg; the parts of flower.jpg
and grace_hopper.jpg that hold no dahlia or face: the blurred leaves, the flag and the sky), resized to the
image size, with 1-3 objects pasted at random scales (22-55% of the image side; digits 16-35%), aspect
ratios (0.8-1.25), mirroring and brightness (0.75-1.25) and never overlapping. An object's box is the
bounding box of its pasted pixels with alpha >= 0.5, so boxes are exact. Default size: 1,200 training
and 150 validation images of 128x128 pixels (about 2,450 and 300 objects), made in about 5 seconds.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..training.data import DataError, SkipCounter, choose_splits, decode_or_skip, file_name, path_inside

logger = logging.getLogger(__name__)

BUILTIN = "pasted-objects"  # the --dataset name of the built-in set
BUILTIN_CLASSES = ("flower", "face", "present", "digit")
ALPHA_THRESHOLD = 128  # a pasted pixel belongs to its object's box when its alpha is at least this


# --------------------------------------------------------------------------------------------------
# The built-in set
# --------------------------------------------------------------------------------------------------


def _sample_photos() -> dict[str, Image.Image]:
    """The sample photos of scikit-learn and matplotlib (those of the segmentation set) and matplotlib's
    gift-box picture (RGBA)."""
    import matplotlib

    from ..segmentation.data import texture_sources

    china, flower, hopper = texture_sources()
    present = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "Minduka_Present_Blue_Pack.png")
    return {"china.jpg": china, "flower.jpg": flower, "grace_hopper.jpg": hopper,
            "present.png": Image.open(present).convert("RGBA")}


def _cut(photo: Image.Image, box: tuple[int, int, int, int], ellipse: tuple[int, int, int, int]) -> Image.Image:
    """An RGBA cut-out: `photo` cropped to `box`, opaque inside `ellipse` (crop coordinates), clear outside."""
    crop = photo.crop(box).convert("RGBA")
    alpha = Image.new("L", crop.size, 0)
    ImageDraw.Draw(alpha).ellipse(ellipse, fill=255)
    crop.putalpha(alpha)
    return crop


def builtin_sources() -> tuple[dict[str, list[Image.Image]], list[Image.Image]]:
    """(cut-outs per class of BUILTIN_CLASSES as RGBA images, background photos as RGB images).

    Example:
        >>> from swin_hf.detection.data import builtin_sources
        >>> objects, backgrounds = builtin_sources()
        >>> [len(objects[name]) for name in ("flower", "face", "present", "digit")], len(backgrounds)
        ([1, 1, 1, 1797], 6)
    """
    from sklearn.datasets import load_digits

    photos = _sample_photos()
    flower, hopper, china = photos["flower.jpg"], photos["grace_hopper.jpg"], photos["china.jpg"]
    digits = load_digits().images  # (1797, 8, 8), values 0..16
    objects = {
        "flower": [_cut(flower, (165, 80, 450, 365), (4, 4, 281, 281))],  # the dahlia, 277 px across
        "face": [_cut(hopper, (145, 20, 380, 345), (6, 2, 229, 322))],  # cap to chin
        "present": [photos["present.png"]],
        "digit": [Image.fromarray(np.uint8(np.clip(d * 16, 0, 255)), mode="L") for d in digits],
    }
    backgrounds = [
        china,
        flower.crop((0, 0, 160, 427)),  # blurred leaves left and right of the dahlia
        flower.crop((455, 0, 640, 360)),
        hopper.crop((0, 0, 140, 420)),  # the flag
        hopper.crop((385, 0, 512, 330)),  # the sky
        china.crop((330, 0, 640, 200)),  # sky and lake
    ]
    return objects, backgrounds


def _background(rng: np.random.Generator, backgrounds: list[Image.Image], size: int) -> Image.Image:
    photo = backgrounds[int(rng.integers(len(backgrounds)))]
    side = int(min(photo.size) * rng.uniform(0.4, 1.0))
    left = int(rng.integers(0, photo.width - side + 1))
    top = int(rng.integers(0, photo.height - side + 1))
    image = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def _object(rng: np.random.Generator, name: str, cutouts: list[Image.Image], size: int) -> Image.Image:
    """One RGBA object at a random scale, aspect ratio, mirroring and brightness."""
    source = cutouts[int(rng.integers(len(cutouts)))]
    low, high = (0.16, 0.35) if name == "digit" else (0.22, 0.55)
    side = rng.uniform(low, high) * size
    aspect = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    ratio = source.width / source.height * aspect
    width, height = max(4, round(side * np.sqrt(ratio))), max(4, round(side / np.sqrt(ratio)))
    if name == "digit":  # ink of a random colour; alpha = stroke intensity
        alpha = source.resize((width, height), Image.BILINEAR)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cut = Image.new("RGBA", (width, height), colour)
        cut.putalpha(alpha)
    else:
        cut = source.resize((width, height), Image.BILINEAR)
        scale = rng.uniform(0.75, 1.25)
        rgb = np.asarray(cut, dtype=np.float32)
        rgb[..., :3] = np.clip(rgb[..., :3] * scale, 0, 255)
        cut = Image.fromarray(rgb.astype(np.uint8), mode="RGBA")
    return cut.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else cut


def pasted_objects_scene(
    rng: np.random.Generator, size: int, objects: dict[str, list[Image.Image]], backgrounds: list[Image.Image],
    max_objects: int = 3, with_masks: bool = False,
) -> tuple:
    """One image of the built-in set: (RGB image, COCO boxes [x, y, w, h] in pixels, class indices), and with
    `with_masks` each object's exact mask too, (size, size) bool arrays of its pasted pixels with alpha >=
    ALPHA_THRESHOLD (the pixels its box bounds). The same draws either way: masks change nothing else.

    Objects never overlap (a placement that would is drawn again, up to 20 times, then left out)."""
    image = _background(rng, backgrounds, size)
    boxes: list[list[float]] = []
    categories: list[int] = []
    masks: list[np.ndarray] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(BUILTIN_CLASSES)))
        cut = _object(rng, BUILTIN_CLASSES[label], objects[BUILTIN_CLASSES[label]], size)
        x0, y0, x1, y1 = cut.getchannel("A").point(lambda a: 255 if a >= ALPHA_THRESHOLD else 0).getbbox() or (0, 0, 0, 0)
        if x1 <= x0 or y1 <= y0 or cut.width > size or cut.height > size:
            continue
        for _attempt in range(20):
            left, top = int(rng.integers(0, size - cut.width + 1)), int(rng.integers(0, size - cut.height + 1))
            box = (left + x0, top + y0, left + x1, top + y1)
            if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
                image.paste(cut, (left, top), cut)
                taken.append(box)
                boxes.append([float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])])
                categories.append(label)
                if with_masks:
                    mask = np.zeros((size, size), dtype=bool)
                    mask[top:top + cut.height, left:left + cut.width] = np.asarray(cut.getchannel("A")) >= ALPHA_THRESHOLD
                    masks.append(mask)
                break
    return (image, boxes, categories, masks) if with_masks else (image, boxes, categories)


def detection_features(class_names):
    """`datasets.Features` of the Hub's detection convention: image + objects{bbox (COCO xywh), category}."""
    import datasets

    return datasets.Features({
        "image": datasets.Image(),
        "objects": datasets.Sequence({
            "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
            "category": datasets.ClassLabel(names=list(class_names)),
        }),
    })


BUILTIN_SIZES = {"num_train": 1200, "num_validation": 150}


def pasted_objects_dataset(num_train: int = 1200, num_validation: int = 150, size: int = 128, seed: int = 0):
    """The built-in offline detection set as a `datasets.DatasetDict` (`train`, `validation`) in the Hub's
    detection convention. Returns (dataset_dict, id2label). Deterministic for a given seed.

    Example:
        >>> from swin_hf.detection.data import pasted_objects_dataset
        >>> splits, id2label = pasted_objects_dataset(num_train=4, num_validation=2, size=64)
        >>> splits["train"].column_names, id2label
        (['image', 'objects'], {0: 'flower', 1: 'face', 2: 'present', 3: 'digit'})
        >>> sorted(splits["train"][0]["objects"])
        ['bbox', 'category']
    """
    import datasets

    objects, backgrounds = builtin_sources()

    def split(n: int, stream: int):  # one random stream per split: the first n images never depend on the other split
        rng = np.random.default_rng([seed, stream])
        scenes = [pasted_objects_scene(rng, size, objects, backgrounds) for _ in range(n)]
        return datasets.Dataset.from_dict(
            {"image": [s[0] for s in scenes], "objects": [{"bbox": s[1], "category": s[2]} for s in scenes]},
            features=detection_features(BUILTIN_CLASSES),
        )

    splits = datasets.DatasetDict({"train": split(num_train, 0), "validation": split(num_validation, 1)})
    return splits, dict(enumerate(BUILTIN_CLASSES))

# --------------------------------------------------------------------------------------------------
# Reading: load_dataset names, saved DatasetDicts, COCO-JSON folders
# --------------------------------------------------------------------------------------------------


def is_coco_folder(path: str) -> bool:
    """A folder with annotations/*.json (COCO's own layout, and what most labelling tools export)."""
    return os.path.isdir(path) and bool(glob.glob(os.path.join(glob.escape(path), "annotations", "*.json")))


def _split_name(stem: str) -> str:
    """instances_train2017 -> train, instances_val2017 -> validation, test.json -> test, other -> the stem."""
    lowered = stem.lower()
    for key, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        if key in lowered:
            return name
    return stem


def _image_folder(root: str, stem: str, first_file: str) -> str:
    """Where the images of annotations/<stem>.json live: the first of root/<stem>, root/<stem without
    'instances_'>, root/images/<either>, root/images, root that holds the first image."""
    short = stem.split("_", 1)[1] if "_" in stem else stem
    candidates = [os.path.join(root, stem), os.path.join(root, short), os.path.join(root, "images", stem),
                  os.path.join(root, "images", short), os.path.join(root, "images"), root]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, first_file)):
            return folder
    raise DataError(
        f"annotations/{stem}.json names image {first_file!r}, which is in none of {[os.path.relpath(c, root) for c in candidates]} "
        f"under {root!r}; put the images in {os.path.join(root, short)!r} (or {os.path.join(root, 'images')!r})."
    )


def coco_folder_dataset(root: str, features=None):
    """A COCO-JSON folder (``annotations/<split>.json`` + images) as a `datasets.DatasetDict` in the Hub's
    detection convention, and its id2label. COCO's category ids (any integers, with gaps) become the indices
    0..K-1 in id order, named by the categories' `name`; every split must list the same categories. Crowd
    annotations (``iscrowd: 1``, regions of many objects) are left out, as DETR's training does, and counted
    in the log; images without annotations are kept (objects: none). Every `file_name` must lead inside
    `root` (training.data.path_inside: no '..', absolute paths or symlinks out of it).

    `features(class_names)`: the `datasets.Features` to build (default `detection_features`); when its
    objects have a ``segmentation`` field, each annotation's COCO `segmentation` (polygons or RLE) is kept
    there as JSON text (the instance-segmentation convention, swin_hf.segmentation.instance_data).

    Example:
        >>> import json, os, tempfile
        >>> from PIL import Image
        >>> from swin_hf.detection.data import coco_folder_dataset
        >>> root = tempfile.mkdtemp(); os.makedirs(f"{root}/annotations"); os.makedirs(f"{root}/train")
        >>> Image.new("RGB", (40, 30)).save(f"{root}/train/a.png")
        >>> json.dump({"images": [{"id": 7, "file_name": "a.png", "width": 40, "height": 30}],
        ...            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 3, 10, 12], "iscrowd": 0}],
        ...            "categories": [{"id": 3, "name": "cat"}]}, open(f"{root}/annotations/train.json", "w"))
        >>> splits, id2label = coco_folder_dataset(root)
        >>> splits["train"][0]["objects"], id2label
        ({'bbox': [[2.0, 3.0, 10.0, 12.0]], 'category': [0]}, {0: 'cat'})
    """
    import datasets

    files = sorted(glob.glob(os.path.join(glob.escape(root), "annotations", "*.json")))
    if not files:
        raise DataError(f"{root!r} has no annotations/*.json; a COCO folder holds annotations/<split>.json and the images.")
    splits, categories = {}, None
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            with open(path) as f:
                coco = json.load(f)
            images, annotations, found = coco["images"], coco.get("annotations", []), coco["categories"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(
                f"{path} is not a COCO detection file ({type(error).__name__}: {error}); it needs 'images', "
                "'annotations' and 'categories' lists."
            ) from error
        found = sorted((int(c["id"]), str(c["name"])) for c in found)
        if categories is not None and found != categories:
            raise DataError(f"{path} lists other categories than {files[0]}; every split must use the same list.")
        categories = found
        index = {cid: i for i, (cid, _) in enumerate(found)}
        features_of = features or detection_features
        with_segmentation = "segmentation" in _object_fields(features_of([name for _, name in found]))
        fields = ("bbox", "category", "segmentation") if with_segmentation else ("bbox", "category")
        per_image: dict[int, dict] = {int(image["id"]): {k: [] for k in fields} for image in images}
        crowd = 0
        for annotation in annotations:
            if annotation.get("iscrowd", 0):
                crowd += 1
                continue
            if int(annotation["category_id"]) not in index:
                raise DataError(
                    f"{path}: annotation {annotation.get('id')} has category_id {annotation['category_id']}, which is not in "
                    f"its 'categories' {[cid for cid, _ in found]}; add the category or fix the annotation."
                )
            objects = per_image.get(int(annotation["image_id"]))
            if objects is None:
                raise DataError(f"{path}: annotation {annotation.get('id')} refers to image_id {annotation['image_id']}, which "
                                "is not in 'images'.")
            if "bbox" in annotation:
                objects["bbox"].append([float(v) for v in annotation["bbox"]])
            elif with_segmentation:  # (instance sets take their boxes from the masks)
                objects["bbox"].append([0.0, 0.0, 0.0, 0.0])
            else:
                raise DataError(f"{path}: annotation {annotation.get('id')} has no 'bbox'; a detection set needs one per "
                                "annotation, COCO [x, y, width, height] in pixels.")
            objects["category"].append(index[int(annotation["category_id"])])
            if with_segmentation:
                objects["segmentation"].append(json.dumps(annotation.get("segmentation")))
        if crowd:
            logger.info("%s: %d crowd annotation(s) (iscrowd=1) left out of training targets", path, crowd)
        if not images:
            raise DataError(f"{path} lists no images.")
        folder = _image_folder(root, stem, images[0]["file_name"])
        names = [c[1] for c in found]
        files = [path_inside(os.path.join(folder, str(image["file_name"])), root, path,
                             f"image {image.get('id')} (file_name {image['file_name']!r})") for image in images]
        splits[_split_name(stem)] = datasets.Dataset.from_dict(
            {"image": files,
             "objects": [per_image[int(image["id"])] for image in images]},
            features=(features or detection_features)(names),
        )
    return datasets.DatasetDict(splits), {i: name for i, (_, name) in enumerate(categories)}


def _object_fields(features) -> list[str]:
    """The field names of the objects column of `features` (a Sequence of a dict, or a dict of lists)."""
    objects = features["objects"]
    objects = getattr(objects, "feature", objects)
    return list(objects) if isinstance(objects, dict) else []


def load_detection_splits(dataset: str, dataset_config: str | None = None, max_train: int | None = None,
                          max_validation: int | None = None, streaming: bool = False):
    """(splits, id2label or None): the built-in set (BUILTIN; only the first `max_train` / `max_validation`
    images are made), a COCO-JSON folder, a saved DatasetDict folder, or anything `datasets.load_dataset`
    takes. `streaming`: {split: IterableDataset} read as it is used (the built-in set and COCO folders cut
    into shards, `training.streaming.to_stream`)."""
    from ..training.data import load_splits
    from ..training.streaming import stream_splits

    if dataset == BUILTIN:
        sizes = {k: min(v, limit or v) for (k, v), limit in zip(BUILTIN_SIZES.items(), (max_train, max_validation))}
        splits, id2label = pasted_objects_dataset(**sizes)
    elif os.path.exists(dataset) and not os.path.isdir(dataset):
        raise DataError(f"--dataset {dataset!r} is a file; give a COCO folder (annotations/*.json + images), a saved "
                        "DatasetDict folder or a dataset name.")
    elif is_coco_folder(dataset):
        splits, id2label = coco_folder_dataset(dataset)
    else:
        return load_splits(dataset=dataset, dataset_config=dataset_config, streaming=streaming), None
    return (stream_splits(splits) if streaming else splits), id2label


# --------------------------------------------------------------------------------------------------
# Checking boxes
# --------------------------------------------------------------------------------------------------

BBOX_FORMATS = ("xywh", "xyxy", "cxcywh")
SLACK = 1.0  # pixels a box may reach past the image (rounding in annotation tools) before it counts as clipped


def to_xyxy(boxes: np.ndarray, bbox_format: str = "xywh") -> np.ndarray:
    """(N, 4) boxes in `bbox_format` (COCO's xywh: x_min, y_min, width, height) -> (N, 4) corners."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    a, b, c, d = boxes.T
    if bbox_format == "xywh":
        return np.stack([a, b, a + c, b + d], axis=1)
    if bbox_format == "xyxy":
        return boxes.copy()
    if bbox_format == "cxcywh":
        return np.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], axis=1)
    raise ValueError(f"bbox format {bbox_format!r} is not one of {BBOX_FORMATS}.")


@dataclass
class CleanBoxes:
    """Boxes of one image after `clean_boxes`: the kept ones as corners clipped to the image, with masks of
    what happened to each input box."""

    xyxy: np.ndarray  # (K, 4) float32, kept boxes
    keep: np.ndarray  # (N,) bool
    degenerate: np.ndarray  # (N,) zero or negative width or height: left out
    outside: np.ndarray  # (N,) no part inside the image: left out
    clipped: np.ndarray  # (N,) reached more than SLACK pixels past the image: clipped to it


def clean_boxes(boxes, width: int, height: int, bbox_format: str = "xywh") -> CleanBoxes:
    """Boxes of an image of `width` x `height` pixels, clipped to it; degenerate boxes (zero or negative
    width or height) and boxes wholly outside are left out (counted by the caller).

    Example:
        >>> from swin_hf.detection.data import clean_boxes
        >>> out = clean_boxes([[10, 10, 20, 20], [90, 5, 30, 10], [5, 5, 0, 8], [200, 0, 5, 5]], 100, 50)
        >>> out.xyxy.tolist(), out.clipped.tolist(), out.degenerate.tolist(), out.outside.tolist()
        ([[10.0, 10.0, 30.0, 30.0], [90.0, 5.0, 100.0, 15.0]], [False, True, False, False], [False, False, True, False], [False, False, False, True])
    """
    xyxy = to_xyxy(boxes, bbox_format)
    degenerate = ~((xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1]))  # NaN counts as degenerate
    inside = np.stack([xyxy[:, 0].clip(0, width), xyxy[:, 1].clip(0, height), xyxy[:, 2].clip(0, width),
                       xyxy[:, 3].clip(0, height)], axis=1)
    outside = ~degenerate & ~((inside[:, 2] > inside[:, 0]) & (inside[:, 3] > inside[:, 1]))
    keep = ~degenerate & ~outside
    clipped = keep & (np.abs(inside - xyxy).max(axis=1) > SLACK)
    return CleanBoxes(inside[keep].astype(np.float32), keep, degenerate, outside, clipped)


@dataclass
class BoxStats:
    """What checking a split found; every box left out or changed is counted here and logged."""

    images: int = 0
    boxes: int = 0
    clipped: int = 0
    degenerate: int = 0
    outside: int = 0
    empty_images: int = 0
    unreadable: int = 0

    def describe(self, split: str) -> str:
        parts = [f"{split}: {self.images} images, {self.boxes} boxes"]
        if self.clipped:
            parts.append(f"{self.clipped} reaching more than {SLACK:g} px past the image (clipped to it)")
        if self.degenerate:
            parts.append(f"{self.degenerate} with zero or negative width or height (left out)")
        if self.outside:
            parts.append(f"{self.outside} wholly outside the image (left out)")
        if self.empty_images:
            parts.append(f"{self.empty_images} images without objects (kept: they teach the model to find nothing)")
        if self.unreadable:
            parts.append(f"{self.unreadable} images whose size could not be read (checked when loaded)")
        return "; ".join(parts)


def stored_image_size(value) -> tuple[int, int] | None:
    """(width, height) of a stored image as it will be decoded (EXIF rotations swap them), reading the
    header only; None when the file cannot be opened."""
    import io

    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(value["path"])
        else:
            return None
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
        return width, height
    except (OSError, ValueError, SyntaxError):
        return None


def _check_format(split_name: str, corners: np.ndarray, sizes: np.ndarray, bbox_format: str) -> None:
    """Refuse boxes that do not look like `bbox_format` in pixels: xyxy given as xywh (boxes reaching past
    the image that would fit as corners), or coordinates normalised to 0-1."""
    if not len(corners):
        return
    width, height = sizes[:, 0], sizes[:, 1]
    if np.nanmax(np.abs(corners)) <= 1.5 and np.median(np.minimum(width, height)) > 16:
        raise DataError(
            f"Split {split_name!r}: every box coordinate is at most 1.5 on images of about "
            f"{int(np.median(width))}x{int(np.median(height))} pixels; the boxes look normalised to the image size. "
            "The convention is pixels: multiply x and width by the image width, y and height by its height."
        )
    if bbox_format != "xywh":
        return
    raw_w, raw_h = corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]  # the stored 3rd/4th values
    past = (corners[:, 2] > width + SLACK) | (corners[:, 3] > height + SLACK)
    fits_as_corners = (raw_w <= width + SLACK) & (raw_h <= height + SLACK) & (raw_w > corners[:, 0]) & (raw_h > corners[:, 1])
    if past.sum() >= max(1, 0.05 * len(corners)) and (past & fits_as_corners).sum() >= 0.8 * past.sum():
        raise DataError(
            f"Split {split_name!r}: {int(past.sum())} of {len(corners)} boxes reach past their image read as COCO "
            f"[x, y, width, height] but fit inside it read as [x_min, y_min, x_max, y_max]: the bbox values look like "
            "corners (xyxy). Convert them to [x, y, width, height], or pass --bbox-format xyxy."
        )


def check_split(split, split_name: str, num_labels: int, image_column: str, objects_column: str,
                bbox_format: str) -> BoxStats:
    """Check every row of a split before training: the objects column and its bbox/category fields,
    categories inside the label list, the bbox format; and count the boxes that will be clipped or left
    out and the images without objects. Raises DataError naming the field and the fix."""
    import datasets

    columns = split.column_names
    if objects_column not in columns:
        raise DataError(
            f"Split {split_name!r} has columns {columns} but no {objects_column!r} column. Detection sets need, per image, "
            "objects with 'bbox' (COCO [x, y, width, height] in pixels) and 'category' (class index), as the Hub's "
            "detection sets have; name the column with --objects-column."
        )
    if image_column not in columns:
        raise DataError(f"Split {split_name!r} has columns {columns} but no image column {image_column!r}; "
                        "name it with --image-column.")
    objects = split[objects_column]
    if "width" in columns and "height" in columns:
        sizes = list(zip(split["width"], split["height"]))
    else:
        sizes = [stored_image_size(v) for v in split.cast_column(image_column, datasets.Image(decode=False))[image_column]]
    stats = BoxStats(images=len(split))
    corners, corner_sizes = [], []
    for row, (entry, size) in enumerate(zip(objects, sizes)):
        if not isinstance(entry, dict) or "bbox" not in entry or "category" not in entry:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DataError(
                f"Split {split_name!r}, row {row}: {objects_column!r} holds {keys}, not 'bbox' and 'category'. Each "
                "image's objects need 'bbox' (a list of [x, y, width, height]) and 'category' (a list of class indices)."
            )
        boxes, categories = entry["bbox"] or [], entry["category"] or []
        if len(boxes) != len(categories):
            raise DataError(f"Split {split_name!r}, row {row}: {len(boxes)} boxes but {len(categories)} categories; "
                            "give one category per box.")
        if any(len(b) != 4 for b in boxes):
            raise DataError(f"Split {split_name!r}, row {row}: a bbox has {[len(b) for b in boxes if len(b) != 4][0]} "
                            "values; each needs 4 ([x, y, width, height] in pixels).")
        bad = [c for c in categories if not isinstance(c, (int, np.integer)) or not 0 <= c < num_labels]
        if bad:
            raise DataError(
                f"Split {split_name!r}, row {row}: category {bad[0]!r} is outside the {num_labels} classes (0..{num_labels - 1}). "
                "Fix the data, or give the full class list with --id2label (or --num-labels)."
            )
        stats.boxes += len(boxes)
        stats.empty_images += not boxes
        if size is None:
            stats.unreadable += 1
            continue
        if boxes:
            cleaned = clean_boxes(boxes, *size, bbox_format=bbox_format)
            stats.clipped += int(cleaned.clipped.sum())
            stats.degenerate += int(cleaned.degenerate.sum())
            stats.outside += int(cleaned.outside.sum())
            corners.append(to_xyxy(boxes, bbox_format))
            corner_sizes += [size] * len(boxes)
    if corners:
        _check_format(split_name, np.concatenate(corners), np.asarray(corner_sizes, dtype=np.float64), bbox_format)
    return stats


# --------------------------------------------------------------------------------------------------
# A checked set, ready to train on
# --------------------------------------------------------------------------------------------------


@dataclass
class DetectionData:
    train: object  # datasets.Dataset, images not decoded (decode_image does it, EXIF included)
    validation: object
    id2label: dict[int, str]
    image_column: str = "image"
    objects_column: str = "objects"
    bbox_format: str = "xywh"
    stats: dict[str, BoxStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def class_names_of(split, objects_column: str) -> list[str] | None:
    """The names of the `category` ClassLabel of the objects column, if it has one."""
    import datasets

    feature = split.features.get(objects_column)
    if not isinstance(feature, dict):  # a Sequence / List of dicts rather than a dict of lists
        feature = getattr(feature, "feature", None)
    category = feature.get("category") if isinstance(feature, dict) else None
    while category is not None and not isinstance(category, datasets.ClassLabel):  # List(ClassLabel) -> ClassLabel
        category = getattr(category, "feature", None)
    return list(category.names) if category is not None else None


def id2label_of(split, objects_column: str) -> dict[int, str]:
    """{index: name} from the `category` ClassLabel of a split's objects column; DataError when it has none."""
    names = class_names_of(split, objects_column) if objects_column in (split.column_names or []) else None
    if names is None:
        raise DataError(
            "The objects' 'category' has no class names (not a ClassLabel); give them with --id2label FILE.json "
            "({\"0\": \"cat\", ...}) or their number with --num-labels."
        )
    return dict(enumerate(names))


def prepare_detection(
    splits, id2label: dict[int, str] | None = None, image_column: str = "image", objects_column: str = "objects",
    bbox_format: str = "xywh", validation_fraction: float = 0.1, max_train_samples: int | None = None,
    max_eval_samples: int | None = None, seed: int = 0, train_split: str | None = None,
) -> DetectionData:
    """Choose the train/validation splits (training.data.choose_splits), find the class names (the given `id2label`, else the
    `category` ClassLabel), check every row (`check_split`) and log what will be clipped or left out."""
    import datasets

    if isinstance(splits, datasets.Dataset):
        splits = datasets.DatasetDict(train=splits)
    train_name, validation_name = choose_splits(splits, train_split)
    train = splits[train_name]
    validation = splits[validation_name] if validation_name else None
    notes = []
    if validation is None:
        try:
            parts = train.train_test_split(test_size=validation_fraction, seed=seed)
        except ValueError as error:
            raise DataError(f"The dataset has no validation split and holding out {validation_fraction:.0%} of its "
                            f"{len(train)} training images fails ({error}); give a validation split.") from error
        train, validation = parts["train"], parts["test"]
        notes.append(f"validation = {validation_fraction:.0%} of {train_name!r} (seed {seed})")
    if max_train_samples:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples:
        validation = validation.select(range(min(max_eval_samples, len(validation))))
    for name, split in (("train", train), ("validation", validation)):
        if len(split) == 0:
            raise DataError(f"The {name} split is empty; it needs at least one image.")
    id2label = id2label if id2label is not None else id2label_of(train, objects_column)
    stats = {}
    for name, split in (("train", train), ("validation", validation)):
        stats[name] = check_split(split, name, len(id2label), image_column, objects_column, bbox_format)
        logger.info("%s", stats[name].describe(name))
        notes.append(stats[name].describe(name))
    if stats["train"].boxes - stats["train"].degenerate - stats["train"].outside == 0:
        raise DataError("The training split has no usable box at all; a detector cannot learn from it.")
    train = train.cast_column(image_column, datasets.Image(decode=False))
    validation = validation.cast_column(image_column, datasets.Image(decode=False))
    return DetectionData(train, validation, id2label, image_column, objects_column, bbox_format, stats, notes)


STREAM_VALIDATION = 256  # validation images read from a stream unless --max-eval-samples says otherwise
STREAM_CHECKED = 64  # training rows checked (format, categories) before a streamed run starts


def prepare_detection_stream(
    splits, id2label: dict[int, str] | None = None, image_column: str = "image", objects_column: str = "objects",
    bbox_format: str = "xywh", max_train_samples: int | None = None, max_eval_samples: int | None = None,
    train_split: str | None = None,
) -> DetectionData:
    """--streaming: the training split stays a stream (images undecoded, `DetectionRows` makes its batches);
    validation is the first `max_eval_samples` (STREAM_VALIDATION) images of the validation split, or, for a
    set without one, of the training stream, which then skips them. Validation and the first STREAM_CHECKED
    training rows get the whole `check_split`; every later row is checked as it is read (`DetectionRows`)."""
    from ..training.streaming import bounded, undecoded

    train_name, validation_name = choose_splits(splits, train_split)
    train = splits[train_name]
    if train.features is None:  # (some formats say their columns only once read)
        train = train._resolve_features()
    held = max_eval_samples or STREAM_VALIDATION
    if validation_name:
        validation = bounded(splits[validation_name], held)
        notes = [f"streamed; validation = the first {len(validation)} images of {validation_name!r}"]
    else:
        validation = bounded(train, held)
        train = train.skip(len(validation))
        notes = [f"streamed; validation = the first {len(validation)} images of {train_name!r}, skipped by training"]
    if len(validation) == 0:
        raise DataError("The validation split is empty; it needs at least one image.")
    train = train.take(max_train_samples) if max_train_samples else train
    id2label = id2label if id2label is not None else id2label_of(validation, objects_column)
    head = bounded(train, STREAM_CHECKED)
    if len(head) == 0:
        raise DataError(f"The training stream {train_name!r} holds no image.")
    stats = {"train": check_split(head, f"{train_name} (its first {len(head)} rows)", len(id2label), image_column,
                                  objects_column, bbox_format),
             "validation": check_split(validation, "validation", len(id2label), image_column, objects_column, bbox_format)}
    notes.append(stats["validation"].describe("validation"))
    notes.append(f"training rows checked as they are read ({stats['train'].describe('the first ' + str(len(head)))})")
    for note in notes:
        logger.info("%s", note)
    import datasets

    train = undecoded(train.select_columns([image_column, objects_column]), [image_column])
    validation = validation.cast_column(image_column, datasets.Image(decode=False))
    return DetectionData(train, validation, id2label, image_column, objects_column, bbox_format, stats, notes)


# --------------------------------------------------------------------------------------------------
# Items, batches, augmentation
# --------------------------------------------------------------------------------------------------


class DetectionDataset(torch.utils.data.Dataset):
    """Items of a checked split: (uint8 pixels (3, S, S) resized without keeping the aspect ratio, or None
    for an unreadable image; kept boxes (K, 4) as corners in pixels of the S x S image; labels (K,);
    row index; original (height, width); file name). The resize is PIL's bilinear, as the saved image
    processor's, so that evaluation sees what `pipeline` sees."""

    def __init__(self, split, size: int, image_column: str = "image", objects_column: str = "objects",
                 bbox_format: str = "xywh", skipped: SkipCounter | None = None):
        self.split, self.size = split, size
        self.image_column, self.objects = image_column, split[objects_column]
        self.bbox_format = bbox_format
        self.skipped = skipped or SkipCounter()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        index = int(index)
        return detection_item(self.split[index][self.image_column], self.objects[index], index, self.size,
                              self.bbox_format, self.skipped)


def detection_item(value, entry: dict, index: int, size: int, bbox_format: str = "xywh", skipped: SkipCounter | None = None):
    """One item (see `DetectionDataset`) from a stored image and its objects {bbox, category}."""
    image = decode_or_skip(value, index, lambda image: image, skipped if skipped is not None else SkipCounter())
    if image is None:
        return None, None, None, index, None, file_name(value, index)
    width, height = image.size
    boxes = entry["bbox"] or []
    cleaned = clean_boxes(boxes, width, height, bbox_format) if boxes else None
    scale = np.array([size / width, size / height, size / width, size / height], dtype=np.float32)
    xyxy = torch.from_numpy(cleaned.xyxy * scale) if cleaned is not None else torch.zeros(0, 4)
    labels = torch.tensor([c for c, k in zip(entry["category"], cleaned.keep) if k] if cleaned is not None else [],
                          dtype=torch.long)
    pixels = torch.from_numpy(np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8).copy()).permute(2, 0, 1)
    return pixels, xyxy, labels, index, (height, width), file_name(value, index)


class DetectionRows:
    """Undecoded rows of a streamed split -> a batch (`collate`; runs in the stream loader's workers). Each
    row is checked as it is read: objects with 'bbox' and 'category' lists of one length, 4 values a box,
    categories inside the label list (DataError naming the row's file otherwise); boxes are cleaned as
    `DetectionDataset` cleans them."""

    def __init__(self, size: int, num_labels: int, image_column: str = "image", objects_column: str = "objects",
                 bbox_format: str = "xywh"):
        self.size, self.num_labels = size, num_labels
        self.image_column, self.objects_column, self.bbox_format = image_column, objects_column, bbox_format
        self.skipped = SkipCounter()

    def check(self, entry, name: str) -> None:
        if not isinstance(entry, dict) or "bbox" not in entry or "category" not in entry:
            raise DataError(f"Streamed image {name}: {self.objects_column!r} holds no 'bbox' and 'category' lists.")
        boxes, categories = entry["bbox"] or [], entry["category"] or []
        if len(boxes) != len(categories) or any(len(b) != 4 for b in boxes):
            raise DataError(f"Streamed image {name}: {len(boxes)} boxes and {len(categories)} categories; give one "
                            "category per box and 4 values ([x, y, width, height] in pixels) per box.")
        bad = [c for c in categories if not isinstance(c, (int, np.integer)) or not 0 <= c < self.num_labels]
        if bad:
            raise DataError(f"Streamed image {name}: category {bad[0]!r} is outside the {self.num_labels} classes; fix the "
                            "data, or give the full class list with --id2label (or --num-labels).")

    def __call__(self, rows: list[dict]) -> dict:
        items = []
        for i, row in enumerate(rows):
            value, entry = row[self.image_column], row[self.objects_column]
            self.check(entry, file_name(value, i))
            item = detection_item(value, entry, -1, self.size, self.bbox_format, self.skipped)
            items.append(item)
        return collate(items)


def collate(items) -> dict:
    """A batch: pixel_values uint8 (B, 3, S, S) (None if every image was unreadable), boxes and labels
    (lists, one tensor per image), index (B,), sizes (B, 2) original (height, width), skipped_files."""
    good = [item for item in items if item[0] is not None]
    batch = {"skipped_files": [item[5] for item in items if item[0] is None]}
    if not good:
        return {**batch, "pixel_values": None, "boxes": [], "labels": [], "index": None, "sizes": None}
    return {
        **batch,
        "pixel_values": torch.stack([item[0] for item in good]),
        "boxes": [item[1] for item in good],
        "labels": [item[2] for item in good],
        "index": torch.tensor([item[3] for item in good]),
        "sizes": torch.tensor([item[4] for item in good]),
    }


def to_detr_labels(boxes: list[torch.Tensor], labels: list[torch.Tensor], height: int, width: int) -> list[dict]:
    """transformers' DETR-family targets: per image ``class_labels`` (K,) and ``boxes`` (K, 4) as
    (centre x, centre y, width, height) divided by the image size."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    out = []
    for xyxy, classes in zip(boxes, labels):
        xyxy = xyxy.float().reshape(-1, 4)
        centre, extent = (xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]
        out.append({"class_labels": classes, "boxes": torch.cat([centre, extent], dim=1) / scale.to(xyxy.device)})
    return out


class BoxAugment(torch.nn.Module):
    """Joint image/box augmentation of a training batch with kornia: horizontal flip, random scale and
    translation (zoom in and out; what leaves the frame is cut, what it uncovers is black), then a
    brightness/contrast/saturation jitter of the image only. Boxes are clipped to the image; a box keeping
    less than `min_visible` of its area inside the frame is left out (the object is mostly gone).

    kornia maps box corners as pixel centres (index coordinates); boxes here are continuous pixel edges
    (a box [0, 0, 1, 1] covers pixel 0), so they are shifted by half a pixel on the way in and out, which
    makes a flipped box exact.

    Example:
        >>> import torch
        >>> from swin_hf.detection.data import BoxAugment
        >>> augment = BoxAugment(hflip=1.0, scale=(1.0, 1.0), translate=0.0, jitter=0.0)
        >>> images, boxes, labels = augment(torch.zeros(1, 3, 32, 32), [torch.tensor([[2.0, 4.0, 10.0, 12.0]])], [torch.tensor([1])])
        >>> boxes[0].tolist(), labels[0].tolist()
        ([[22.0, 4.0, 30.0, 12.0]], [1])
    """

    def __init__(self, hflip: float = 0.5, scale: tuple[float, float] = (0.6, 1.4), translate: float = 0.1,
                 jitter: float = 0.2, min_visible: float = 0.4):
        super().__init__()
        import kornia.augmentation as K

        self.geometric = K.AugmentationSequential(
            K.RandomHorizontalFlip(p=hflip),
            K.RandomAffine(degrees=0.0, translate=(translate, translate) if translate else None, scale=tuple(scale), p=1.0),
            data_keys=["input", "bbox_xyxy"],
        )
        self.jitter = K.ColorJitter(jitter, jitter, jitter, 0.0, p=0.8) if jitter else None
        self.min_visible = min_visible

    def forward(self, images: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor]):
        """images (B, 3, H, W) in 0-1; boxes per image (K, 4) corners in pixels -> the same, augmented."""
        height, width = images.shape[-2:]
        shifted = [b.float().reshape(-1, 4) - 0.5 for b in boxes]
        images, moved = self.geometric(images, shifted)
        if self.jitter is not None:
            images = self.jitter(images)
        out_boxes, out_labels = [], []
        for box, classes in zip(moved, labels):
            box = box.reshape(-1, 4) + 0.5
            area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
            inside = torch.stack([box[:, 0].clamp(0, width), box[:, 1].clamp(0, height), box[:, 2].clamp(0, width),
                                  box[:, 3].clamp(0, height)], dim=1)
            visible = (inside[:, 2] - inside[:, 0]).clamp(min=0) * (inside[:, 3] - inside[:, 1]).clamp(min=0)
            keep = (visible >= self.min_visible * area) & (inside[:, 2] - inside[:, 0] >= 1) & (inside[:, 3] - inside[:, 1] >= 1)
            out_boxes.append(inside[keep])
            out_labels.append(classes[keep.to(classes.device)])
        return images, out_boxes, out_labels



__all__ = [
    "ALPHA_THRESHOLD",
    "BBOX_FORMATS",
    "BUILTIN",
    "BUILTIN_SIZES",
    "CleanBoxes",
    "check_split",
    "class_names_of",
    "to_xyxy",
    "BoxAugment",
    "BoxStats",
    "DetectionData",
    "DetectionDataset",
    "DetectionRows",
    "STREAM_CHECKED",
    "STREAM_VALIDATION",
    "clean_boxes",
    "coco_folder_dataset",
    "collate",
    "detection_item",
    "id2label_of",
    "is_coco_folder",
    "load_detection_splits",
    "stored_image_size",
    "prepare_detection",
    "prepare_detection_stream",
    "to_detr_labels",
    "BUILTIN_CLASSES",
    "builtin_sources",
    "detection_features",
    "pasted_objects_dataset",
    "pasted_objects_scene",
]
