"""Semantic segmentation recipe (recipes/segment.py): UperNet + a swin_hf backbone on a `datasets` set, as a
task on the shared training loop (swin_hf.training.loop).

Launch exactly like recipes/finetune.py (`python`, `lightning run` or `fabric run`, `torchrun`, `accelerate launch`); the
launcher handling, settings, dataset loading, AdamW groups (layer-wise decay over the backbone's blocks),
cosine schedule, gradient accumulation, EMA, output folder, checkpoints (exact resume, mid-epoch with
--checkpoint-every), the best model by validation mIoU, the non-finite stop and the reports are the
shared loop's. What is segmentation-specific lives beside this module: swin_hf.segmentation.data (the
built-in set, joint augmentation) and swin_hf.segmentation.evaluate (mIoU, overlays).

Input: any `datasets` set with an image column and a label-map column (`image` + `annotation`, as
ADE20K-style Hub sets have), streamed with --streaming (swin_hf.training.streaming). Output folder: the
UperNet model with the best validation mIoU and an image processor that ``pipeline("image-segmentation")``
loads (after ``import swin_hf``), a model card (README.md), settings.json, metrics.json (mIoU, mean
accuracy, pixel accuracy, per class, the history), training_curves.png, logs/, overlays/ (image | truth |
prediction of the best model, upscaled, with a legend naming the classes), checkpoints/.

Default (no arguments, offline): the built-in texture-collage set (real photos from scikit-learn and
matplotlib, see swin_hf.segmentation.data; 320 train / 64 validation images), a small Swin (C=32,
depths 2-2-2-2, 2.95M parameters with the UperNet head) from scratch at 64 px, 8 epochs (160 steps of 16),
one CPU thread (README.md states the mIoU and time it reaches).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..model_source import check_model_source
from ..training.data import DataError, choose_splits
from ..training.errors import ModelError
from ..training.settings import (
    RecipeSettings,
    dataset_option,
    below_one,
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
from .data import IGNORE_INDEX, JointTransform, SegmentationDataset, SegmentationRows, collate, texture_collage_dataset
from .evaluate import evaluate_segmentation, overlay_examples, save_overlays

logger = logging.getLogger(__name__)

BUILTIN = "texture-collage"
# metrics.json's result keys and their words (the curves plot their "val_" rows)
SCORES = {"mean_iou": "mIoU", "overall_accuracy": "pixel accuracy", "mean_accuracy": "mean class accuracy"}
scale_range = pair(float, "'lo,hi' with 0 < lo <= hi", lambda lo, hi: 0 < lo <= hi)


def segmentation_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """UperNet's loss: cross-entropy of the decode head + auxiliary_loss_weight x that of the auxiliary
    head, ignoring label IGNORE_INDEX (`config.loss_ignore_index`)."""
    return model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss


def image_processor_for(transform: JointTransform, reduce_labels: bool = False):
    """A transformers image processor matching the evaluation transform (resize to S x S, same mean/std)
    with `post_process_semantic_segmentation`, so that pipeline("image-segmentation") works on the saved
    folder. Segformer's processor is used: its preprocessing is exactly resize + rescale + normalise."""
    try:
        from transformers import SegformerImageProcessor

        processor_class = SegformerImageProcessor
        import torchvision  # noqa: F401  (the default backend needs it)
    except ImportError:
        from transformers.models.segformer.image_processing_pil_segformer import SegformerImageProcessorPil

        processor_class = SegformerImageProcessorPil
    return processor_class(
        size={"height": transform.size, "width": transform.size},
        image_mean=transform.mean.view(-1).tolist(),
        image_std=transform.std.view(-1).tolist(),
        do_reduce_labels=reduce_labels,
    )


def save_for_pipeline(model, transform: JointTransform, directory: str, reduce_labels: bool = False,
                      weights: dict | None = None) -> None:
    """Save model + image processor so ``pipeline("image-segmentation", model=directory)`` loads it
    (after ``import swin_hf``, which teaches transformers the "swin_hf" backbone type). `weights`: the
    whole state dict to write (gathered when the model is sharded), else the model's own."""
    model.save_pretrained(directory, state_dict=weights)
    image_processor_for(transform, reduce_labels).save_pretrained(directory)
    logger.info("Saved a pipeline-ready segmentation model to %s", directory)


