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
from PIL import Image, ImageOps

from ..image_processing_swin import (  # the one conversion to RGB, shared with the image processor
    load_pixels,
    to_rgb,
)
from .errors import RecipeError

logger = logging.getLogger(__name__)

DIGITS = "sklearn-digits"
ORIENTATION = 0x0112  # the EXIF tag


class DataError(RecipeError, ValueError):
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
    streaming: bool = False,
):
    """A DatasetDict from a `load_dataset` name/path, a saved DatasetDict directory, imagefolders,
    or (nothing given) the built-in digits. `streaming`: {split: IterableDataset} read as it is used
    (a saved DatasetDict and the built-in digits are cut into shards, see `streaming.to_stream`)."""
    loaded = _load(dataset, train_dir, validation_dir, dataset_config, streaming)
    if train_dir:
        folders, source = {"train": train_dir, "validation": validation_dir}, "--train-dir / --validation-dir"
    elif not _builtin(dataset):
        if not os.path.exists(dataset):
            folders = _hub_caches()
        else:
            folders = dataset if os.path.isdir(dataset) else os.path.dirname(os.path.abspath(dataset))
        source = f"--dataset {dataset!r}"
    else:
        folders = source = None  # the built-in data holds images, not paths
    if not streaming:
        if folders is not None:
            check_data_paths(loaded, folders, source)
        return loaded
    from .streaming import stream_splits

    streams = stream_splits(loaded)
    if folders is not None:
        streams = {name: _checked_stream(split, folders.get(name) if isinstance(folders, dict) else folders,
                                         f"{source}, split {name!r}") for name, split in streams.items()}
    return streams


def _checked_stream(split, folder, source: str):
    """A streamed split whose rows are checked as they are read: an image stored as a path without its
    bytes must lie inside `folder` (`path_inside`). Its Image columns are left undecoded (the recipes decode
    them in their loaders' workers)."""
    import datasets

    from .streaming import undecoded

    if split.features is None:  # (some formats say their columns only once read)
        split = split._resolve_features()
    columns = [name for name, feature in split.features.items() if isinstance(feature, datasets.Image)]
    if not columns or folder is None:
        return split
    split = undecoded(split, columns)
    folders_seen: dict = {}

    def check(row):
        for column in columns:
            value = row[column]
            if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
                path_inside(value["path"], folder, source, f"column {column!r}, a streamed row", folders_seen)
        return row

    return split.map(check, features=split.features)


def _builtin(dataset: str | None) -> bool:
    return dataset in (None, "", DIGITS)


def _hub_caches() -> list[str]:
    """Where the files of a dataset read from the Hub lie: datasets' cache (downloaded, extracted) and the Hub's."""
    import datasets
    from huggingface_hub import constants

    return [str(datasets.config.HF_DATASETS_CACHE), str(constants.HF_HUB_CACHE)]


def _resolved(path: str, folders_seen: dict | None) -> str:
    """os.path.realpath(path); with `folders_seen` (a cache of resolved folders), one realpath per folder and
    one lstat per file (a symlinked file is resolved in full), for the many files of a dataset."""
    if folders_seen is None:
        return os.path.realpath(path)
    folder, name = os.path.split(path)
    if folder not in folders_seen:
        folders_seen[folder] = os.path.realpath(folder or ".")
    if not name:
        return folders_seen[folder]
    full = os.path.join(folders_seen[folder], name)
    return os.path.realpath(full) if name in (".", "..") or os.path.islink(full) else full


