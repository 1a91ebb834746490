"""Object-detection recipe (recipes/detect.py): a transformers DETR-family detector on a swin_hf backbone,
as a task on the shared training loop (swin_hf.training.loop).

The loop does what every recipe does the same way: the launchers, the output folder, checkpoints and exact
resume (a run killed with SIGKILL and resumed ends with the same weights), the non-finite stop, AdamW groups
(layer-wise decay over the backbone's blocks), the cosine schedule, gradient accumulation, EMA,
--max-minutes, the best model (here by COCO mAP), metrics.json, the curves and the card. What is
detection's lives here and beside this module: swin_hf.detection (the heads' wiring), .data (sets, checks,
augmentation), .evaluate (mAP, pictures).

Input: the Hub's detection convention (`image` + `objects` with `bbox` in COCO [x, y, width, height]
pixels and `category`) from `load_dataset`, a saved DatasetDict, or a COCO-JSON folder; with --streaming read
as it is used (detection.data.prepare_detection_stream). Output folder: the
best model (by COCO mAP) with an image processor that ``pipeline("object-detection")`` loads (after
``import swin_hf``), README.md (model card), settings.json, metrics.json (mAP, mAP50, mAP75, per-class AP,
what the data checks found), logs/ (CSV, TensorBoard), training_curves.png, pictures/ (validation images,
true boxes | predicted boxes), checkpoints/ (and checkpoints/final-weights.safetensors).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from .. import PRESETS, SwinConfig
from ..model_source import check_model_source
from ..segmentation import BUILTIN_MODEL
from ..training.checkpoint import gather_objects
from ..training.cli import launch
from ..training.data import DataError, SkipCounter
from ..training.distributed import strategy_name
from ..training.errors import ModelError, UsageError
from ..training.loop import Run, run_lines
from ..training.settings import (
    RecipeSettings,
    below_one,
    checked,
    fraction,
    nonnegative_float,
    nonnegative_int,
    one_of,
    option,
    pair,
    positive_float,
    positive_int,
    probability,
    text,
    up_to_one,
)
from ..training.task import Evaluation, Task, TaskData
from . import (
    DEFAULT_HEAD,
    HEADS,
    detector_config,
    detector_from_encoder,
    head_settings,
    image_processor_for,
    size_multiple,
)
from .data import (
    BBOX_FORMATS,
    BUILTIN,
    STREAM_VALIDATION,
    BoxAugment,
    DetectionDataset,
    DetectionRows,
    collate,
    load_detection_splits,
    prepare_detection,
    prepare_detection_stream,
    to_detr_labels,
)
from .evaluate import evaluate_detection, normalise, save_pictures

# settings a resumed run can never change: the checkpoint's weights are for this architecture and these classes
RUN_FIXED = ("model", "head", "image_size", "hidden_size", "num_queries", "encoder_layers", "decoder_layers",
             "denoising_queries", "class_names")
# options that only shape what is drawn at the end; not compared on resume
NOT_RECORDED = ("num_pictures", "picture_threshold")
TARGET_MAP50, TARGET_MINUTES = 0.5, 10.0
zoom_range = pair(float, "'lo,hi' with 0 < lo <= hi", lambda lo, hi: 0 < lo <= hi)


@dataclass
class DetectSettings(RecipeSettings):
    """detect.py's settings: the shared ones (with detection's defaults), detection's data, head and augmentation."""

    dataset: str = option(BUILTIN, f"anything datasets.load_dataset takes (Hub id, a folder of parquet/arrow/webdataset "
                          f".tar/image files, a saved DatasetDict folder) or a COCO-JSON folder; '{BUILTIN}' = built-in, "
                          "offline", text, group="data")
    image_column: str = option("image", "image column", text, group="data")
    objects_column: str = option("objects", "column of per-image objects {bbox: [[x, y, w, h], ...], category: [...]}",
                                 text, group="data")
    bbox_format: str = option("xywh", "how bbox is written, in pixels: xywh = COCO [x_min, y_min, width, height] (the Hub's "
                              "convention), xyxy = corners, cxcywh = centre and size", one_of(*BBOX_FORMATS), group="data")
    id2label: str | None = option(None, "JSON file mapping class index -> name (default: the names of the category "
                                  "ClassLabel)", text, group="data")
    num_labels: int | None = option(None, "number of classes, when the category column has no names", positive_int,
                                    group="data")
    validation_fraction: float = option(0.1, "held out for validation (seeded) when the set has no validation split "
                                        "(with --streaming: the first --max-eval-samples images instead)", fraction,
                                        group="data")
    max_eval_samples: int | None = option(None, f"use only the first N validation images (with --streaming: "
                                          f"{STREAM_VALIDATION} unless given)", positive_int, group="data")
    model: str = option("builtin", "'builtin' (small Swin from scratch), a swin_hf preset (from scratch), or a swin_hf "
                        "checkpoint whose encoder is loaded (classification, SimMIM, backbone, converted)", text, group="model")
    head: str = option(DEFAULT_HEAD, "the transformers detector on the backbone", one_of(*sorted(HEADS)), group="model")
    image_size: int = option(128, "every image is resized to this square size (RT-DETR on COCO: 640)", positive_int,
                             group="model")
    hidden_size: int = option(64, "width of the detector's transformer (paper: 256)", positive_int, group="model")
    num_queries: int = option(30, "object queries: the most objects found per image (paper: 300)", positive_int, group="model")
    encoder_layers: int = option(1, "transformer encoder layers of the head", positive_int, group="model")
    decoder_layers: int = option(3, "transformer decoder layers of the head (paper: 6)",
                                 checked(int, lambda v: v >= 2, "a whole number >= 2"), group="model")
    denoising_queries: int = option(30, "RT-DETR heads: noised copies of the true boxes the decoder learns to mend, "
                                    "spread over groups (paper: 100; 0 = none; other heads have none)", nonnegative_int,
                                    group="model")
    drop_path: float = option(0.1, "stochastic depth of the backbone", below_one, group="model")
    epochs: int = option(6, "training epochs", positive_int, group="optimisation")
    batch_size: int = option(16, "images per process per micro-batch", positive_int, group="optimisation")
    lr: float = option(5e-4, "peak learning rate (AdamW; RT-DETR, pre-trained: 1e-4)", positive_float, group="optimisation")
    min_lr_ratio: float = option(0.05, "cosine floor, as a fraction of --lr", probability, group="optimisation")
    weight_decay: float = option(1e-4, "AdamW weight decay (never on norms, biases, position tables)", nonnegative_float,
                                 group="optimisation")
    layer_decay: float = option(1.0, "layer-wise lr decay over backbone blocks (1 = off)", up_to_one, group="optimisation")
    warmup_ratio: float = option(0.05, "linear warmup as a fraction of all steps", below_one, group="optimisation")
    ema_decay: float = option(0.0, "EMA of the weights, evaluated and saved (0 = off)", below_one, group="optimisation")
    hflip: float = option(0.5, "horizontal flip probability (kornia, images and boxes together)", probability,
                          group="augmentation")
    scale_range: tuple = option((0.6, 1.4), "random zoom range 'lo,hi' (below 1: zoom out)", zoom_range, group="augmentation")
    translate: float = option(0.1, "random shift, as a fraction of the image size", below_one, group="augmentation")
    jitter: float = option(0.2, "brightness/contrast/saturation jitter", below_one, group="augmentation")
    output_dir: str = option("outputs/swin-detr", "the run's folder: model, card, settings.json, metrics, pictures, plots, "
                             "logs, checkpoints", text)
    eval_every_epochs: int = option(2, "evaluate every N epochs (and at the end)", positive_int)
    num_pictures: int = option(8, "validation images drawn with true and predicted boxes", nonnegative_int)
    picture_threshold: float = option(0.5, "lowest score of a box drawn in the pictures", probability)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def load_data(settings: DetectSettings):
    """The checked data (detection.data.DetectionData)."""
    s = settings
    splits, id2label = load_detection_splits(s.dataset, s.dataset_config, s.max_train_samples, s.max_eval_samples,
                                             s.streaming)
    if s.id2label:
        try:
            with open(s.id2label) as f:
                id2label = {int(k): str(v) for k, v in json.load(f).items()}
        except (OSError, ValueError, AttributeError) as error:
            raise DataError(f"--id2label {s.id2label!r} cannot be read ({error}); give a JSON file like {{\"0\": \"cat\"}}.") from error
        if sorted(id2label) != list(range(len(id2label))):
            raise DataError(f"--id2label {s.id2label!r} must number the classes 0..N-1, got {sorted(id2label)[:10]}.")
    elif s.num_labels:
        id2label = {i: f"class_{i}" for i in range(s.num_labels)}
    if s.num_labels and id2label is not None and s.num_labels != len(id2label):
        raise DataError(f"--num-labels {s.num_labels} but the class list has {len(id2label)} classes.")
    if s.streaming:
        return prepare_detection_stream(splits, id2label, s.image_column, s.objects_column, s.bbox_format,
                                        s.max_train_samples, s.max_eval_samples, s.train_split)
    return prepare_detection(
        splits, id2label, s.image_column, s.objects_column, s.bbox_format, s.validation_fraction,
        s.max_train_samples, s.max_eval_samples, s.seed, s.train_split,
    )