def pixel_counts(split, label_column: str = "annotation", num_labels: int | None = None) -> np.ndarray:
    """How many pixels of each class a split holds (for logging class balance)."""
    counts = np.zeros(num_labels or 256, dtype=np.int64)
    for row in split:
        values = np.asarray(row[label_column]).reshape(-1)
        counts += np.bincount(values[values < len(counts)], minlength=len(counts))[: len(counts)]
    return counts


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass
class SegmentSettings(RecipeSettings):
    """segment.py's settings: the shared ones, with segmentation's data, model and defaults."""

    task: str = option("semantic", "semantic (UperNet, per-pixel classes) or instance (Mask2Former, a mask per object; "
                       "see --task instance --help)", one_of("semantic", "instance"))
    dataset: str = dataset_option(BUILTIN)
    image_column: str = option("image", "image column", text, group="data")
    label_column: str = option("annotation", "label-map column (an image of class indices)", text, group="data")
    num_labels: int | None = option(None, "number of classes (built-in: 3; needed for other sets unless --id2label)",
                                    positive_int, group="data")
    id2label: str | None = option(None, "JSON file mapping class index -> name", text, group="data")
    reduce_labels: bool = option(False, "label 0 is 'other' (ADE20K): ignore it, shift the rest down", group="data")
    model: str = option("builtin", "'builtin' (small Swin from scratch), a swin_hf preset (from scratch), or a swin_hf "
                        "checkpoint whose encoder is loaded (classification, SimMIM, backbone)", text, group="model")
    image_size: int = option(64, "training crop / evaluation size (ADE20K: 512)", positive_int, group="model")
    hidden_size: int = option(64, "UperNet channels (paper: 512)", positive_int, group="model")
    drop_path: float = option(0.1, "stochastic depth of the backbone", below_one, group="model")
    scale_range: tuple = option((0.5, 2.0), "random rescale range of training images, 'lo,hi' (times --image-size on "
                                "the short side)", scale_range, group="augmentation")
    epochs: int = option(8, "training epochs", positive_int, group="optimisation")
    batch_size: int = option(16, "images per process per micro-batch", positive_int, group="optimisation")
    lr: float = option(1e-3, "peak learning rate of the last layers (AdamW; paper, pre-trained: 6e-5)", positive_float,
                       group="optimisation")
    min_lr_ratio: float = option(0.0, "cosine floor, as a fraction of --lr", probability, group="optimisation")
    weight_decay: float = option(0.01, "AdamW weight decay (never on norms, biases, position tables)", nonnegative_float,
                                 group="optimisation")
    layer_decay: float = option(1.0, "layer-wise lr decay over backbone blocks (1 = off)", up_to_one, group="optimisation")
    eval_every_epochs: int = option(2, "evaluate every N epochs (and at the end)", positive_int)
    num_overlays: int = option(8, "validation images drawn as overlays (image | truth | prediction of the best model)",
                               nonnegative_int)
    output_dir: str = option("outputs/swin-upernet", "the run's folder: model, card, settings.json, metrics, plots, "
                             "overlays, logs, checkpoints", text)


# --------------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------------


def load_data(settings):
    """(train split, validation split, id2label) for `settings` (a SegmentSettings, or anything with its
    data fields). With --streaming the training split is an IterableDataset read as it is used (images left
    undecoded) and validation the first --max-eval-samples (default 1000) rows of its split."""
    from ..training import data
    from ..training.streaming import bounded, stream_splits, undecoded

    streaming = settings.streaming
    if settings.dataset == BUILTIN:
        splits, id2label = texture_collage_dataset(seed=settings.seed)
        splits = stream_splits(splits) if streaming else splits
    else:
        splits = data.load_splits(dataset=settings.dataset, dataset_config=settings.dataset_config, streaming=streaming)
        if settings.id2label:
            with open(settings.id2label) as f:
                id2label = {int(k): v for k, v in json.load(f).items()}
        elif settings.num_labels:
            id2label = {i: f"class_{i}" for i in range(settings.num_labels)}
        else:
            raise DataError("Give --num-labels or --id2label for a dataset other than the built-in one.")
    if settings.num_labels and settings.num_labels != len(id2label):
        raise DataError(f"--num-labels {settings.num_labels} but id2label has {len(id2label)} classes.")
    train_name, validation_name = choose_splits(splits, settings.train_split)
    train = splits[train_name]
    validation = splits[validation_name] if validation_name else None
    columns = [settings.image_column, settings.label_column]
    if streaming:
        if validation is None:
            raise DataError(f"--streaming needs a validation split (found {sorted(splits)}); a stream cannot be split in two.")
        train = undecoded(train.select_columns(columns), columns)
        train = train.take(settings.max_train_samples) if settings.max_train_samples else train
        return train, bounded(validation.select_columns(columns), settings.max_eval_samples or 1000), id2label
    if validation is None:
        parts = train.train_test_split(test_size=settings.validation_fraction, seed=settings.seed)
        train, validation = parts["train"], parts["test"]
        logger.info("no validation split: held out %d training examples", len(validation))
    if settings.max_train_samples:
        train = train.select(range(min(settings.max_train_samples, len(train))))
    if settings.max_eval_samples:
        validation = validation.select(range(min(settings.max_eval_samples, len(validation))))
    return train, validation, id2label