def path_inside(path: str, folders, source: str, entry: str, folders_seen: dict | None = None) -> str:
    """`path` as it will be opened (relative to the working directory unless absolute), resolved; raises
    DataError unless it lies inside one of `folders` (a folder or a list). Symlinks are followed: one inside
    the folder that leads out of it is refused like a '..' or an absolute path. `source` names the data file
    or option and `entry` the row or entry that held the path (both appear in the message); `folders_seen`
    (a dict kept between calls) makes checking many files of the same folders fast."""
    folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    resolved = _resolved(path, folders_seen)
    for folder in folders:
        root = _resolved(os.path.join(folder, ""), folders_seen)  # (a folder's own path: resolved once)
        if resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep):
            return resolved
    raise DataError(
        f"{source}: {entry} names {path!r}, which is outside the dataset folder {str(folders[0])!r}; a path read from "
        "a data file must lead inside its dataset folder (no '..', absolute paths elsewhere or symlinks out of it). "
        "Fix the entry or move the file into the folder."
    )


def check_data_paths(splits, folders, source: str) -> None:
    """`path_inside` for every image of `splits` (a DatasetDict) that is stored as a path without its bytes;
    `folders` is the dataset folder (or a list of folders) of every split, or {split name: folder}."""
    import datasets
    import pyarrow.compute as pc

    for name, split in splits.items():
        where = folders.get(name) if isinstance(folders, dict) else folders
        folders_seen: dict = {}
        for column, feature in split.features.items():
            if not isinstance(feature, datasets.Image) or where is None:
                continue
            offset = 0
            for chunk in split.data.column(column).chunks:
                paths = pc.struct_field(chunk, "path")
                only_path = pc.and_(pc.is_null(pc.struct_field(chunk, "bytes")), pc.is_valid(paths))
                for row in np.flatnonzero(only_path.to_numpy(zero_copy_only=False)):
                    path_inside(paths[int(row)].as_py(), where, f"{source}, split {name!r}",
                                f"column {column!r}, row {offset + int(row)}", folders_seen)
                offset += len(chunk)


def _saved_or_builtin(dataset: str | None) -> bool:
    return _builtin(dataset) or (os.path.isdir(dataset) and (
        os.path.exists(os.path.join(dataset, "dataset_dict.json")) or os.path.exists(os.path.join(dataset, "dataset_info.json"))))


def _load(dataset, train_dir, validation_dir, dataset_config, streaming: bool):
    """What `load_splits` reads (`streaming` applies to what load_dataset reads: folders of files, the Hub)."""
    import datasets

    if train_dir or validation_dir:
        if not train_dir:
            raise DataError("--validation-dir was given without --train-dir; give the training folder too.")
        check_image_folder(train_dir, "--train-dir", min_classes=2)
        if validation_dir:
            check_image_folder(validation_dir, "--validation-dir", min_classes=1)
        files = {"train": os.path.join(train_dir, "**")}
        if validation_dir:
            files["validation"] = os.path.join(validation_dir, "**")
        return datasets.load_dataset("imagefolder", data_files=files, streaming=streaming)
    if _builtin(dataset):
        return digits_dataset_dict()
    if _saved_or_builtin(dataset):
        loaded = datasets.load_from_disk(dataset)
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict(train=loaded)
        return loaded
    check_dataset_source(dataset)
    try:
        return datasets.load_dataset(dataset, dataset_config, streaming=streaming)
    except ConnectionError as error:
        raise DataError(
            f"--dataset {dataset!r} is not a local folder or file, and the Hugging Face Hub could not be reached to "
            f"fetch it ({' '.join(str(error).split())[:200]}). Give an existing local folder, or connect and retry."
        ) from error


def check_dataset_source(dataset: str) -> None:
    """Raises DataError when --dataset names a local path (absolute, starting with . or ~, or not shaped like
    a Hub id) that does not exist, so that it is not sent to the Hub as a dataset name."""
    from ..model_source import HUB_ID

    if os.path.exists(os.path.expanduser(dataset)):
        return
    if os.path.isabs(dataset) or dataset.startswith((".", "~")) or not HUB_ID.fullmatch(dataset):
        raise DataError(
            f"--dataset {dataset!r}: no such folder or file. Give an existing folder (a saved DatasetDict, "
            "parquet/arrow/image files) or a Hub dataset id (org/name)."
        )