def swin_source(settings: DetectSettings):
    """What --model names: a SwinConfig to start from scratch ('builtin', a preset) or a checkpoint path."""

    if settings.model == "builtin":
        return SwinConfig(**BUILTIN_MODEL, image_size=settings.image_size, drop_path_rate=settings.drop_path)
    if settings.model in PRESETS:
        return SwinConfig.from_preset(settings.model, image_size=settings.image_size, drop_path_rate=settings.drop_path)
    check_model_source(settings.model, "--model", extra_presets=("builtin",))
    return settings.model


def check_image_size(settings: DetectSettings) -> None:
    """--image-size against what the head needs (RT-DETR: a multiple of the coarsest stride), before the
    data is read."""

    source = swin_source(settings)
    try:
        backbone = source if isinstance(source, SwinConfig) else SwinConfig.from_pretrained(source)
    except (TypeError, ValueError, OSError) as error:
        raise ModelError(f"--model {settings.model!r}: {' '.join(str(error).split())[:400]}") from error
    multiple = size_multiple(detector_config(backbone, settings.head))
    if settings.image_size % multiple:
        raise UsageError(
            f"--image-size {settings.image_size}: {settings.head} needs a multiple of {multiple} (its feature pyramid doubles "
            f"the coarsest map, of stride {multiple}); try {max(multiple, round(settings.image_size / multiple) * multiple)}."
        )


