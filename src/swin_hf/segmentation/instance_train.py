"""Instance segmentation recipe (`recipes/segment.py --task instance`): transformers' Mask2Former on a swin_hf
backbone, as a task on the shared training loop (swin_hf.training.loop).

The loop does what every recipe does the same way: the launchers, the output folder, checkpoints and exact
resume, the non-finite stop, AdamW groups (layer-wise decay over the backbone's blocks), the cosine
schedule, gradient accumulation, EMA, --max-minutes, the best model (here by COCO mask mAP), metrics.json,
the curves and the card. What is instance segmentation's lives beside this module: .instance (the head's
wiring), .instance_data (sets, checks, augmentation), .instance_evaluate (mask/box mAP, pictures).

Input: `image` + `objects` {`segmentation` (COCO polygons or RLE, per object), `category`, optional
`iscrowd`} from `load_dataset`, a saved DatasetDict, or a COCO-JSON folder (see .instance_data). Output
folder: the best model (by mask mAP) with a Mask2Former image processor that
``pipeline("image-segmentation", subtask="instance")`` loads (after ``import swin_hf``), README.md (model
card), settings.json, metrics.json (`mask_map`, `mask_map50`, `mask_map75`, `box_map`, what the data checks
found), logs/, training_curves.png, pictures/ (validation images: true masks | predicted masks),
checkpoints/.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from .. import PRESETS, SwinConfig
from ..detection.evaluate import normalise
from ..model_source import check_model_source
from ..training.checkpoint import gather_objects
from ..training.data import DataError, SkipCounter
from ..training.distributed import strategy_name
from ..training.errors import ModelError, UsageError
from ..training.loop import Run, run_lines
from ..training.settings import (
    RecipeSettings,
    below_one,
    checked,
    dataset_option,
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
from . import BUILTIN_MODEL
from .instance import head_settings, instance_processor, mask2former_from_encoder
from .instance_data import BUILTIN, InstanceDataset, MaskAugment, collate, load_instance_splits, prepare_instances
from .instance_evaluate import KEYS, evaluate_instances, save_instance_pictures

TASKS = ("semantic", "instance")
# settings a resumed run can never change: the checkpoint's weights are for this architecture and these classes
RUN_FIXED = ("task", "model", "image_size", "hidden_size", "num_queries", "encoder_layers", "decoder_layers", "class_names")
NOT_RECORDED = ("num_pictures", "picture_threshold")
TARGET_MAP50, TARGET_MINUTES = 0.5, 10.0
multiple_of_32 = checked(int, lambda v: v > 0 and v % 32 == 0, "a positive multiple of 32")
zoom_range = pair(float, "'lo,hi' with 0 < lo <= hi", lambda lo, hi: 0 < lo <= hi)


@dataclass
class InstanceSettings(RecipeSettings):
    """segment.py --task instance: the shared settings, instance segmentation's data, head and augmentation."""

    task: str = option("instance", "semantic (UperNet, per-pixel classes) or instance (Mask2Former, a mask per object)",
                       one_of(*TASKS))
    dataset: str = dataset_option(BUILTIN)
    image_column: str = option("image", "image column", text, group="data")
    objects_column: str = option("objects", "column of per-image objects {segmentation: [COCO polygons or RLE, ...], "
                                 "category: [...], iscrowd (optional)}", text, group="data")
    id2label: str | None = option(None, "JSON file mapping class index -> name (default: the names of the category "
                                  "ClassLabel)", text, group="data")
    num_labels: int | None = option(None, "number of classes, when the category column has no names", positive_int,
                                    group="data")
    model: str = option("builtin", "'builtin' (small Swin from scratch), a swin_hf preset (from scratch), or a swin_hf "
                        "checkpoint whose encoder is loaded (classification, SimMIM, backbone, converted)", text, group="model")
    image_size: int = option(128, "every image is resized to this square size", positive_int, group="model")
    hidden_size: int = option(64, "width of Mask2Former's pixel decoder and transformer decoder (paper: 256; a multiple "
                              "of 32, the groups of its GroupNorm)", multiple_of_32, group="model")
    num_queries: int = option(10, "object queries: the most objects found per image (paper: 100)", positive_int,
                              group="model")
    encoder_layers: int = option(1, "deformable encoder layers of the pixel decoder (paper: 6)", positive_int, group="model")
    decoder_layers: int = option(3, "transformer decoder layers (paper: 9, plus one)", positive_int, group="model")
    train_num_points: int = option(256, "points sampled per mask in the loss (paper: 12544)", positive_int, group="model")
    drop_path: float = option(0.1, "stochastic depth of the backbone", below_one, group="model")
    epochs: int = option(6, "training epochs", positive_int, group="optimisation")
    batch_size: int = option(16, "images per process per micro-batch", positive_int, group="optimisation")
    lr: float = option(5e-4, "peak learning rate (AdamW; paper, pre-trained: 1e-4)", positive_float, group="optimisation")
    min_lr_ratio: float = option(0.05, "cosine floor, as a fraction of --lr", probability, group="optimisation")
    weight_decay: float = option(0.05, "AdamW weight decay (never on norms, biases, position tables)", nonnegative_float,
                                 group="optimisation")
    layer_decay: float = option(1.0, "layer-wise lr decay over backbone blocks (1 = off)", up_to_one, group="optimisation")
    warmup_ratio: float = option(0.05, "linear warmup as a fraction of all steps", below_one, group="optimisation")
    clip_grad: float = option(0.1, "gradient norm clipping (0 = off; Mask2Former: 0.01 of a 100-query loss)",
                              nonnegative_float, group="optimisation")
    hflip: float = option(0.5, "horizontal flip probability (images and masks together)", probability, group="augmentation")
    scale_range: tuple = option((0.7, 1.3), "random zoom range 'lo,hi' (below 1: zoom out)", zoom_range, group="augmentation")
    translate: float = option(0.1, "random shift, as a fraction of the image size", below_one, group="augmentation")
    jitter: float = option(0.2, "brightness/contrast jitter", below_one, group="augmentation")
    output_dir: str = option("outputs/swin-mask2former", "the run's folder: model, card, settings.json, metrics, pictures, "
                             "plots, logs, checkpoints", text)
    eval_every_epochs: int = option(2, "evaluate every N epochs (and at the end)", positive_int)
    num_pictures: int = option(8, "validation images drawn with true and predicted masks", nonnegative_int)
    picture_threshold: float = option(0.5, "lowest score of a mask drawn in the pictures", probability)