def check_image_folder(path: str, option: str, min_classes: int) -> dict[str, int]:
    """The images per class of an imagefolder (one sub-folder per class, named after it), checked before
    `datasets` reads it: the folder exists, holds images, every image sits in a class sub-folder, and there
    are at least `min_classes` classes. Raises DataError naming what is wrong."""
    layout = "one sub-folder of images per class, e.g. DIR/cat/1.jpg, DIR/dog/2.jpg"
    if not os.path.exists(path):
        raise DataError(f"{option} {path!r} does not exist; give a folder with {layout}.")
    if not os.path.isdir(path):
        raise DataError(f"{option} {path!r} is a file; give a folder with {layout}.")
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    per_class: dict[str, int] = {}
    loose = 0
    for root, folders, files in os.walk(path):
        folders[:] = sorted(f for f in folders if not f.startswith("."))  # hidden folders (.ipynb_checkpoints) are not classes
        images = sum(os.path.splitext(f)[1].lower() in extensions for f in files)
        depth = len(os.path.relpath(root, path).split(os.sep)) if not os.path.samefile(root, path) else 0
        if depth == 1:
            per_class.setdefault(os.path.basename(root), 0)
        if not images:
            continue
        if depth == 0:
            loose += images
        elif depth == 1:
            per_class[os.path.basename(root)] += images
        else:
            nested = os.path.relpath(root, path)
            raise DataError(
                f"{option} {path!r} holds {images} image(s) in the nested folder {nested!r}; the class of an image is "
                f"the folder directly under {path!r} and nested folders are not supported: move the images up into "
                f"{os.path.join(path, nested.split(os.sep)[0])!r} ({layout})."
            )
    empty = sorted(name for name, count in per_class.items() if not count)
    if empty:
        logger.warning("%s %r: class folder(s) %s hold no images and are left out of the classes.", option, path, empty[:10])
        per_class = {name: count for name, count in per_class.items() if count}
    if not loose and not per_class:
        raise DataError(f"{option} {path!r} holds no image files; give a folder with {layout}.")
    if loose:
        raise DataError(
            f"{option} {path!r} holds {loose} image(s) outside class sub-folders; the class of an image is the "
            f"name of its folder, so put them in {layout}."
        )
    if len(per_class) < min_classes:
        raise DataError(
            f"{option} {path!r} holds a single class ({next(iter(per_class))!r}); a classifier needs at least "
            f"{min_classes} classes: {layout}."
        )
    return per_class


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


EVALUATION_SPLITS = ("validation", "valid", "val", "test")


def choose_splits(splits, train_split: str | None = None) -> tuple[str, str | None]:
    """(training split, validation split or None) of a DatasetDict: `train_split` (--train-split) if given,
    else 'train', else the first split not named like an evaluation split (EVALUATION_SPLITS); a set with
    only evaluation splits is refused, since training on a 'test' split must be asked for. The validation
    split is the first of EVALUATION_SPLITS other than the training split."""
    names = list(splits)
    if not names:
        raise DataError("The dataset has no splits at all.")
    if train_split is not None:
        if train_split not in splits:
            raise DataError(f"--train-split {train_split!r} is not a split of the dataset (splits: {names}).")
        train = train_split
    elif "train" in splits:
        train = "train"
    else:
        others = [name for name in names if name.lower() not in EVALUATION_SPLITS]
        if not others:
            raise DataError(
                f"The dataset has no training split, only {names}; to train on one of them anyway, name it with "
                f"--train-split (e.g. --train-split {names[0]})."
            )
        train = others[0]
        logger.info("The dataset has no 'train' split: training on %r (splits: %s)", train, names)
    validation = next((name for name in EVALUATION_SPLITS if name in splits and name != train), None)
    return train, validation