def build_model(settings: DetectSettings, id2label: dict[int, str]):
    head = head_settings(settings.head, settings.hidden_size, settings.num_queries, settings.encoder_layers,
                         settings.decoder_layers, head_dim=16)
    if settings.head in ("rt_detr", "rt_detr_v2"):
        head["num_denoising"] = settings.denoising_queries
    try:
        return detector_from_encoder(swin_source(settings), settings.head, id2label=id2label, **head)
    except (TypeError, ValueError, OSError) as error:
        raise ModelError(f"--model {settings.model!r}: {' '.join(str(error).split())[:400]}") from error


def save_for_pipeline(model, processor, directory: str, weights: dict | None = None) -> None:
    """Model + image processor, so that ``pipeline("object-detection", model=directory)`` loads it (after
    ``import swin_hf``, which teaches transformers the "swin_hf" backbone type). `weights`: the whole
    tensors of a sharded model (default: the model's own)."""
    model.save_pretrained(directory, state_dict=weights)
    processor.save_pretrained(directory)


def summary_line(summary: dict) -> str:
    """The result line printed at the end of a run."""
    if summary.get("map") is None:
        return "no evaluation ran"
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in summary.get("per_class_ap", {}).items())
    return (f"validation mAP {summary['map']:.4f}, mAP50 {summary['map_50']:.4f}, mAP75 {summary['map_75']:.4f} "
            f"(AP per class: {per_class}) {run_lines(summary)}")


