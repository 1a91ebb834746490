"""Image-classification data for the recipes: loading, column detection, validation, decoding.

Everything here works on `datasets.Dataset` / `DatasetDict` objects so any source `datasets` reads
(a Hub id, a saved `DatasetDict` directory, an imagefolder) takes the same path. The built-in default
is scikit-learn's handwritten digits (shipped inside scikit-learn, so no network is needed).
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

DIGITS = "sklearn-digits"


class DataError(ValueError):
    """The dataset cannot be trained on as given; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def digits_dataset_dict(seed: int = 0, validation_fraction: float = 0.2):
    """scikit-learn's 1,797 8x8 handwritten digits as a DatasetDict(train, validation).

    Columns: `image` (an `Image` feature, 8-bit grayscale) and `label` (a `ClassLabel` "0".."9").
    The validation split is stratified and seeded.
    """
    import datasets
    from sklearn.datasets import load_digits

    digits = load_digits()
    # values are 0..16: stretch them to 0..255 grayscale pixels
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    full = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()},
        features=features,
    )
    split = full.train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict(train=split["train"], validation=split["test"])


def load_splits(
    dataset: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    dataset_config: str | None = None,
):
    """A DatasetDict from a `load_dataset` name/path, a saved DatasetDict directory, imagefolders,
    or (nothing given) the built-in digits."""
    import datasets

    if train_dir or validation_dir:
        if not train_dir:
            raise DataError("--validation-dir was given without --train-dir; give the training folder too.")
        files = {"train": os.path.join(train_dir, "**")}
        if validation_dir:
            files["validation"] = os.path.join(validation_dir, "**")
        return datasets.load_dataset("imagefolder", data_files=files)
    if dataset in (None, "", DIGITS):
        return digits_dataset_dict()
    if os.path.isdir(dataset) and (
        os.path.exists(os.path.join(dataset, "dataset_dict.json"))
        or os.path.exists(os.path.join(dataset, "dataset_info.json"))
    ):
        loaded = datasets.load_from_disk(dataset)
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict(train=loaded)
        return loaded
    return datasets.load_dataset(dataset, dataset_config)


# --------------------------------------------------------------------------------------------------
# Columns, splits, validation
# --------------------------------------------------------------------------------------------------


def detect_columns(features, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """(image column, label column): the given names, checked, or the first `Image` / `ClassLabel`."""
    import datasets

    names = list(features)
    if image_column is None:
        found = [n for n, f in features.items() if isinstance(f, datasets.Image)]
        if not found:
            raise DataError(
                f"No image column found (no column has the `Image` feature; columns: {names}). "
                "Pass --image-column NAME."
            )
        image_column = found[0]
    elif image_column not in features:
        raise DataError(f"Image column {image_column!r} is not in the dataset (columns: {names}).")
    if label_column is None:
        found = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
        if not found:
            found = [n for n in ("label", "labels", "fine_label") if n in features]
        if not found:
            raise DataError(
                f"No label column found (no column has the `ClassLabel` feature; columns: {names}). "
                "Pass --label-column NAME."
            )
        label_column = found[0]
    elif label_column not in features:
        raise DataError(f"Label column {label_column!r} is not in the dataset (columns: {names}).")
    return image_column, label_column


@dataclass
class PreparedData:
    train: object  # datasets.Dataset
    validation: object
    image_column: str
    label_column: str
    class_names: list[str]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))


def _pick(splits, candidates):
    for name in candidates:
        if name in splits:
            return name
    return None


def prepare(
    splits,
    image_column: str | None = None,
    label_column: str | None = None,
    train_val_split: float = 0.15,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    source: str = "",
) -> PreparedData:
    """Choose train/validation splits and columns, and check them before any training starts."""
    import datasets

    if isinstance(splits, datasets.Dataset):
        splits = datasets.DatasetDict(train=splits)
    train_name = _pick(splits, ("train",)) or (list(splits)[0] if splits else None)
    if train_name is None:
        raise DataError("The dataset has no splits at all.")
    train = splits[train_name]
    image_column, label_column = detect_columns(train.features, image_column, label_column)
    notes = []
    val_name = _pick(splits, ("validation", "valid", "val", "test"))
    if val_name is None or val_name == train_name:
        if not 0.0 < train_val_split < 1.0:
            raise DataError(
                f"The dataset has no validation split and --train-val-split={train_val_split} is not in (0, 1)."
            )
        stratify = label_column if isinstance(train.features[label_column], datasets.ClassLabel) else None
        try:
            parts = train.train_test_split(test_size=train_val_split, seed=seed, stratify_by_column=stratify)
        except ValueError:  # too few examples of a class to stratify
            parts = train.train_test_split(test_size=train_val_split, seed=seed)
        train, validation = parts["train"], parts["test"]
        notes.append(f"validation = {train_val_split:.0%} of {train_name!r} (stratified, seed {seed})")
    else:
        validation = splits[val_name]
        missing = [c for c in (image_column, label_column) if c not in validation.features]
        if missing:
            raise DataError(f"Split {val_name!r} lacks column(s) {missing} that split {train_name!r} has.")
    for name, split in (("train", train), ("validation", validation)):
        if len(split) == 0:
            raise DataError(f"The {name} split is empty; it needs at least one example.")

    feature = train.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        class_names = list(feature.names)
    else:  # plain ints or strings: the sorted distinct values make the class list
        values = sorted(set(train[label_column]) | set(validation[label_column]))
        class_names = [str(v) for v in values]
        mapping = {v: i for i, v in enumerate(values)}
        train = train.map(lambda ex: {label_column: mapping[ex[label_column]]}, input_columns=None)
        validation = validation.map(lambda ex: {label_column: mapping[ex[label_column]]})
    for name, split in (("train", train), ("validation", validation)):
        labels = np.asarray(split[label_column])
        bad = labels[(labels < 0) | (labels >= len(class_names))]
        if bad.size:
            raise DataError(
                f"Split {name!r}, column {label_column!r}: label {int(bad[0])} is outside the "
                f"{len(class_names)} classes {class_names[:10]}{'...' if len(class_names) > 10 else ''} "
                f"({bad.size} example(s)). Fix the labels or the column's ClassLabel names."
            )
    if max_train_samples:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples:
        validation = validation.select(range(min(max_eval_samples, len(validation))))
    # decode lazily ourselves, so one unreadable file cannot crash the whole batch
    train = train.cast_column(image_column, datasets.Image(decode=False))
    validation = validation.cast_column(image_column, datasets.Image(decode=False))
    return PreparedData(train, validation, image_column, label_column, class_names, source, notes)