def check_labels(labels: np.ndarray, num_classes: int, where: str, fix: str, class_names=None) -> None:
    """Raises DataError for labels outside 0..num_classes-1: a negative one (often a mark for 'unlabelled')
    is named as such, since class ids are the dataset's own label values; `fix` says what to change for a
    label past the last class."""
    labels = np.asarray(labels)
    negative = labels[labels < 0]
    if negative.size:
        raise DataError(
            f"{where}: {negative.size} example(s) have the negative label {int(negative[0])} (often a mark for "
            "'unlabelled'); class ids are the label values, 0 and up. Leave those rows out (e.g. "
            "dataset.filter(lambda row: row['label'] >= 0)) and run again."
        )
    past = labels[labels >= num_classes]
    if past.size:
        shown = f" {class_names[:10]}{'...' if len(class_names) > 10 else ''}" if class_names else ""
        raise DataError(f"{where}: label {int(past[0])} is outside the {num_classes} classes{shown} ({past.size} "
                        f"example(s)). {fix}")


def prepare(
    splits,
    image_column: str | None = None,
    label_column: str | None = None,
    train_val_split: float = 0.15,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    source: str = "",
    train_split: str | None = None,
) -> PreparedData:
    """Choose train/validation splits (`choose_splits`) and columns, and check them before any training starts.
    Plain integer labels are the class ids (a negative one is refused); strings become classes in sorted order."""
    import datasets

    if isinstance(splits, datasets.Dataset):
        splits = datasets.DatasetDict(train=splits)
    train_name, val_name = choose_splits(splits, train_split)
    train = splits[train_name]
    image_column, label_column = detect_columns(train.features, image_column, label_column)
    notes = []
    if val_name is None:
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
    values = None if isinstance(feature, datasets.ClassLabel) else sorted(set(train[label_column]) | set(validation[label_column]))
    if values is None:
        class_names = list(feature.names)
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        # plain integers are the class ids themselves: classes 0..max, named by their number
        check_labels(values, values[-1] + 1, f"Column {label_column!r}", "")
        if values[-1] >= 1000 and values[-1] + 1 > 10 * len(values):
            raise DataError(
                f"Column {label_column!r} holds {len(values)} distinct integer labels up to {values[-1]}; class ids are "
                f"the label values, so the model would have {values[-1] + 1} outputs. Cast the column to a ClassLabel "
                "(or to strings) to number the classes 0..K-1."
            )
        class_names = [str(i) for i in range(values[-1] + 1)]
    else:  # strings (or other values): the sorted distinct values make the class list
        class_names = [str(v) for v in values]
        mapping = {v: i for i, v in enumerate(values)}
        train = train.map(lambda ex: {label_column: mapping[ex[label_column]]}, input_columns=None)
        validation = validation.map(lambda ex: {label_column: mapping[ex[label_column]]})
    for name, split in (("train", train), ("validation", validation)):
        check_labels(split[label_column], len(class_names), f"Split {name!r}, column {label_column!r}",
                     "Fix the labels or the column's ClassLabel names.", class_names)
    if max_train_samples:
        train = train.select(range(min(max_train_samples, len(train))))
    if max_eval_samples:
        validation = validation.select(range(min(max_eval_samples, len(validation))))
    check_classes(np.asarray(train[label_column]), np.asarray(validation[label_column]), class_names, notes)
    # decode lazily ourselves, so one unreadable file cannot crash the whole batch
    train = train.cast_column(image_column, datasets.Image(decode=False))
    validation = validation.cast_column(image_column, datasets.Image(decode=False))
    return PreparedData(train, validation, image_column, label_column, class_names, source, notes)