def load_data(settings: InstanceSettings):
    """The checked data (instance_data.InstanceData)."""
    s = settings
    splits, id2label = load_instance_splits(s.dataset, s.dataset_config, s.max_train_samples, s.max_eval_samples)
    if s.id2label:
        try:
            with open(s.id2label) as f:
                id2label = {int(k): str(v) for k, v in json.load(f).items()}
        except (OSError, ValueError, AttributeError) as error:
            raise DataError(f"--id2label {s.id2label!r} cannot be read ({error}); give a JSON file like {{\"0\": \"cat\"}}.") from error
    elif s.num_labels:
        id2label = {i: f"class_{i}" for i in range(s.num_labels)}
    if s.num_labels and id2label is not None and s.num_labels != len(id2label):
        raise DataError(f"--num-labels {s.num_labels} but the class list has {len(id2label)} classes.")
    return prepare_instances(splits, id2label, s.image_column, s.objects_column, s.validation_fraction,
                             s.max_train_samples, s.max_eval_samples, s.seed, s.train_split)


def swin_source(settings: InstanceSettings):
    """What --model names: a SwinConfig to start from scratch ('builtin', a preset) or a checkpoint path."""
    if settings.model == "builtin":
        return SwinConfig(**BUILTIN_MODEL, image_size=settings.image_size, drop_path_rate=settings.drop_path)
    if settings.model in PRESETS:
        return SwinConfig.from_preset(settings.model, image_size=settings.image_size, drop_path_rate=settings.drop_path)
    check_model_source(settings.model, "--model", extra_presets=("builtin",))
    return settings.model


