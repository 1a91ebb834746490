"""Video classification (recipes/finetune_video.py): a Video Swin classifier trained from scratch, fine-tuned, or
inflated from a 2D Swin image checkpoint, on any `datasets` splits, as a task on the shared loop
(swin_hf.training.loop).

Data convention: each row holds a `video` (a list of frames: images, (H, W[, C]) arrays, or one (T, H, W, C)
array; or the path of a video file, read with PyAV, an optional dependency) and a `label` (a ClassLabel);
--video-column / --label-column name other columns. A clip of --frames frames is sampled from each video
(centred, one every --frame-interval frames, as VideoSwinImageProcessor samples it at inference); a video with
fewer frames is refused. Every frame goes through the saved VideoSwinImageProcessor (resize, centre crop,
normalise), so the output folder classifies exactly as it was evaluated:

    import swin_hf
    from transformers import pipeline
    from swin_hf import VideoSwinClassificationPipeline
    classifier = pipeline("video-classification", model=DIR, pipeline_class=VideoSwinClassificationPipeline)
    classifier(frames)  # a list of PIL images

Default (no arguments, offline): the built-in 'moving-digits' set (`moving_digits_dataset`) and a tiny Video Swin
(`BUILTIN_MODEL`) from scratch on one CPU thread; README.md states the top-1 and time it reaches.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .. import (
    PRESETS,
    VIDEO_PRESETS,
    VideoSwinConfig,
    VideoSwinForVideoClassification,
    VideoSwinImageProcessor,
)
from ..image_processing_video_swin import sample_frame_indices
from ..metrics import load_accuracy
from ..model_source import check_model_source
from . import report
from .checkpoint import gather_objects
from .cli import launch
from .data import (
    DataError,
    SkipCounter,
    check_labels,
    choose_splits,
    collate_skipping,
    decode_image,
    load_splits,
)
from .errors import ModelError
from .loop import Run, run_lines
from .settings import (
    RecipeSettings,
    below_one,
    dataset_option,
    option,
    pair,
    positive_float,
    positive_int,
    text,
    up_to_one,
)
from .task import Evaluation, Task, TaskData

logger = logging.getLogger(__name__)

BUILTIN = "moving-digits"
DIRECTIONS = ("right", "left", "down", "up")
STEPS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx) per unit of speed
# the tiny Video Swin of the built-in run: 8 frames of 32x32 -> (4, 8, 8) tokens of width 32, then (4, 4, 4) of 64;
# windows of 2 token steps in time (4 frames) by 4x4 tokens; 139k parameters with a 4-class head
BUILTIN_MODEL = dict(embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[2, 4, 4], patch_size=[2, 4, 4])
TARGET_TOP1, TARGET_MINUTES = 0.90, 10.0
clip_counts = pair(int, "'train,validation' clip counts, each >= 1", lambda a, b: a >= 1 and b >= 1)


# --------------------------------------------------------------------------------------------------
# The built-in set
# --------------------------------------------------------------------------------------------------


def moving_digits(count: int, frames: int = 8, size: int = 32, seed: int = 0, noise: float = 0.15):
    """`count` clips of a handwritten digit (scikit-learn's 8x8 digits, 1,797 of them, drawn at random) moving
    across a size x size canvas in one of DIRECTIONS: (videos (count, frames, size, size) uint8, labels (count,)).

    Each clip draws its digit, its brightness (0.6-1), its start position (anywhere: the canvas wraps around, so
    the digit's position in any one frame is uniform whatever the direction), its speed (1, 2 or 3 pixels a frame)
    and the direction, which is the label; every frame gets its own Gaussian noise (std `noise` of full scale).
    No single frame says which way the digit goes: only the change between frames does."""
    from sklearn.datasets import load_digits

    digits = load_digits().images / 16.0  # (1797, 8, 8) in [0, 1]
    rng = np.random.default_rng(seed)
    videos = np.empty((count, frames, size, size), dtype=np.uint8)
    labels = rng.integers(0, len(DIRECTIONS), count)
    for i in range(count):
        canvas = np.zeros((size, size))
        canvas[:8, :8] = digits[rng.integers(len(digits))] * rng.uniform(0.6, 1.0)
        start = rng.integers(0, size, 2)
        speed = rng.integers(1, 4)
        dy, dx = STEPS[DIRECTIONS[labels[i]]]
        for t in range(frames):
            frame = np.roll(canvas, (start[0] + dy * speed * t, start[1] + dx * speed * t), axis=(0, 1))
            frame = frame + rng.normal(0.0, noise, frame.shape)
            videos[i, t] = np.clip(np.rint(frame * 255), 0, 255).astype(np.uint8)
    return videos, labels


def moving_digits_dataset(num_train: int = 2000, num_validation: int = 400, frames: int = 8, size: int = 32, seed: int = 0):
    """The built-in set as a DatasetDict(train, validation) in the recipe's convention: `video` (a list of
    grayscale frames, `Sequence(Image())`) and `label` (ClassLabel: right, left, down, up). Both splits come from
    one seeded generator (`moving_digits`), the validation clips after the training ones."""
    import datasets

    videos, labels = moving_digits(num_train + num_validation, frames, size, seed)
    features = datasets.Features({"video": datasets.Sequence(datasets.Image()),
                                  "label": datasets.ClassLabel(names=list(DIRECTIONS))})

    def split(lo: int, hi: int):
        clips = [[Image.fromarray(frame, mode="L") for frame in clip] for clip in videos[lo:hi]]
        return datasets.Dataset.from_dict({"video": clips, "label": labels[lo:hi].tolist()}, features=features)

    return datasets.DatasetDict(train=split(0, num_train), validation=split(num_train, num_train + num_validation))


# --------------------------------------------------------------------------------------------------
# Reading videos
# --------------------------------------------------------------------------------------------------


def read_video_file(source) -> list[np.ndarray]:
    """The frames of a video file (a path, or {"path", "bytes"} as datasets stores files) as (H, W, 3) uint8
    arrays, decoded with PyAV. Raises DataError when PyAV is not installed."""
    try:
        import av  # optional: only rows that hold video files need it
    except ImportError:
        raise DataError("The video column holds video files, which are read with PyAV, not installed here: "
                        "`pip install av`, or store each video as a list of frames.") from None
    if isinstance(source, dict):
        source = io.BytesIO(source["bytes"]) if source.get("bytes") is not None else source.get("path")
    with av.open(source) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def video_frames(value) -> list:
    """A row's video as a list of frames (PIL images or arrays) in the recipe's convention."""
    if isinstance(value, (str, dict)) and not (isinstance(value, dict) and "bytes" not in value and "path" not in value):
        return read_video_file(value)
    if isinstance(value, np.ndarray) or torch.is_tensor(value):
        array = np.asarray(value)
        if array.ndim not in (3, 4):
            raise ValueError(f"a video array must be (frames, height, width[, channels]), got shape {array.shape}")
        return list(array)
    if isinstance(value, (list, tuple)):
        return [decode_image(frame) if isinstance(frame, (Image.Image, dict)) else np.asarray(frame, dtype=np.uint8)
                for frame in value]
    raise ValueError(f"a video must be a list of frames, an array or a video file path, got {type(value).__name__}")


class VideoClips(torch.utils.data.Dataset):
    """A split's videos as clips: items (pixels (frames, 3, H, W) or None when unreadable, label, index, name).
    The clip is `frames` frames sampled as VideoSwinImageProcessor samples them, each through `processor`.
    With `cache`, each clip is kept after its first read (at most `max_bytes`), since nothing in it is random."""

    def __init__(self, split, video_column: str, label_column: str, processor, frames: int, frame_interval: int,
                 where: str, cache: bool = True, max_bytes: int = 1 << 30):
        self.split, self.video_column, self.processor = split, video_column, processor
        self.frames, self.frame_interval, self.where = frames, frame_interval, where
        self.labels = list(split[label_column])
        self.cache, self.max_bytes, self.store, self.bytes = cache, max_bytes, {}, 0
        self.skipped = SkipCounter()

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        index = int(index)
        if index in self.store:
            return self.store[index].clone(), self.labels[index], index, f"#{index}"
        pixels = clip_pixels(self.split[index][self.video_column], self.processor, self.frames, self.frame_interval,
                             f"{self.where} row {index}", self.skipped)
        if pixels is not None and self.cache and self.bytes + pixels.nbytes <= self.max_bytes:
            self.store[index] = pixels.clone()
            self.bytes += pixels.nbytes
        return pixels, self.labels[index], index, f"#{index}"


def clip_pixels(value, processor, frames: int, frame_interval: int, where: str, skipped: SkipCounter):
    """One row's video -> (frames, 3, H, W) float tensor; None (counted in `skipped`) when a frame or the file
    cannot be read. A readable video with fewer frames than the clip raises DataError."""
    try:
        video = video_frames(value)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        skipped.skip(where, error)
        return None
    span = (frames - 1) * frame_interval + 1
    if len(video) < span:
        raise DataError(f"{where}: the video has {len(video)} frame(s), fewer than a clip of --frames {frames}"
                        + (f" every --frame-interval {frame_interval}" if frame_interval > 1 else "")
                        + f" needs ({span}); lower --frames, or leave videos that short out of the dataset.")
    chosen = [video[i] for i in sample_frame_indices(len(video), frames, frame_interval)]
    return torch.as_tensor(np.asarray(processor(chosen, return_tensors="np")["pixel_values"][0]))  # (T, 3, H, W)


class VideoRows:
    """Rows of a streamed split -> a `collate_skipping` batch of clips (for StreamLoader, in its workers)."""

    def __init__(self, video_column: str, label_column: str, processor, frames: int, frame_interval: int, num_classes: int):
        self.video_column, self.label_column, self.processor = video_column, label_column, processor
        self.frames, self.frame_interval, self.num_classes = frames, frame_interval, num_classes
        self.skipped = SkipCounter()

    def __call__(self, rows: list[dict]):
        items = []
        for i, row in enumerate(rows):
            label = int(row[self.label_column])
            check_labels([label], self.num_classes, "A streamed training row", "Fix the labels of the dataset.")
            pixels = clip_pixels(row[self.video_column], self.processor, self.frames, self.frame_interval,
                                 "a streamed training row", self.skipped)
            items.append((pixels, label, -1, "a streamed training row"))
        return collate_skipping(items)


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoSettings(RecipeSettings):
    """finetune_video.py's settings: the shared ones, with the video data, model and the built-in run's defaults."""

    dataset: str = dataset_option(BUILTIN)
    video_column: str = option("video", "the video column: a list of frames (images or arrays), a (T, H, W, C) array, or "
                               "a video file path (needs PyAV)", text, group="data")
    label_column: str = option("label", "the label column (a ClassLabel)", text, group="data")
    frame_interval: int = option(1, "sample a clip's frames this many frames apart", positive_int, group="data")
    builtin_clips: tuple = option((2000, 400), "built-in set: 'train,validation' clip counts", clip_counts, group="data")
    cache_videos: bool = option(True, "keep each preprocessed clip in memory after its first read (never with --streaming)",
                                group="data")
    model: str = option("builtin", "'builtin' (a tiny Video Swin from scratch), a Video Swin preset (from scratch: "
                        f"{', '.join(VIDEO_PRESETS)}), a Video Swin folder / Hub id, or a swin_hf 2D image checkpoint "
                        "(inflated to video)", text, group="model")
    frames: int = option(8, "frames per clip (the model's num_frames)", positive_int, group="model")
    image_size: int = option(32, "frame resolution the model trains at (frames are resized, then centre-cropped)",
                             positive_int, group="model")
    crop_pct: float = option(1.0, "centre-crop fraction of the resized frame (1 = no crop)", up_to_one, group="model")
    drop_path: float = option(0.0, "stochastic depth rate", below_one, group="model")
    label_smoothing: float = option(0.1, "label smoothing", below_one, group="augmentation")
    epochs: int = option(20, "training epochs", positive_int, group="optimisation")
    batch_size: int = option(32, "clips per process per micro-batch", positive_int, group="optimisation")
    lr: float = option(2e-3, "peak learning rate of the last layers (AdamW; pretrained models: e.g. 1e-4)", positive_float,
                       group="optimisation")
    output_dir: str = option("outputs/video-swin", "the run's folder: model, card, settings.json, metrics, plots, logs, "
                             "checkpoints", text)


# --------------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------------


def load_video_splits(settings: VideoSettings):
    """(train split, validation split, class names); with --streaming the training split is streamed and
    validation the first --max-eval-samples (default 1000) rows of its split. Missing columns and labels that
    are not a ClassLabel are refused here, naming the column and the fix."""
    import datasets

    from .streaming import bounded, stream_splits

    s = settings
    if s.dataset == BUILTIN:
        splits = moving_digits_dataset(*s.builtin_clips, frames=s.frames, seed=s.seed)
        splits = stream_splits(splits) if s.streaming else splits
    else:
        splits = load_splits(s.dataset, dataset_config=s.dataset_config, streaming=s.streaming)
    train_name, validation_name = choose_splits(splits, s.train_split)
    train = splits[train_name]
    features = train.features if not s.streaming else (train.features or train._resolve_features().features)
    for column, option_name in ((s.video_column, "--video-column"), (s.label_column, "--label-column")):
        if column not in features:
            raise DataError(f"--dataset {s.dataset!r}: split {train_name!r} has no column {column!r} (columns: "
                            f"{list(features)}); name the right one with {option_name}.")
    label = features[s.label_column]
    if not isinstance(label, datasets.ClassLabel):
        raise DataError(f"--label-column {s.label_column!r} is a {type(label).__name__}, not a ClassLabel, so the classes "
                        "have no names; cast it first, e.g. dataset.class_encode_column("
                        f"{s.label_column!r}) or cast_column with datasets.ClassLabel(names=[...]).")
    if isinstance(features[s.video_column], getattr(datasets, "Video", ())):  # files: read here with PyAV
        splits = {name: split.cast_column(s.video_column, datasets.Video(decode=False)) for name, split in splits.items()}
        train = splits[train_name]
    validation = splits[validation_name] if validation_name else None
    columns = [s.video_column, s.label_column]
    if s.streaming:
        if validation is None:
            raise DataError(f"--streaming needs a validation split (found {sorted(splits)}); a stream cannot be split in two.")
        train = train.select_columns(columns)
        train = train.take(s.max_train_samples) if s.max_train_samples else train
        return train, bounded(validation.select_columns(columns), s.max_eval_samples or 1000), label.names
    if validation is None:
        parts = train.train_test_split(test_size=s.validation_fraction, seed=s.seed)
        train, validation = parts["train"], parts["test"]
        logger.info("no validation split: held out %d training videos", len(validation))
    if s.max_train_samples:
        train = train.select(range(min(s.max_train_samples, len(train))))
    if s.max_eval_samples:
        validation = validation.select(range(min(s.max_eval_samples, len(validation))))
    for split, where in ((train, "training"), (validation, "validation")):
        check_labels(np.asarray(split[s.label_column]), len(label.names), f"The {where} split", "Fix the labels.", label.names)
        check_frame_counts(split, s.video_column, s.frames, s.frame_interval, where)
    return train, validation, label.names


def check_frame_counts(split, column: str, frames: int, frame_interval: int, where: str) -> None:
    """Refuse, before training, a row whose list of frames is shorter than a clip (read from the Arrow lengths
    without decoding; video files are checked as they are read)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = split.with_format("arrow")[column]  # (the rows of this split, in its order, undecoded)
    if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        return
    lengths = np.asarray(pc.list_value_length(values).to_numpy(zero_copy_only=False))
    span = (frames - 1) * frame_interval + 1
    short = np.flatnonzero(lengths < span)
    if short.size:
        raise DataError(f"The {where} split: row {int(short[0])} has {int(lengths[short[0]])} frame(s), fewer than a clip of "
                        f"--frames {frames} needs ({span}); {short.size} row(s) are that short. Lower --frames, or leave them "
                        "out of the dataset.")


def build_model(settings: VideoSettings, class_names: list[str]):
    """(model, whether it is trained from scratch) for --model: 'builtin' or a Video Swin preset (from scratch), a
    Video Swin folder (fine-tuned, a new head for these classes), or a 2D swin_hf image checkpoint (inflated with
    VideoSwinForVideoClassification.from_image_model)."""
    from transformers import AutoConfig

    s = settings
    id2label = dict(enumerate(class_names))
    label2id = {name: i for i, name in id2label.items()}
    sizes = dict(image_size=s.image_size, num_frames=s.frames, drop_path_rate=s.drop_path)
    labels = dict(id2label=id2label, label2id=label2id)
    if s.model == "builtin":
        return VideoSwinForVideoClassification(VideoSwinConfig(**BUILTIN_MODEL, **sizes, **labels)), True
    if s.model in VIDEO_PRESETS:
        return VideoSwinForVideoClassification(VideoSwinConfig.from_preset(s.model, **sizes, **labels)), True
    try:
        model_type = AutoConfig.from_pretrained(s.model).model_type
        if model_type == VideoSwinConfig.model_type:
            model = VideoSwinForVideoClassification.from_pretrained(s.model, ignore_mismatched_sizes=True, id2label=id2label,
                                                                    label2id=label2id, **sizes)
        elif model_type == "swin_hf":
            logger.info("--model %s is a 2D Swin image checkpoint: inflating it to Video Swin (from_image_model: patch "
                        "kernel repeated over 2 frames, position bias over time offsets)", s.model)
            model = VideoSwinForVideoClassification.from_image_model(s.model, num_frames=s.frames, image_size=s.image_size,
                                                                     drop_path_rate=s.drop_path, num_labels=len(class_names),
                                                                     id2label=id2label, label2id=label2id)
        else:
            raise ModelError(f"--model {s.model!r} is a {model_type!r} model; give a Video Swin or a swin_hf Swin image "
                             "checkpoint.")
    except (TypeError, ValueError, KeyError, OSError) as error:
        if isinstance(error, ModelError):
            raise
        raise ModelError(f"--model {s.model!r} cannot be loaded ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:300]}).") from error
    return model, False


# --------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------


class VideoTask(Task):
    """Top-1 accuracy picks the best model; the folder loads with pipeline("video-classification")."""

    name, score, card_task = "finetune_video", "val_top1", "video-classification"
    fixed = ("model", "frames", "image_size", "class_names")
    curves = None  # (report's default: accuracy)
    builtin_threads = 1  # a 139k-parameter model: one thread, the CPU's other core left to the data and to others

    @classmethod
    def resolve(cls, settings: VideoSettings) -> VideoSettings:
        settings.builtin_clips = tuple(settings.builtin_clips)
        settings.cache_videos = settings.cache_videos and not settings.streaming
        return settings

    def builtin(self) -> bool:
        return self.settings.dataset == BUILTIN and self.settings.model == "builtin"

    def default_run(self) -> bool:
        s = self.settings
        return self.builtin() and not (s.max_steps or s.max_train_samples or s.max_eval_samples or s.max_minutes)

    def check(self, fabric) -> None:
        model = self.settings.model
        if model in PRESETS:
            raise ModelError(f"--model {model!r} is an image preset (random weights): give 'builtin', a Video Swin preset "
                             f"({', '.join(VIDEO_PRESETS)}), or a trained image checkpoint folder to inflate.")
        if model != "builtin" and model not in VIDEO_PRESETS:
            check_model_source(model, "--model", extra_presets=("builtin", *VIDEO_PRESETS))

    def load_data(self, fabric) -> TaskData:
        s = self.settings
        train, validation, class_names = load_video_splits(s)
        self.processor = VideoSwinImageProcessor.for_image_size(s.image_size, crop_pct=s.crop_pct)
        common = (s.video_column, s.label_column, self.processor, s.frames, s.frame_interval)
        validation_set = VideoClips(validation, *common, "validation", cache=s.cache_videos)
        source = s.dataset
        notes = [f"clips of {s.frames} frames at {s.image_size}x{s.image_size}"
                 + (f", every {s.frame_interval} frames" if s.frame_interval > 1 else "")]
        if s.dataset == BUILTIN:
            source = f"{BUILTIN} (built-in: {s.builtin_clips[0]} training / {s.builtin_clips[1]} validation clips)"
        if s.streaming:
            rows = VideoRows(*common, len(class_names))
            return TaskData(train, validation_set, collate_skipping, rows, list(class_names), source, notes)
        train_set = VideoClips(train, *common, "training", cache=s.cache_videos)
        return TaskData(train_set, validation_set, collate_skipping, None, list(class_names), source, notes)

    def build_model(self, data: TaskData):
        model, self.from_scratch = build_model(self.settings, data.class_names)
        return model

    def start(self, run: Run) -> None:
        self.accuracy = load_accuracy()

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        logits = run.model(pixel_values=batch["pixel_values"]).logits.float()
        return torch.nn.functional.cross_entropy(logits, batch["labels"], label_smoothing=self.settings.label_smoothing)

    def evaluate(self, run: Run) -> Evaluation:
        """Top-1 (and top-5 with >= 10 classes) accuracy and loss over the whole validation split, gathered from
        all processes (padding duplicates removed by example index). Unreadable videos are left out."""
        num_classes = len(run.data.class_names)
        rows = []  # (index, label, top1, top5-hit-or-top1, loss)
        for batch in run.eval_loader:
            run.skipped.update(("validation", name) for name in batch.get("skipped_files", ()))
            if batch["pixel_values"] is None:
                continue
            logits = run.model(pixel_values=batch["pixel_values"]).logits.float()
            labels = batch["labels"]
            losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
            top1 = logits.argmax(-1)
            hit5 = (logits.topk(min(5, num_classes), dim=-1).indices == labels[:, None]).any(-1)
            top5 = torch.where(hit5, labels, top1)
            rows.extend(zip(batch["index"].tolist(), labels.tolist(), top1.tolist(), top5.tolist(), losses.tolist()))
        gathered = {row[0]: row for part in gather_objects(run.fabric, rows) for row in part}
        rows = [gathered[i] for i in sorted(gathered)]
        if not rows:
            return Evaluation({"val_top1": 0.0, "val_loss": float("nan")}, 0.0, "no validation video was readable")
        _, refs, top1, top5, losses = map(list, zip(*rows))
        metrics = {"val_top1": self.accuracy.compute(predictions=top1, references=refs)["accuracy"],
                   "val_loss": float(np.mean(losses))}
        words = f"val top-1 {metrics['val_top1']:.2%}"
        if num_classes >= 10:
            metrics["val_top5"] = self.accuracy.compute(predictions=top5, references=refs)["accuracy"]
            words += f", top-5 {metrics['val_top5']:.2%}"
        words += f", loss {metrics['val_loss']:.4f}"
        return Evaluation(metrics, metrics["val_top1"], words, {"predictions": top1, "references": refs})

    def summary(self, run: Run, best: dict) -> dict:
        return {
            "best_val_top1": best.get("val_top1"),
            "best_val_top5": best.get("val_top5"),
            "best_val_loss": best.get("val_loss"),
            "final_val_top1": run.last_eval["val_top1"] if run.last_eval else None,
            "num_classes": len(run.data.class_names),
            "frames": self.settings.frames,
            "image_size": self.settings.image_size,
            "from_scratch": self.from_scratch,
        }

    def card_metrics(self, summary: dict) -> dict:
        return {k: summary[k] for k in ("best_val_top1", "best_val_top5", "best_val_loss", "best_epoch") if k in summary}

    def pictures(self, run: Run) -> None:
        best = run.progress["best"]
        if best and run.fabric.is_global_zero:
            matrix = report.confusion_matrix(best["references"], best["predictions"], len(run.data.class_names))
            report.plot_confusion(matrix, run.data.class_names, f"{run.settings.output_dir}/confusion_matrix.png")

    def report(self, summary: dict) -> list[str]:
        top1 = summary.get("best_val_top1")
        line = f"validation top-1 {top1:.1%}" if top1 is not None else "no evaluation ran"
        if "best_val_top5" in summary:
            line += f" (top-5 {summary['best_val_top5']:.1%})"
        lines = [f"{line} {run_lines(summary)}"]
        if self.default_run() and top1 is not None:
            met = top1 >= TARGET_TOP1 and summary.get("train_time_s", math.inf) <= 60 * TARGET_MINUTES
            lines.append(f"target >= {TARGET_TOP1:.0%} in <= {TARGET_MINUTES:g} min: {'met' if met else 'NOT met'}")
        return lines


DESCRIPTION = ("Train or fine-tune a Video Swin Transformer video classifier on datasets splits whose rows hold a video "
               "(a list of frames, or a file read with PyAV) and a ClassLabel. Launch with `python`, `lightning run` (or "
               "`fabric run`), `torchrun` or `accelerate launch`. With no arguments, a tiny Video Swin trains on the "
               "built-in moving-digits set (offline).")


def main(argv: list[str] | None = None) -> int:
    return launch(VideoTask, VideoSettings, argv, "finetune_video.py", DESCRIPTION)


__all__ = [
    "BUILTIN",
    "BUILTIN_MODEL",
    "DIRECTIONS",
    "VideoClips",
    "VideoRows",
    "VideoSettings",
    "VideoTask",
    "build_model",
    "check_frame_counts",
    "clip_pixels",
    "load_video_splits",
    "main",
    "moving_digits",
    "moving_digits_dataset",
    "read_video_file",
    "video_frames",
]