def prepare_stream(
    splits,
    image_column: str | None = None,
    label_column: str | None = None,
    class_names: list[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int = 1000,
    source: str = "",
    train_split: str | None = None,
) -> PreparedData:
    """`prepare` for streamed splits ({name: IterableDataset}): columns from the features, classes from the
    label column's ClassLabel (or `class_names`), the training stream with undecoded images, and validation
    as the first `max_eval_samples` rows of its split (a small map-style Dataset, checked like `prepare`'s)."""
    import datasets

    from .streaming import bounded, undecoded

    train_name, val_name = choose_splits(splits, train_split)
    if val_name is None:
        raise DataError(f"--streaming needs a training and a validation split (found {sorted(splits)}); a stream "
                        "cannot be split in two. Add validation files (e.g. validation-*.parquet beside train-*.parquet).")
    train = splits[train_name]
    if train.features is None:  # (some formats say their columns only once read)
        train = train._resolve_features()
    image_column, label_column = detect_columns(train.features, image_column, label_column)
    feature = train.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        class_names = list(feature.names)
    elif not class_names:
        raise DataError(
            f"The label column {label_column!r} holds plain values ({feature}), and a stream cannot be read through "
            "to find its classes: pass --label-names NAME0,NAME1,... (label i is the i-th name)."
        )
    notes = [f"streamed; validation = the first {max_eval_samples} examples of {val_name!r}"]
    validation = bounded(splits[val_name].select_columns([image_column, label_column]), max_eval_samples)
    if len(validation) == 0:
        raise DataError(f"The {val_name} split is empty; it needs at least one example.")
    check_labels(validation[label_column], len(class_names), f"Split {val_name!r}, column {label_column!r}",
                 "Fix the labels or --label-names.", class_names)
    train = undecoded(train.select_columns([image_column, label_column]), [image_column])
    if max_train_samples:
        train = train.take(max_train_samples)
    return PreparedData(train, validation, image_column, label_column, list(class_names), source, notes)


def check_classes(train_labels: np.ndarray, validation_labels: np.ndarray, class_names: list[str], notes: list[str]) -> None:
    """A classifier needs two classes that it trains on, and every class it is evaluated on must be among
    them (a class seen only in validation would be an output never trained). Classes in neither split are
    noted (their outputs stay untrained)."""
    trained = set(np.unique(train_labels).tolist())
    if len(trained) < 2:
        only = class_names[next(iter(trained))] if trained else None
        raise DataError(
            f"The training split holds a single class ({only!r}); a classifier needs examples of at least two "
            "classes (accuracy on one class would be 100% whatever the model does)."
        )
    unseen = sorted(set(np.unique(validation_labels).tolist()) - trained)
    if unseen:
        names = [class_names[i] for i in unseen]
        raise DataError(
            f"Class(es) {names[:10]} have validation examples but no training examples (after --max-train-samples, "
            "if given); the model would never be trained on them. Add training examples of them or remove them "
            "from validation."
        )
    absent = [class_names[i] for i in range(len(class_names)) if i not in trained]
    if absent:
        logger.warning("Class(es) %s have no training or validation examples; their outputs stay untrained.", absent[:10])
        notes.append(f"class(es) {absent[:10]} had no examples")


# --------------------------------------------------------------------------------------------------
# Decoding: any PIL mode -> RGB (image_processing_swin.to_rgb); unreadable images skipped and counted
# --------------------------------------------------------------------------------------------------


def decode_image(value) -> Image.Image:
    """A PIL RGB image, upright (EXIF orientation applied), from what `datasets.Image(decode=False)` stores
    ({'bytes', 'path'}) or a PIL image.

    Raises OSError / ValueError for unreadable or truncated files (never returns a half image), and for
    images larger than PIL's decompression-bomb limit."""
    try:
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
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"{error} (PIL.Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS}; raise it if you trust the file, or "
            "shrink the image)"
        ) from error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # forces full decoding: truncated files raise here, named
        load_pixels(image, value.get("path") if isinstance(value, dict) else None)
        # as `datasets` and pipeline() do: a photo stored rotated (EXIF orientation) is turned upright
        if image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
    return to_rgb(image)