def build_model(settings, id2label: dict[int, str]):
    """UperNet with `id2label`'s classes on the backbone --model names (settings: model, image_size,
    drop_path, hidden_size)."""
    from .. import PRESETS, SwinConfig
    from . import upernet_from_encoder

    head = dict(hidden_size=settings.hidden_size, auxiliary_channels=max(16, settings.hidden_size // 2))
    if settings.model == "builtin":
        source = SwinConfig(**BUILTIN_MODEL, image_size=settings.image_size, drop_path_rate=settings.drop_path)
    elif settings.model in PRESETS:
        source = SwinConfig.from_preset(settings.model, image_size=settings.image_size, drop_path_rate=settings.drop_path)
    else:
        check_model_source(settings.model, "--model", extra_presets=("builtin",))
        source = settings.model  # a checkpoint: its encoder weights are loaded
    try:
        model = upernet_from_encoder(source, num_labels=len(id2label), id2label=id2label, **head)
    except (TypeError, ValueError, OSError) as error:
        raise ModelError(f"--model {settings.model!r}: {' '.join(str(error).split())[:400]}") from error
    model.config.loss_ignore_index = IGNORE_INDEX
    return model


# --------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------


class SegmentTask(Task):
    """Validation mIoU picks the best model; the folder loads with pipeline("image-segmentation")."""

    name, score, card_task = "segment", "val_mean_iou", "image-segmentation"
    fixed = ("model", "hidden_size", "class_names")
    not_recorded = ("num_overlays",)
    curves = {f"val_{key}": words for key, words in SCORES.items()}
    curves_title = "Validation"

    @classmethod
    def resolve(cls, settings: SegmentSettings) -> SegmentSettings:
        settings.scale_range = tuple(settings.scale_range)
        return settings

    def builtin(self) -> bool:
        return self.settings.dataset == BUILTIN and self.settings.model == "builtin"

    def check(self, fabric) -> None:
        if self.settings.model != "builtin":  # a missing folder or an unreachable Hub id fails before the data is made
            from .. import PRESETS

            check_model_source(self.settings.model, "--model", extra_presets=("builtin", *PRESETS))

    def load_data(self, fabric) -> TaskData:
        s = self.settings
        train, validation, id2label = load_data(s)
        self.id2label, self.validation_split = id2label, validation
        # training augmentation draws from the global RNG, which checkpoints hold: a resumed run sees the same crops
        train_transform = JointTransform(s.image_size, train=True, scale_range=s.scale_range,
                                         reduce_labels=s.reduce_labels)
        self.eval_transform = JointTransform(s.image_size, train=False, reduce_labels=s.reduce_labels)
        columns = dict(image_column=s.image_column, label_column=s.label_column)
        validation_set = SegmentationDataset(validation, self.eval_transform, with_index=True, **columns)
        class_names = list(id2label.values())
        source = s.dataset
        if s.streaming:
            rows = SegmentationRows(train_transform, **columns)
            return TaskData(train, validation_set, collate, rows, class_names, source)
        return TaskData(SegmentationDataset(train, train_transform, with_index=True, **columns), validation_set, collate,
                        None, class_names, source)

    def build_model(self, data: TaskData):
        return build_model(self.settings, self.id2label)

    def depths(self, model) -> list[int]:
        return list(model.config.backbone_config.depths)

    def loss(self, run, batch: dict) -> torch.Tensor:
        return segmentation_loss(run.model, batch)

    def evaluate(self, run) -> Evaluation:
        """mIoU, pixel accuracy and mean class accuracy over the validation split, predictions gathered from
        every process (the padding's repeated images counted once)."""
        result = evaluate_segmentation(run.model, run.eval_loader, len(self.id2label), gather=run.fabric.all_gather)
        metrics = {f"val_{key}": float(result[key]) for key in SCORES}
        words = (f"val mIoU {result['mean_iou']:.4f}, pixel accuracy {result['overall_accuracy']:.4f}, "
                 f"mean accuracy {result['mean_accuracy']:.4f}")
        per_class = [float(v) for v in result["per_category_iou"]]
        return Evaluation(metrics, metrics["val_mean_iou"], words, {"per_category_iou": per_class})

    def save_model(self, run, folder: str, weights: dict) -> None:
        save_for_pipeline(run.raw_model, self.eval_transform, folder, self.settings.reduce_labels, weights)

    def summary(self, run, best: dict) -> dict:
        last = run.last_eval or {}
        return {
            **{key: best.get(f"val_{key}") for key in SCORES},
            "per_category_iou": dict(zip(self.id2label.values(), best.get("per_category_iou") or [])),
            "final_mean_iou": last.get("val_mean_iou"),
            "image_size": self.settings.image_size,
        }

    def card_metrics(self, summary: dict) -> dict:
        return {key: summary[key] for key in (*SCORES, "best_epoch") if summary.get(key) is not None}

    def pictures(self, run) -> None:
        """overlays/: the first --num-overlays validation images with their truth and the prediction of the
        best model (the folder saved in --output-dir, loaded by process 0 alone: no other process takes part)."""
        out, count = run.settings.output_dir, self.settings.num_overlays
        if not run.fabric.is_global_zero or not count or not os.path.exists(os.path.join(out, "config.json")):
            return
        from transformers import UperNetForSemanticSegmentation

        best = UperNetForSemanticSegmentation.from_pretrained(out).to(run.fabric.device)
        columns = dict(image_column=self.settings.image_column, label_column=self.settings.label_column)
        examples = overlay_examples(best, self.validation_split, self.eval_transform, count, **columns)
        save_overlays(examples, os.path.join(out, "overlays"), list(self.id2label.values()))
        del best

    def report(self, summary: dict) -> list[str]:
        from ..training.loop import run_lines

        if summary.get("mean_iou") is None:
            return [f"no evaluation ran {run_lines(summary)}"]
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in summary["per_category_iou"].items())
        line = (f"validation mIoU {summary['mean_iou']:.4f}, pixel accuracy {summary['overall_accuracy']:.4f} "
                f"({per_class}; best at step {summary.get('best_step')}) {run_lines(summary)}")
        return [line]


DESCRIPTION = ("Semantic segmentation with UperNet on a Swin backbone (any `datasets` set with image + label-map columns). "
               "Launch with `python`, `lightning run` (or `fabric run`), `torchrun` or `accelerate launch`. With no "
               "arguments, a small Swin trains on the built-in texture-collage set (offline).")


def chosen_task(argv: list[str] | None) -> str | None:
    """The --task of a command line (else the `task` of its --config file; None: not given). Read before the
    settings, since the task picks them (instance segmentation has its own: segmentation.instance_train)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--task")
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    if known.task is None and known.config and os.path.isfile(known.config):
        try:
            with open(known.config, encoding="utf-8") as f:
                if known.config.endswith((".yaml", ".yml")):
                    import yaml

                    values = yaml.safe_load(f)
                else:
                    values = json.load(f)
            return values.get("task") if isinstance(values, dict) else None
        except Exception:  # (a bad file is named by the settings parser)
            return None
    return known.task


def main(argv: list[str] | None = None) -> int:
    from ..training.cli import launch

    if chosen_task(argv) == "instance":
        from .instance_train import DESCRIPTION as INSTANCE_DESCRIPTION
        from .instance_train import InstanceSettings, InstanceTask

        return launch(InstanceTask, InstanceSettings, argv, "segment.py", INSTANCE_DESCRIPTION)
    return launch(SegmentTask, SegmentSettings, argv, "segment.py", DESCRIPTION)


__all__ = [
    "BUILTIN",
    "BUILTIN_MODEL",
    "SCORES",
    "SegmentSettings",
    "SegmentTask",
    "build_model",
    "chosen_task",
    "image_processor_for",
    "load_data",
    "main",
    "pixel_counts",
    "save_for_pipeline",
    "segmentation_loss",
]