# --------------------------------------------------------------------------------------------------
# Decoding: any PIL mode -> RGB; unreadable images skipped and counted
# --------------------------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any PIL mode; transparency (RGBA, LA, P with alpha) is composited on white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1.0)
        image = Image.fromarray(np.uint8((array - array.min()) * 255.0 / span))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = max(array.max() - array.min(), 1e-12)
        image = Image.fromarray(np.uint8((array - array.min()) * 255.0 / span))
    return image.convert("RGB")


def decode_image(value) -> Image.Image:
    """A PIL RGB image from what `datasets.Image(decode=False)` stores ({'bytes', 'path'}) or a PIL image.

    Raises OSError / ValueError for unreadable or truncated files (never returns a half image)."""
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("image entry has neither bytes nor path")
    else:
        raise ValueError(f"unsupported image value of type {type(value).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image.load()  # forces full decoding: truncated files raise here
    return to_rgb(image)


class SkipCounter:
    """Counts images skipped as unreadable and warns once per image (per process)."""

    def __init__(self):
        self.count = 0

    def skip(self, where: str, error: Exception) -> None:
        self.count += 1
        logger.warning("Skipping unreadable image %s (%s: %s) - %d skipped so far", where, type(error).__name__, error, self.count)


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Wraps a prepared split; items are (pixel tensor or None if unreadable, label, index).

    `transform` turns a PIL RGB image into a tensor (C, H, W).
    """

    def __init__(self, split, image_column: str, label_column: str, transform, skipped: SkipCounter | None = None):
        self.split = split
        self.image_column = image_column
        self.labels = list(split[label_column])
        self.transform = transform
        self.skipped = skipped or SkipCounter()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        value = self.split[int(index)][self.image_column]
        try:
            pixels = self.transform(decode_image(value))
        except (OSError, ValueError, SyntaxError) as error:
            where = value.get("path") if isinstance(value, dict) and value.get("path") else f"#{index}"
            self.skipped.skip(str(where), error)
            pixels = None
        return pixels, self.labels[int(index)], int(index)


def collate_skipping(items):
    """Stack a batch, leaving out unreadable images. Returns dict(pixel_values, labels, index, skipped)."""
    good = [item for item in items if item[0] is not None]
    skipped = len(items) - len(good)
    if not good:
        return {"pixel_values": None, "labels": None, "index": None, "skipped": skipped}
    return {
        "pixel_values": torch.stack([item[0] for item in good]),
        "labels": torch.tensor([item[1] for item in good], dtype=torch.long),
        "index": torch.tensor([item[2] for item in good], dtype=torch.long),
        "skipped": skipped,
    }


class ResumableSampler(torch.utils.data.Sampler):
    """Distributed, seeded shuffling whose position can be restored: epoch + number of batches done.

    Every rank draws the same permutation of the whole split (seed + epoch), pads it to a multiple of
    the world size and takes every world_size-th index from its rank, as DistributedSampler does.
    `start_batch` skips the batches already consumed this epoch (resuming).
    """

    def __init__(self, length: int, batch_size: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        self.length, self.batch_size, self.shuffle, self.seed = length, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start_batch = 0
        self.per_rank = math.ceil(length / world_size)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        padded = order + order[: self.per_rank * self.world_size - self.length]
        mine = padded[self.rank :: self.world_size]
        if self.drop_last:
            mine = mine[: self.batches_per_epoch() * self.batch_size]
        return mine[self.start_batch * self.batch_size :]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


__all__ = [
    "DIGITS",
    "DataError",
    "ImageClassificationDataset",
    "PreparedData",
    "ResumableSampler",
    "SkipCounter",
    "collate_skipping",
    "decode_image",
    "detect_columns",
    "digits_dataset_dict",
    "load_splits",
    "prepare",
    "to_rgb",
]
