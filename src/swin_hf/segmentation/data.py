"""Data for semantic segmentation: a built-in offline dataset, joint image/mask transforms, collation.

The built-in set ("texture collage") needs no network: every image is made of real photographs that
ship inside PyPI packages the recipes already depend on - scikit-learn's two sample photos (china.jpg,
a temple among trees; flower.jpg) and matplotlib's grace_hopper.jpg portrait. A random crop of one photo
forms the background and 1-3 random shapes (ellipses, rectangles, polygons) are filled with crops of the
others; the label of a pixel is the photo it came from. The labels are therefore exact, the pixels
have natural-image statistics (colour, texture, edges at many scales) and region borders are arbitrary
shapes, so a model has to use local texture and context, not a colour threshold. Real scene datasets
(ADE20K-style `image` + `annotation` columns) load through `datasets` in the recipe instead.

Why not scikit-image's sample images with masks: scikit-image is not a dependency of swin_hf (nor
installed here), and its few images with masks are single-object greyscale cases.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..image_processing_swin import to_rgb_array

logger = logging.getLogger(__name__)

TEXTURE_CLASSES = ("temple", "flower", "portrait")
IGNORE_INDEX = 255


def texture_sources() -> list[Image.Image]:
    """The three photographs of the built-in set, in TEXTURE_CLASSES order (RGB PIL images)."""
    try:
        import matplotlib
        from sklearn.datasets import load_sample_images
    except ImportError as error:  # pragma: no cover - both are in the `recipes` extra
        raise ImportError(
            "The built-in texture-collage set needs scikit-learn and matplotlib (their sample photos): "
            "pip install 'swin_hf[recipes]'."
        ) from error
    sample = load_sample_images()
    by_name = {os.path.basename(f): img for f, img in zip(sample.filenames, sample.images)}
    hopper = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    return [
        Image.fromarray(by_name["china.jpg"]),
        Image.fromarray(by_name["flower.jpg"]),
        Image.open(hopper).convert("RGB"),
    ]


def _random_crop(rng: np.random.Generator, source: Image.Image, size: int) -> Image.Image:
    """A square crop of random position and scale (30-90% of the short side), resized to size x size."""
    side = int(min(source.size) * rng.uniform(0.3, 0.9))
    left = int(rng.integers(0, source.width - side + 1))
    top = int(rng.integers(0, source.height - side + 1))
    crop = source.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def _random_shape(rng: np.random.Generator, size: int) -> Image.Image:
    """A binary ('L', 0/255) mask holding one ellipse, rectangle or polygon covering roughly 5-40% of the image."""
    shape = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(shape)
    cx, cy = rng.uniform(0.15, 0.85, size=2) * size
    rx, ry = rng.uniform(0.12, 0.35, size=2) * size
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    elif kind == 1:
        draw.rectangle((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    else:
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 8))))
        radii = rng.uniform(0.5, 1.0, size=angles.size)
        points = [(cx + rx * r * np.cos(a), cy + ry * r * np.sin(a)) for a, r in zip(angles, radii)]
        draw.polygon(points, fill=255)
    return shape


def texture_collage(
    rng: np.random.Generator, size: int, sources: list[Image.Image]
) -> tuple[Image.Image, Image.Image]:
    """One (RGB image, 'L' annotation) pair of the built-in set; annotation values are class indices."""
    background = int(rng.integers(len(sources)))
    image = _random_crop(rng, sources[background], size)
    annotation = Image.new("L", (size, size), background)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.choice([c for c in range(len(sources)) if c != background]))
        shape = _random_shape(rng, size)
        image.paste(_random_crop(rng, sources[cls], size), (0, 0), shape)
        annotation.paste(cls, (0, 0), shape)
    return image, annotation


def texture_collage_dataset(num_train: int = 320, num_validation: int = 64, size: int = 96, seed: int = 0):
    """The built-in offline segmentation set as a `datasets.DatasetDict` with `train` and `validation`
    splits, columns `image` and `annotation` (both `datasets.Image`), like ADE20K-style Hub sets.

    Returns (dataset_dict, id2label). Deterministic for a given seed.

    Example:
        >>> from swin_hf.segmentation.data import texture_collage_dataset
        >>> splits, id2label = texture_collage_dataset(num_train=4, num_validation=2, size=32)
        >>> splits["train"].column_names, len(splits["validation"]), id2label[1]
        (['image', 'annotation'], 2, 'flower')
    """
    import datasets

    sources = texture_sources()
    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})

    def split(n: int):
        pairs = [texture_collage(rng, size, sources) for _ in range(n)]
        return datasets.Dataset.from_dict(
            {"image": [p[0] for p in pairs], "annotation": [p[1] for p in pairs]}, features=features
        )

    splits = datasets.DatasetDict({"train": split(num_train), "validation": split(num_validation)})
    return splits, dict(enumerate(TEXTURE_CLASSES))


class JointTransform:
    """Image + annotation -> (pixel_values (3, S, S) float, labels (S, S) long), the same geometry for both.

    Training: random rescale (scale_range times S on the short side), random S x S crop (padding with
    IGNORE_INDEX labels where the image is smaller), horizontal flip, and a photometric jitter on the
    image only. Evaluation: resize to S x S (bilinear for the image, nearest for the labels).
    `reduce_labels` maps 0 ("other", as in ADE20K) to IGNORE_INDEX and shifts the rest down by one.

    Example:
        >>> import numpy as np
        >>> from PIL import Image
        >>> from swin_hf.segmentation.data import JointTransform
        >>> image = Image.new("RGB", (50, 40)); mask = Image.fromarray(np.ones((40, 50), dtype=np.uint8))
        >>> pixels, labels = JointTransform(32, train=True, seed=0)(image, mask)
        >>> tuple(pixels.shape), tuple(labels.shape), sorted(set(labels.unique().tolist()) - {255})
        ((3, 32, 32), (32, 32), [1])
    """

    def __init__(
        self,
        size: int,
        train: bool,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        scale_range: tuple[float, float] = (0.5, 2.0),
        reduce_labels: bool = False,
        seed: int | None = None,
    ):
        self.size = size
        self.train = train
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.scale_range = scale_range
        self.reduce_labels = reduce_labels
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def __call__(self, image: Image.Image, annotation: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        if image.size != annotation.size:
            raise ValueError(
                f"image is {image.size[0]}x{image.size[1]} but its annotation is "
                f"{annotation.size[0]}x{annotation.size[1]}; they must have the same size."
            )
        pixels = torch.from_numpy(to_rgb_array(image).astype(np.float32) / 255.0).permute(2, 0, 1)
        labels = torch.from_numpy(np.array(annotation, dtype=np.int64))
        if labels.ndim == 3:  # an RGB-encoded annotation: use its first channel
            labels = labels[..., 0]
        if self.reduce_labels:
            labels = torch.where(labels == 0, IGNORE_INDEX, labels - 1)
        S = self.size
        if not self.train:
            return self._normalise(_resize(pixels, (S, S))), _resize_labels(labels, (S, S))

        H, W = labels.shape
        scale = self._uniform(*self.scale_range) * S / min(H, W)
        h, w = max(1, round(H * scale)), max(1, round(W * scale))
        pixels, labels = _resize(pixels, (h, w)), _resize_labels(labels, (h, w))
        pad_h, pad_w = max(0, S - h), max(0, S - w)
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = int(torch.randint(0, labels.shape[0] - S + 1, (), generator=self.generator))
        left = int(torch.randint(0, labels.shape[1] - S + 1, (), generator=self.generator))
        pixels, labels = pixels[:, top : top + S, left : left + S], labels[top : top + S, left : left + S]
        if torch.rand((), generator=self.generator) < 0.5:
            pixels, labels = pixels.flip(-1), labels.flip(-1)
        brightness, contrast = self._uniform(0.8, 1.2), self._uniform(0.8, 1.2)
        mean = pixels.mean()
        pixels = ((pixels - mean) * contrast + mean * brightness).clamp(0, 1)
        return self._normalise(pixels), labels.contiguous()

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) float -> (3, h, w), bilinear (antialiased when shrinking)."""
    if tuple(pixels.shape[1:]) == tuple(size):
        return pixels
    return F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) long -> (h, w), nearest neighbour (labels are never blended)."""
    if tuple(labels.shape) == tuple(size):
        return labels
    return F.interpolate(labels[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


class SegmentationDataset(torch.utils.data.Dataset):
    """A `datasets` split with image and annotation columns, through a JointTransform. `with_index`: each
    example also holds its row number ("index"), which evaluation uses to count every row once."""

    def __init__(self, split, transform: JointTransform, image_column: str = "image", label_column: str = "annotation",
                 with_index: bool = False):
        missing = [c for c in (image_column, label_column) if c not in split.column_names]
        if missing:
            raise ValueError(
                f"The dataset has columns {split.column_names} but not {missing}. Segmentation sets need an image "
                "column and a label-map column; name them with --image-column / --label-column."
            )
        self.split, self.transform = split, transform
        self.image_column, self.label_column = image_column, label_column
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from ..training.data import DataError

        row = self.split[index]
        try:
            pixels, labels = self.transform(open_image(row[self.image_column]), open_image(row[self.label_column]))
        except ValueError as error:
            raise DataError(f"Row {index} of the dataset: {error}") from error
        item = {"pixel_values": pixels, "labels": labels}
        if self.with_index:
            item["index"] = torch.tensor(index)
        return item


def open_image(value) -> Image.Image:
    """A PIL image from what a `datasets.Image(decode=False)` column holds ({bytes, path}) or a PIL image,
    as stored (no mode conversion: label maps keep their class indices)."""
    import io

    if isinstance(value, Image.Image):
        return value
    image = Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"])
    image.load()
    return image


class SegmentationRows:
    """Undecoded rows of a streamed split (image and label map as {bytes, path}) -> a batch through the
    JointTransform, for swin_hf.training.streaming.StreamLoader (runs in its workers)."""

    def __init__(self, transform: JointTransform, image_column: str = "image", label_column: str = "annotation"):
        self.transform, self.image_column, self.label_column = transform, image_column, label_column

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from ..training.data import DataError

        items = []
        for i, row in enumerate(rows):
            try:
                pixels, labels = self.transform(open_image(row[self.image_column]), open_image(row[self.label_column]))
            except ValueError as error:
                raise DataError(f"A training example of the stream: {error}") from error
            items.append({"pixel_values": pixels, "labels": labels})
        return collate(items)


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


__all__ = [
    "IGNORE_INDEX",
    "TEXTURE_CLASSES",
    "JointTransform",
    "SegmentationDataset",
    "SegmentationRows",
    "collate",
    "open_image",
    "texture_collage",
    "texture_collage_dataset",
    "texture_sources",
]