def build_model(settings: InstanceSettings, id2label: dict[int, str]):
    """Mask2Former with `id2label`'s classes on the backbone --model names, sized by the head settings."""
    head = head_settings(settings.hidden_size, settings.num_queries, settings.encoder_layers, settings.decoder_layers,
                         settings.train_num_points)
    try:
        return mask2former_from_encoder(swin_source(settings), id2label, **head)
    except (TypeError, ValueError, OSError) as error:
        raise ModelError(f"--model {settings.model!r}: {' '.join(str(error).split())[:400]}") from error


def summary_line(summary: dict) -> str:
    """The result line printed at the end of a run."""
    if summary.get("mask_map") is None:
        return f"no evaluation ran {run_lines(summary)}"
    return (f"validation mask mAP {summary['mask_map']:.4f}, mask mAP50 {summary['mask_map50']:.4f}, mask mAP75 "
            f"{summary['mask_map75']:.4f}, box mAP {summary['box_map']:.4f} {run_lines(summary)}")


class InstanceTask(Task):
    """COCO mask mAP picks the best model; the folder loads with pipeline("image-segmentation")."""

    name, score, card_task = "segment", "val_mask_map", "instance-segmentation"
    fixed = RUN_FIXED
    not_recorded = NOT_RECORDED
    curves = {"val_mask_map": "mask mAP", "val_mask_map50": "mask mAP50", "val_box_map": "box mAP"}
    curves_title = "Validation mask and box mAP"
    builtin_threads = 0  # the built-in run keeps torch's threads (as detect.py's)

    @classmethod
    def resolve(cls, settings: InstanceSettings) -> InstanceSettings:
        if settings.streaming:
            raise UsageError("segment.py --task instance reads map-style sets (the data checks read every mask first); "
                             "--streaming is for the semantic task, finetune.py and pretrain_simmim.py.")
        settings.scale_range = tuple(settings.scale_range)
        return settings

    def builtin(self) -> bool:
        return self.settings.dataset == BUILTIN and self.settings.model == "builtin"

    def default_run(self) -> bool:
        s = self.settings
        return self.builtin() and not (s.max_steps or s.max_train_samples or s.max_eval_samples or s.max_minutes)

    def check(self, fabric) -> None:
        if strategy_name(fabric).startswith("fsdp"):
            raise UsageError("segment.py --task instance trains on one device or with DDP (--strategy ddp); sharded "
                             "training (--strategy fsdp) is for the semantic task, finetune.py and pretrain_simmim.py.")
        if self.settings.model != "builtin":
            check_model_source(self.settings.model, "--model", extra_presets=("builtin", *PRESETS))

    def load_data(self, fabric) -> TaskData:
        s = self.settings
        data = load_data(s)
        self.data = data
        skipped = SkipCounter()
        columns = dict(image_column=data.image_column, objects_column=data.objects_column)
        train = InstanceDataset(data.train, s.image_size, **columns, skipped=skipped)
        self.eval_set = InstanceDataset(data.validation, s.image_size, **columns, skipped=skipped)
        return TaskData(train, self.eval_set, collate, class_names=list(data.id2label.values()), source=s.dataset,
                        notes=data.notes, move_to_device=False)

    def build_model(self, data: TaskData):
        model = build_model(self.settings, self.data.id2label)
        data.notes.insert(0, "instance segmentation: Mask2Former (transformers) on a swin_hf backbone")
        return model

    def depths(self, model) -> list[int]:
        return list(model.config.backbone_config.depths)

    def start(self, run: Run) -> None:
        s = self.settings
        self.augment = MaskAugment(s.hflip, tuple(s.scale_range), s.translate, s.jitter)
        self.processor = instance_processor(s.image_size)

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        """Mask2Former's own loss (Hungarian matching; cross-entropy of the classes, sigmoid cross-entropy and
        dice of the masks at `train_num_points` sampled points; auxiliary losses of every decoder layer) on the
        augmented batch. With several processes every parameter takes part (their sum, times zero, is added)."""
        device = run.fabric.device
        images = batch["pixel_values"].to(device).float() / 255.0
        images, masks, labels = self.augment(images, [m.to(device) for m in batch["masks"]],
                                             [c.to(device) for c in batch["labels"]])
        pixels = normalise(images, self.processor.image_mean, self.processor.image_std)
        loss = run.model(pixel_values=pixels, mask_labels=[m.float() for m in masks], class_labels=labels).loss
        if run.fabric.world_size > 1:
            loss = loss + 0.0 * sum(p.sum() for p in run.model.parameters() if p.requires_grad)
        return loss

    def evaluate(self, run: Run) -> Evaluation:
        """COCO mask and box mAP over the whole validation split, gathered from every process."""
        result = evaluate_instances(run.model, self.processor, run.eval_loader, self.eval_set,
                                    gather=lambda rows: gather_objects(run.fabric, rows), skipped=run.skipped)
        metrics = {f"val_{k}": result[k] for k in KEYS}
        words = (f"val mask mAP {result['mask_map']:.4f}, mask mAP50 {result['mask_map50']:.4f}, "
                 f"box mAP {result['box_map']:.4f}")
        return Evaluation(metrics, result["mask_map"], words)

    def save_model(self, run: Run, folder: str, weights: dict) -> None:
        run.raw_model.save_pretrained(folder, state_dict=weights)
        self.processor.save_pretrained(folder)

    def summary(self, run: Run, best: dict) -> dict:
        last = run.last_eval or {}
        return {
            "task": "instance",
            **{key: best.get(f"val_{key}") for key in KEYS},
            "final_mask_map50": last.get("val_mask_map50"),
            "num_classes": len(self.data.id2label),
            "data_checks": {name: vars(stats) for name, stats in self.data.stats.items()},
            "image_size": self.settings.image_size,
        }

    def card_metrics(self, summary: dict) -> dict:
        return {k: summary[k] for k in ("mask_map", "mask_map50", "mask_map75", "box_map", "best_epoch")
                if summary.get(k) is not None}

    def pictures(self, run: Run) -> None:
        """pictures/: the first --num-pictures validation images with their true and the best model's masks
        (process 0)."""
        s = self.settings
        if run.progress["best"] and s.num_pictures and run.fabric.is_global_zero:
            from transformers import Mask2FormerForUniversalSegmentation

            best_model = Mask2FormerForUniversalSegmentation.from_pretrained(s.output_dir).to(run.fabric.device)
            save_instance_pictures(best_model, self.processor, self.eval_set, os.path.join(s.output_dir, "pictures"),
                                   self.data.id2label, s.num_pictures, s.picture_threshold)

    def report(self, summary: dict) -> list[str]:
        lines = [summary_line(summary)]
        if self.default_run() and summary.get("mask_map50") is not None:
            met = summary["mask_map50"] >= TARGET_MAP50 and summary.get("train_time_s", 0) < 60 * TARGET_MINUTES
            lines.append(f"target mask mAP50 >= {TARGET_MAP50} in < {TARGET_MINUTES:g} min: {'met' if met else 'NOT met'}")
        return lines


DESCRIPTION = ("Instance segmentation (segment.py --task instance) with transformers' Mask2Former on a Swin backbone, on "
               "any set of image + objects{segmentation (COCO polygons or RLE), category} or a COCO-JSON folder. Launch "
               "with `python`, `lightning run` (or `fabric run`), `torchrun` or `accelerate launch`. With no other "
               "arguments, a small Swin trains on the built-in pasted-objects set (offline).")


__all__ = [
    "BUILTIN_MODEL",
    "DESCRIPTION",
    "InstanceSettings",
    "InstanceTask",
    "NOT_RECORDED",
    "RUN_FIXED",
    "TASKS",
    "build_model",
    "load_data",
    "summary_line",
    "swin_source",
]