# --------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------


class DetectTask(Task):
    """COCO box mAP picks the best model; the folder loads with pipeline("object-detection")."""

    name, score, card_task = "detect", "val_map", "object-detection"
    fixed = RUN_FIXED
    not_recorded = NOT_RECORDED
    curves = {"val_map": "mAP", "val_map_50": "mAP50"}
    curves_title = "Validation box mAP"
    builtin_threads = 0  # the built-in run keeps torch's threads (its model is not as tiny as the other recipes')

    @classmethod
    def resolve(cls, settings: DetectSettings) -> DetectSettings:
        settings.scale_range = tuple(settings.scale_range)
        return settings

    def builtin(self) -> bool:
        return self.settings.dataset == BUILTIN and self.settings.model == "builtin"

    def default_run(self) -> bool:
        s = self.settings
        return (self.builtin() and s.head == DEFAULT_HEAD
                and not (s.max_steps or s.max_train_samples or s.max_eval_samples or s.max_minutes))

    def check(self, fabric) -> None:

        if strategy_name(fabric).startswith("fsdp"):
            raise UsageError("detect.py trains on one device or with DDP (--strategy ddp); sharded training (--strategy fsdp) "
                             "is for finetune.py, segment.py and pretrain_simmim.py.")
        if self.settings.model != "builtin":  # a missing folder or an unreachable Hub id fails before the data is read
            check_model_source(self.settings.model, "--model", extra_presets=("builtin", *PRESETS))
        check_image_size(self.settings)

    def load_data(self, fabric) -> TaskData:
        s = self.settings
        data = load_data(s)
        self.data = data
        skipped = SkipCounter()
        columns = dict(image_column=data.image_column, objects_column=data.objects_column, bbox_format=data.bbox_format)
        self.eval_set = DetectionDataset(data.validation, s.image_size, **columns, skipped=skipped)
        if s.streaming:
            rows = DetectionRows(s.image_size, len(data.id2label), **columns)
            return TaskData(data.train, self.eval_set, collate, rows, class_names=list(data.id2label.values()),
                            source=s.dataset, notes=data.notes, move_to_device=False)
        train = DetectionDataset(data.train, s.image_size, **columns, skipped=skipped)
        return TaskData(train, self.eval_set, collate, class_names=list(data.id2label.values()), source=s.dataset,
                        notes=data.notes, move_to_device=False)

    def build_model(self, data: TaskData):
        model = build_model(self.settings, self.data.id2label)
        data.notes.insert(0, f"detector: {type(model).__name__} ({self.settings.head} head) on a swin_hf backbone")
        return model

    def depths(self, model) -> list[int]:
        return list(model.config.backbone_config.depths)

    def start(self, run: Run) -> None:
        s = self.settings
        self.augment = BoxAugment(s.hflip, s.scale_range, s.translate, s.jitter)
        self.processor = image_processor_for(s.head, s.image_size)

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        """The head's own loss (Hungarian matching; classification, L1 and GIoU box terms; auxiliary and, for
        RT-DETR, denoising losses) on the augmented batch. With several processes every parameter takes part
        (a head may leave some unused in a step, e.g. RT-DETR's denoising on a batch without objects, which
        DDP refuses): their sum, times zero, is added."""
        device = run.fabric.device
        images = batch["pixel_values"].to(device).float() / 255.0
        images, boxes, labels = self.augment(images, [b.to(device) for b in batch["boxes"]],
                                             [c.to(device) for c in batch["labels"]])
        height, width = images.shape[-2:]
        pixels = normalise(images, self.processor.image_mean, self.processor.image_std)
        loss = run.model(pixel_values=pixels, labels=to_detr_labels(boxes, labels, height, width)).loss
        if run.fabric.world_size > 1:
            loss = loss + 0.0 * sum(p.sum() for p in run.model.parameters() if p.requires_grad)
        return loss

    def evaluate(self, run: Run) -> Evaluation:
        """COCO box mAP over the whole validation split, gathered from every process."""
        result = evaluate_detection(run.model, self.processor, run.eval_loader, self.data.id2label,
                                    gather=lambda rows: gather_objects(run.fabric, rows), skipped=run.skipped)
        metrics = {f"val_{k}": v for k, v in result.items() if k not in ("per_class_ap", "images")}
        text_ = f"val mAP {result['map']:.4f}, mAP50 {result['map_50']:.4f}, mAP75 {result['map_75']:.4f}"
        return Evaluation(metrics, result["map"], text_, {"per_class_ap": result["per_class_ap"]})

    def save_model(self, run: Run, folder: str, weights: dict) -> None:
        save_for_pipeline(run.raw_model, self.processor, folder, weights)

    def summary(self, run: Run, best: dict) -> dict:
        return {
            "head": self.settings.head,
            "map": best.get("val_map"),
            "map_50": best.get("val_map_50"),
            "map_75": best.get("val_map_75"),
            "map_small": best.get("val_map_small"),
            "map_medium": best.get("val_map_medium"),
            "map_large": best.get("val_map_large"),
            "per_class_ap": best.get("per_class_ap"),
            "final_map_50": run.last_eval["val_map_50"] if run.last_eval else None,
            "num_classes": len(self.data.id2label),
            "data_checks": {name: vars(stats) for name, stats in self.data.stats.items()},
            "image_size": self.settings.image_size,
        }

    def card_metrics(self, summary: dict) -> dict:
        metrics = {k: summary[k] for k in ("map", "map_50", "map_75", "best_epoch") if k in summary}
        metrics.update({f"AP {name}": ap for name, ap in summary.get("per_class_ap", {}).items()})
        return metrics

    def pictures(self, run: Run) -> None:
        """The first --num-pictures validation images with their true and the best model's boxes (process 0)."""
        s = self.settings
        if run.progress["best"] and s.num_pictures and run.fabric.is_global_zero:
            from transformers import AutoModelForObjectDetection

            best_model = AutoModelForObjectDetection.from_pretrained(s.output_dir).to(run.fabric.device)
            save_pictures(best_model, self.processor, self.eval_set, os.path.join(s.output_dir, "pictures"),
                          self.data.id2label, s.num_pictures, s.picture_threshold)

    def report(self, summary: dict) -> list[str]:
        lines = [summary_line(summary)]
        if self.default_run() and summary.get("map_50") is not None:
            met = summary["map_50"] >= TARGET_MAP50 and summary.get("train_time_s", 0) < 60 * TARGET_MINUTES
            lines.append(f"target mAP50 >= {TARGET_MAP50} in < {TARGET_MINUTES:g} min: {'met' if met else 'NOT met'}")
        return lines


DESCRIPTION = ("Object detection with a transformers DETR-family head (RT-DETR by default) on a Swin backbone, on any set "
               "in the Hub's detection convention (image + objects{bbox, category}) or a COCO-JSON folder. Launch with "
               "`python`, `lightning run` (or `fabric run`), `torchrun` or `accelerate launch`. With no arguments, a small "
               "Swin with RT-DETR trains on the built-in pasted-objects set.")


def main(argv: list[str] | None = None) -> int:

    return launch(DetectTask, DetectSettings, argv, "detect.py", DESCRIPTION)


__all__ = [
    "BUILTIN_MODEL",
    "NOT_RECORDED",
    "RUN_FIXED",
    "DetectSettings",
    "DetectTask",
    "build_model",
    "check_image_size",
    "load_data",
    "main",
    "save_for_pipeline",
    "summary_line",
    "swin_source",
]