class SkipCounter:
    """Counts the distinct images skipped as unreadable and warns once per image (per process): a file
    skipped in every epoch counts once."""

    def __init__(self):
        self.files: set[str] = set()

    @property
    def count(self) -> int:
        return len(self.files)

    def skip(self, where: str, error: Exception) -> None:
        if where in self.files:
            return
        self.files.add(where)
        logger.warning("Skipping unreadable image %s (%s: %s) - %d skipped so far", where, type(error).__name__, error, self.count)


def file_name(value, index: int) -> str:
    """How an image is named in messages: its path, or its row number."""
    return str(value["path"]) if isinstance(value, dict) and value.get("path") else f"#{index}"


def decode_or_skip(value, index: int, transform, skipped: SkipCounter):
    """transform(decode_image(value)), or None (counted in `skipped`) for an unreadable image."""
    try:
        return transform(decode_image(value))
    except (OSError, ValueError, SyntaxError) as error:
        skipped.skip(file_name(value, index), error)
        return None


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Wraps a prepared split; items are (pixel tensor or None if unreadable, label, index, file name).

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
        pixels = decode_or_skip(value, int(index), self.transform, self.skipped)
        return pixels, self.labels[int(index)], int(index), file_name(value, int(index))


class ClassificationRows:
    """Undecoded rows of a streamed split -> a `collate_skipping` batch: each image decoded through
    `transform` (unreadable ones left out and named), labels checked against the class count. Runs in the
    stream loader's workers (see streaming.StreamLoader)."""

    def __init__(self, image_column: str, label_column: str, transform, num_classes: int):
        self.image_column, self.label_column, self.transform, self.num_classes = image_column, label_column, transform, num_classes
        self.skipped = SkipCounter()

    def __call__(self, rows: list[dict]):
        items = []
        for i, row in enumerate(rows):
            label, value = row[self.label_column], row[self.image_column]
            check_labels([int(label)], self.num_classes, f"Training example {file_name(value, i)}",
                         "Fix the labels or --label-names.")
            items.append((decode_or_skip(value, i, self.transform, self.skipped), int(label), -1, file_name(value, i)))
        return collate_skipping(items)


def collate_skipping(items):
    """Stack a batch, leaving out unreadable images. Returns dict(pixel_values, labels, index, skipped,
    skipped_files): `skipped_files` names the images left out, so that a process that reads batches made
    by DataLoader workers still knows which files were skipped."""
    good = [item for item in items if item[0] is not None]
    skipped_files = [item[3] if len(item) > 3 else f"#{item[2]}" for item in items if item[0] is None]
    if not good:
        return {"pixel_values": None, "labels": None, "index": None, "skipped": len(skipped_files),
                "skipped_files": skipped_files}
    pixels = torch.stack([item[0] for item in good])
    if pixels.is_floating_point() and not torch.isfinite(pixels).all():
        bad = [item[3] if len(item) > 3 else f"#{item[2]}" for item in good if not torch.isfinite(item[0]).all()]
        raise DataError(f"Image(s) {bad[:5]} give NaN or infinite pixel values after preprocessing; check the transform "
                        "and the image processor's mean/std (a std of 0 divides by zero).")
    return {
        "pixel_values": pixels,
        "labels": torch.tensor([item[1] for item in good], dtype=torch.long),
        "index": torch.tensor([item[2] for item in good], dtype=torch.long),
        "skipped": len(skipped_files),
        "skipped_files": skipped_files,
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
    "EVALUATION_SPLITS",
    "ClassificationRows",
    "DataError",
    "ImageClassificationDataset",
    "PreparedData",
    "ResumableSampler",
    "SkipCounter",
    "check_classes",
    "check_data_paths",
    "check_dataset_source",
    "check_image_folder",
    "check_labels",
    "choose_splits",
    "collate_skipping",
    "decode_image",
    "decode_or_skip",
    "detect_columns",
    "digits_dataset_dict",
    "file_name",
    "load_splits",
    "path_inside",
    "prepare",
    "prepare_stream",
    "to_rgb",
]
