"""Image classification (recipes/finetune.py): a Swin classifier fine-tuned (or trained from scratch) on
any `datasets` splits or image folders, as a task on the shared loop (swin_hf.training.loop).

Options left at `auto` take their value from a profile: `digits` (the built-in default: a tiny Swin from
scratch on scikit-learn's digits) or `finetune` (a pretrained Swin on your data).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import torch

from .. import PRESETS, SwinConfig, SwinForImageClassification, SwinImageProcessor
from ..metrics import load_accuracy
from ..model_source import check_model_source
from . import report
from .augment import AugmentConfig, BatchAugment, soft_cross_entropy
from .checkpoint import gather_objects
from .data import (
    DIGITS,
    ClassificationRows,
    ImageClassificationDataset,
    SkipCounter,
    collate_skipping,
    load_splits,
    prepare,
    prepare_stream,
)
from .cli import launch
from .errors import ModelError
from .loop import Run, run_lines
from .settings import (
    AUTO,
    RecipeSettings,
    area_range,
    below_one,
    boolean,
    checked,
    dataset_option,
    fraction,
    names,
    nonnegative_float,
    nonnegative_int,
    one_of,
    option,
    or_auto,
    positive_float,
    positive_int,
    probability,
    text,
    up_to_one,
)
from .task import Evaluation, Task, TaskData

# Small models defined by the recipes (the paper's models are in swin_hf.PRESETS).
RECIPE_PRESETS: dict[str, dict] = {
    # 8x8 digits upscaled to 16x16: patch 2 -> 8x8 tokens, two stages of 4x4 windows, ~136k parameters
    "swin-digits": dict(
        image_size=16, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, mlp_ratio=4.0
    ),
}

PROFILES: dict[str, dict] = {
    "digits": dict(
        model="swin-digits",
        cpu_threads=1,  # a 136k-parameter model gains nothing from more threads
        precision="32-true",  # autocast's casts outweigh the tiny products (BENCHMARKS.md)
        epochs=30,
        batch_size=32,
        lr=3e-3,
        weight_decay=0.05,
        layer_decay=1.0,
        warmup_ratio=0.05,
        drop_path=0.1,
        label_smoothing=0.1,
        ema_decay=0.0,
        crop_pct=1.0,
        random_resized_crop=True,
        crop_scale=(0.75, 1.0),
        crop_ratio=(0.9, 1.1),
        hflip=0.0,
        randaugment_n=0,
        randaugment_m=9,
        random_erasing=0.0,
        mixup=0.0,
        cutmix=0.0,
    ),
    "finetune": dict(
        model="microsoft/swin-tiny-patch4-window7-224",
        cpu_threads=0,
        precision=AUTO,
        epochs=10,
        batch_size=32,
        lr=5e-5,
        weight_decay=0.05,
        layer_decay=0.9,
        warmup_ratio=0.1,
        drop_path=0.1,
        label_smoothing=0.1,
        ema_decay=0.0,
        crop_pct=None,
        random_resized_crop=True,
        crop_scale=(0.08, 1.0),
        crop_ratio=(3 / 4, 4 / 3),
        hflip=0.5,
        randaugment_n=2,
        randaugment_m=9,
        random_erasing=0.25,
        mixup=0.4,
        cutmix=0.4,
    ),
}
# settings a resumed run can never change: the checkpoint's weights are for this architecture and these classes
RUN_FIXED = ("model", "image_size", "window_size", "class_names")
TARGET_TOP1, TARGET_MINUTES = 0.95, 5.0


@dataclass
class ClassificationSettings(RecipeSettings):
    """finetune.py's settings: the shared ones, classification's data, model and augmentation."""

    dataset: str = dataset_option(DIGITS)
    train_dir: str | None = option(None, "imagefolder of training images (class sub-folders)", text, group="data")
    validation_dir: str | None = option(None, "imagefolder of validation images", text, group="data")
    image_column: str | None = option(None, "image column (default: the first Image feature)", text, group="data")
    label_column: str | None = option(None, "label column (default: the first ClassLabel feature)", text, group="data")
    validation_fraction: float = option(0.15, "held out for validation (stratified, seeded) when the set has no "
                                        "validation split", fraction, group="data")
    label_names: list[str] | None = option(None, "NAME0,NAME1,...: the classes of a label column that is not a ClassLabel "
                                           "(with --streaming)", names, group="data")
    cache_images: bool = option(True, "keep decoded, resized small images in memory between epochs (never with --streaming)",
                                group="data")
    profile: str = option(AUTO, "where 'auto' options take their values: digits, finetune (auto: digits for the built-in "
                          "data, else finetune)", one_of(AUTO, *PROFILES), group="model")
    model: str = option(AUTO, "a preset (swin-digits or swin_hf.PRESETS; trains from scratch) or a path / Hub id to "
                        "fine-tune", text, group="model")
    image_size: int | None = option(None, "train at this resolution (position tables resized for pretrained models)",
                                    positive_int, group="model")
    window_size: int | None = option(None, "attention window override (with --image-size)", positive_int, group="model")
    crop_pct: float | str | None = option(AUTO, "evaluation centre-crop fraction (None: 0.875 below 384 px)", or_auto(up_to_one),
                                          group="model")
    drop_path: float | str = option(AUTO, "stochastic depth rate", or_auto(below_one), group="model")
    epochs: int | str = option(AUTO, "training epochs", or_auto(positive_int), group="optimisation")
    batch_size: int | str = option(AUTO, "images per process per micro-batch", or_auto(positive_int), group="optimisation")
    lr: float | str = option(AUTO, "peak learning rate of the last layers (AdamW)", or_auto(positive_float), group="optimisation")
    weight_decay: float | str = option(AUTO, "AdamW weight decay (never on norms, biases, position tables)",
                                       or_auto(nonnegative_float), group="optimisation")
    layer_decay: float | str = option(AUTO, "layer-wise lr decay per block (1 = off)", or_auto(up_to_one), group="optimisation")
    warmup_ratio: float | str = option(AUTO, "warmup as a fraction of all steps", or_auto(below_one), group="optimisation")
    ema_decay: float | str = option(AUTO, "EMA of the weights, evaluated and saved (0 = off)", or_auto(below_one),
                                    group="optimisation")
    label_smoothing: float | str = option(AUTO, "label smoothing", or_auto(below_one), group="augmentation")
    random_resized_crop: bool | str = option(AUTO, "random resized crop on/off", or_auto(boolean), group="augmentation")
    crop_scale: tuple | str = option(AUTO, "random resized crop area range 'lo,hi'", or_auto(area_range), group="augmentation")
    hflip: float | str = option(AUTO, "horizontal flip probability", or_auto(probability), group="augmentation")
    randaugment_n: int | str = option(AUTO, "RandAugment ops per image (0 = off)", or_auto(nonnegative_int), group="augmentation")
    randaugment_m: int | str = option(AUTO, "RandAugment magnitude (0-30)", or_auto(checked(int, lambda v: 0 <= v <= 30,
                                      "a whole number from 0 to 30")), group="augmentation")
    random_erasing: float | str = option(AUTO, "random erasing probability", or_auto(probability), group="augmentation")
    mixup: float | str = option(AUTO, "probability a batch gets mixup", or_auto(probability), group="augmentation")
    cutmix: float | str = option(AUTO, "probability a batch gets cutmix", or_auto(probability), group="augmentation")
    output_dir: str = option("outputs/swin-finetuned", "the run's folder: model, card, settings.json, metrics, plots, logs, "
                             "checkpoints", text)

    def profile_name(self) -> str:
        uses_digits = not self.train_dir and self.dataset in (None, "", DIGITS)
        return self.profile if self.profile != AUTO else ("digits" if uses_digits else "finetune")

    def augment(self) -> AugmentConfig:
        return AugmentConfig(
            random_resized_crop=self.random_resized_crop, crop_scale=tuple(self.crop_scale),
            crop_ratio=tuple(PROFILES[self.profile_name()]["crop_ratio"]), hflip=self.hflip,
            randaugment_n=self.randaugment_n, randaugment_m=self.randaugment_m, random_erasing=self.random_erasing,
            mixup=self.mixup, cutmix=self.cutmix, label_smoothing=self.label_smoothing,
        )


def profiles_help() -> str:
    lines = ["profiles (values used for options left at 'auto'), as YAML:"]
    for name, values in PROFILES.items():
        lines.append(f"  {name}:")
        for key, value in values.items():
            shown = json.dumps([round(v, 4) for v in value] if isinstance(value, tuple) else value)
            lines.append(f"    {key}: {shown.strip(chr(34))}")
    lines.append("  # 'auto' profile: digits when --dataset is the built-in sklearn-digits, else finetune")
    return "\n".join(lines)


def build_model(settings: ClassificationSettings, class_names: list[str]):
    """(model, image processor, whether it is trained from scratch)."""
    id2label = {i: name for i, name in enumerate(class_names)}
    label2id = {name: i for i, name in id2label.items()}
    labels = dict(num_labels=len(class_names), id2label=id2label, label2id=label2id)
    overrides = {k: v for k, v in (("image_size", settings.image_size), ("window_size", settings.window_size)) if v}
    if settings.model in PRESETS or settings.model in RECIPE_PRESETS:
        if settings.model in PRESETS:
            swin_config = SwinConfig.from_preset(settings.model, drop_path_rate=settings.drop_path, **labels, **overrides)
        else:
            values = {**RECIPE_PRESETS[settings.model], **overrides}
            swin_config = SwinConfig(drop_path_rate=settings.drop_path, **values, **labels)
        model = SwinForImageClassification(swin_config)
        processor = SwinImageProcessor.for_image_size(swin_config.image_size, crop_pct=settings.crop_pct)
        return model, processor, True

    # id2label alone sets num_labels (passing both makes transformers compare against the old head)
    try:
        model = SwinForImageClassification.from_pretrained(
            settings.model, ignore_mismatched_sizes=True, drop_path_rate=settings.drop_path, id2label=id2label,
            label2id=label2id, **overrides,
        )
    except (TypeError, ValueError, KeyError, OSError) as error:
        raise ModelError(
            f"--model {settings.model!r} cannot be loaded ({type(error).__name__}: {' '.join(str(error).split())[:300]}). "
            "If it is a folder, check its config.json (e.g. depths must be a list of whole numbers, drop_path_rate a "
            "number) or write it again with save_pretrained."
        ) from error
    size = model.config.image_size
    try:
        from transformers import AutoImageProcessor

        loaded = AutoImageProcessor.from_pretrained(settings.model)
        mean, std = loaded.image_mean, loaded.image_std
    except Exception:  # no processor saved with the checkpoint: ImageNet statistics
        mean = std = None
    extra = {"image_mean": mean, "image_std": std} if mean is not None else {}
    processor = SwinImageProcessor.for_image_size(size, crop_pct=settings.crop_pct, **extra)
    return model, processor, False


class PreprocessCache:
    """Per-image preprocessing (decode, RGB, resize[, normalise]) memoised for small source images.

    The random part of training augmentation runs later on batches, so this part is deterministic and
    can be reused every epoch. At most `max_bytes` of tensors are kept (per process / worker).
    """

    def __init__(self, processor, enabled: bool, max_bytes: int = 1 << 30):
        self.processor, self.enabled, self.max_bytes = processor, enabled, max_bytes
        self.store: dict = {}
        self.bytes = 0

    def __call__(self, image):
        key = None
        if self.enabled and image.size[0] * image.size[1] <= 4096:
            key = (image.size, image.tobytes())
            if key in self.store:
                return self.store[key].clone()
        pixels = torch.as_tensor(np.asarray(self.processor(image, return_tensors="np")["pixel_values"][0]))
        if key is not None and self.bytes + pixels.nbytes <= self.max_bytes:
            self.store[key] = pixels.clone()
            self.bytes += pixels.nbytes
        return pixels


def image_size_of(config) -> int:
    size = config.image_size
    return size if isinstance(size, int) else size[0]


class ClassificationTask(Task):
    """Top-1 accuracy picks the best model; the folder loads with pipeline("image-classification")."""

    name, score, card_task = "finetune", "val_top1", "image-classification"
    fixed = RUN_FIXED
    curves = None  # (report's default: accuracy)

    @classmethod
    def resolve(cls, settings: ClassificationSettings) -> ClassificationSettings:
        profile = PROFILES[settings.profile_name()]
        filled = {f.name: profile[f.name] for f in dataclasses.fields(settings)
                  if f.name in profile and getattr(settings, f.name) == AUTO and f.name not in ("cpu_threads", "precision")}
        settings = dataclasses.replace(settings, **filled, cache_images=settings.cache_images and not settings.streaming)
        settings.crop_scale = tuple(settings.crop_scale)
        return settings

    def builtin(self) -> bool:
        return self.settings.profile_name() == "digits"

    def default_run(self) -> bool:
        s = self.settings
        return (self.builtin() and s.dataset in (None, "", DIGITS) and not s.train_dir
                and not (s.max_steps or s.max_train_samples or s.max_eval_samples or s.max_minutes))

    def check(self, fabric) -> None:
        check_model_source(self.settings.model, "--model", extra_presets=RECIPE_PRESETS)

    def load_data(self, fabric) -> TaskData:
        s = self.settings
        splits = load_splits(s.dataset, s.train_dir, s.validation_dir, s.dataset_config, s.streaming)
        source = s.train_dir or s.dataset or DIGITS
        if s.streaming:
            data = prepare_stream(splits, s.image_column, s.label_column, s.label_names, s.max_train_samples,
                                  s.max_eval_samples or 1000, source, s.train_split)
        else:
            data = prepare(splits, s.image_column, s.label_column, s.validation_fraction, s.max_train_samples,
                           s.max_eval_samples, s.seed, source, s.train_split)
        self.prepared = data
        self.model, self.processor, self.from_scratch = build_model(s, data.class_names)
        self.image_size = image_size_of(self.model.config)

        train_processor = SwinImageProcessor.for_image_size(self.image_size, crop_pct=1.0, do_normalize=False)
        skipped = SkipCounter()
        columns = (data.image_column, data.label_column)
        validation = ImageClassificationDataset(data.validation, *columns, PreprocessCache(self.processor, s.cache_images), skipped)
        if s.streaming:
            rows = ClassificationRows(*columns, PreprocessCache(train_processor, False), len(data.class_names))
            return TaskData(data.train, validation, collate_skipping, rows, data.class_names, data.source, data.notes)
        train = ImageClassificationDataset(data.train, *columns, PreprocessCache(train_processor, s.cache_images), skipped)
        return TaskData(train, validation, collate_skipping, None, data.class_names, data.source, data.notes)

    def build_model(self, data: TaskData):
        return self.model  # (built with the data: the processor's statistics and the size decide the loaders)

    def start(self, run: Run) -> None:
        s = self.settings
        self.augment = BatchAugment(dataclasses.replace(s.augment(), image_size=self.image_size), self.processor.image_mean,
                                    self.processor.image_std, len(run.data.class_names)).to(run.fabric.device)
        self.accuracy = load_accuracy()

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        images, targets = self.augment(batch["pixel_values"], batch["labels"])
        return soft_cross_entropy(run.model(pixel_values=images).logits, targets)

    def evaluate(self, run: Run) -> Evaluation:
        """Top-1 (and top-5 with >= 5 classes) accuracy and loss over the whole validation split, gathered
        from all processes (padding duplicates removed by example index). Unreadable images are left out."""
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
            return Evaluation({"val_top1": 0.0, "val_loss": float("nan")}, 0.0, "no validation image was readable")
        _, refs, top1, top5, losses = map(list, zip(*rows))
        accuracy = self.accuracy
        metrics = {"val_top1": accuracy.compute(predictions=top1, references=refs)["accuracy"],
                   "val_loss": float(np.mean(losses))}
        text_ = f"val top-1 {metrics['val_top1']:.2%}"
        if num_classes >= 5:
            metrics["val_top5"] = accuracy.compute(predictions=top5, references=refs)["accuracy"]
            text_ += f", top-5 {metrics['val_top5']:.2%}"
        text_ += f", loss {metrics['val_loss']:.4f}"
        return Evaluation(metrics, metrics["val_top1"], text_, {"predictions": top1, "references": refs})

    def summary(self, run: Run, best: dict) -> dict:
        return {
            "best_val_top1": best.get("val_top1"),
            "best_val_top5": best.get("val_top5"),
            "best_val_loss": best.get("val_loss"),
            "final_val_top1": run.last_eval["val_top1"] if run.last_eval else None,
            "num_classes": len(run.data.class_names),
            "image_size": self.image_size,
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
            met = top1 >= TARGET_TOP1 and summary.get("train_time_s", 0) < 60 * TARGET_MINUTES
            lines.append(f"target >= {TARGET_TOP1:.0%} in < {TARGET_MINUTES:g} min: {'met' if met else 'NOT met'}")
        return lines


DESCRIPTION = ("Fine-tune (or train from scratch) a Swin Transformer image classifier on datasets splits. Launch with "
               "`python`, `lightning run` (or `fabric run`), `torchrun` or `accelerate launch`. Options at 'auto' come from "
               "the profile (listed at the end): with no arguments, a tiny Swin trains on the built-in digits.")


def main(argv: list[str] | None = None) -> int:
    return launch(ClassificationTask, ClassificationSettings, argv, "finetune.py", DESCRIPTION, profiles_help())


__all__ = [
    "PROFILES",
    "RECIPE_PRESETS",
    "ClassificationSettings",
    "ClassificationTask",
    "PreprocessCache",
    "build_model",
    "image_size_of",
    "main",
    "profiles_help",
]
