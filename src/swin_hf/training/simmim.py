"""SimMIM pre-training (recipes/pretrain_simmim.py): masked image modeling on unlabelled images, as a task on
the shared loop (swin_hf.training.loop).

The output folder holds a `SwinForMaskedImageModeling` checkpoint plus the image processor whose
normalisation it was trained with; `recipes/finetune.py --model <output-dir>` fine-tunes its encoder (the
decoder and mask token are dropped, a classifier is initialised).

Training: each image is decoded and resized to the model's size (in the loader's workers, deterministic);
on the device every batch gets a random resized crop (--crop-scale), a horizontal flip, the processor's
normalisation and fresh SimMIM masks (--mask-ratio of the --mask-patch-size blocks), all drawn from the
global RNG, which checkpoints hold: a resumed run continues with the same draws.

Validation: SimMIM has no labels to score, so the score is the masked-pixel L1 loss on images the model never
trains on. Without --streaming, --validation-fraction of the training split (seeded by --seed) is held out;
with --streaming, the first --max-eval-samples images of the stream (256 unless given) are the validation
set and the training stream skips them (`IterableDataset.skip`; the stream's shard order then stays fixed
from pass to pass, and with several processes that read whole shards `datasets` divides the skipped count
among them, so validation and training may then share a few images). Validation images are resized whole
(no crop or flip) and each has one mask, drawn once from a generator seeded by --seed: every evaluation
measures the same task, so evaluations compare. val_loss is the mean over the validation images of each
one's masked-pixel L1 loss; the best model (the folder in --output-dir) is the one with the lowest.

Default (no arguments, offline): the images of scikit-learn's digits training split without their labels
(the split finetune.py trains on), the recipe's `swin-digits` model at 16x16 pixels, 4x4-pixel mask blocks
(2x2 patches) at SimMIM's 0.6 ratio - so that `finetune.py --model outputs/swin-simmim` continues on the
same data: 10 epochs in batches of 64 (README.md states the loss it reaches and the time it takes).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from .. import PRESETS, SimMIMMaskGenerator, SwinConfig, SwinForMaskedImageModeling, SwinImageProcessor
from ..model_source import check_model_source
from .cli import launch
from .checkpoint import gather_objects
from .classification import RECIPE_PRESETS, PreprocessCache, image_size_of
from .data import (
    DIGITS,
    DataError,
    SkipCounter,
    choose_splits,
    decode_or_skip,
    file_name,
    load_splits,
)
from .errors import ModelError
from .loop import Run, run_lines
from .settings import (
    RecipeSettings,
    area_range,
    below_one,
    dataset_option,
    fraction,
    nonnegative_float,
    option,
    positive_float,
    positive_int,
    text,
    up_to_one,
)
from .streaming import bounded, undecoded
from .task import Evaluation, Task, TaskData

STREAM_VALIDATION = 256  # validation images taken from the head of a stream unless --max-eval-samples says otherwise
PICTURE_ROWS = 6  # images in reconstructions.png


@dataclass
class SimMIMSettings(RecipeSettings):
    """pretrain_simmim.py's settings: the shared ones, its data, model and masking."""

    dataset: str = dataset_option(DIGITS)
    train_dir: str | None = option(None, "a folder of images (class sub-folders; the labels are ignored)", text, group="data")
    image_column: str | None = option(None, "image column (default: the first Image feature)", text, group="data")
    validation_fraction: float = option(0.1, "share of the training split held out (seeded) to measure the masked-pixel "
                                        "loss (with --streaming: the first --max-eval-samples images instead)", fraction,
                                        group="data")
    max_eval_samples: int | None = option(None, f"use only the first N validation images (with --streaming: the first N "
                                          f"images of the stream are the validation set, {STREAM_VALIDATION} unless given)",
                                          positive_int, group="data")
    model: str = option("swin-digits", "a recipe preset (swin-digits), a swin_hf preset, or a swin_hf checkpoint folder / "
                        "Hub id to continue from", text, group="model")
    image_size: int | None = option(None, "training resolution (default: the model's image_size)", positive_int, group="model")
    mask_patch_size: int | None = option(None, "side of the masked blocks in pixels (default: 32, or 4 for images under "
                                         "64 px)", positive_int, group="model")
    mask_ratio: float = option(0.6, "fraction of the blocks masked", fraction, group="model")
    drop_path: float = option(0.1, "stochastic depth rate", below_one, group="model")
    epochs: int = option(10, "training epochs", positive_int, group="optimisation")
    batch_size: int = option(64, "images per process per micro-batch", positive_int, group="optimisation")
    lr: float = option(2e-3, "peak learning rate (AdamW)", positive_float, group="optimisation")
    weight_decay: float = option(0.05, "AdamW weight decay (never on norms, biases, position tables)", nonnegative_float,
                                 group="optimisation")
    layer_decay: float = option(1.0, "layer-wise lr decay per backbone block (1 = off)", up_to_one, group="optimisation")
    warmup_ratio: float = option(0.05, "linear warmup as a fraction of all steps", below_one, group="optimisation")
    ema_decay: float = option(0.0, "EMA of the weights, evaluated and saved (0 = off)", below_one, group="optimisation")
    crop_scale: tuple = option((0.67, 1.0), "random resized crop area range 'lo,hi'", area_range, group="augmentation")
    output_dir: str = option("outputs/swin-simmim", "the run's folder: pre-trained model, card, settings.json, metrics, "
                             "reconstructions, logs, checkpoints", text)


def build_model(settings: SimMIMSettings):
    """(SwinForMaskedImageModeling, image processor): a preset from scratch, or a saved swin_hf folder (any
    head; its encoder is kept, a mask token and pixel decoder are added)."""
    overrides = {"drop_path_rate": settings.drop_path}
    if settings.image_size:
        overrides["image_size"] = settings.image_size
    if settings.model in PRESETS or settings.model in RECIPE_PRESETS:
        if settings.model in PRESETS:
            config = SwinConfig.from_preset(settings.model, **overrides)
        else:
            config = SwinConfig(**{**RECIPE_PRESETS[settings.model], **overrides})
        config.encoder_stride = config.patch_size * 2 ** (len(config.depths) - 1)
        model = SwinForMaskedImageModeling(config)
    else:
        try:
            config = SwinConfig.from_pretrained(settings.model, **overrides)
            config.encoder_stride = config.patch_size * 2 ** (len(config.depths) - 1)
            model = SwinForMaskedImageModeling.from_pretrained(settings.model, config=config)
        except (TypeError, ValueError, KeyError, OSError) as error:
            raise ModelError(f"--model {settings.model!r} cannot be loaded ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:300]}); check its config.json or save it again.") from error
    return model, SwinImageProcessor.for_image_size(config.image_size, crop_pct=1.0)


def image_column_of(split, name: str | None) -> str:
    import datasets

    if name is not None:
        if name not in split.column_names:
            raise DataError(f"--image-column {name!r} is not a column; the split has {split.column_names}.")
        return name
    for column, feature in split.features.items():
        if isinstance(feature, datasets.Image):
            return column
    raise DataError(f"No Image column among {split.column_names}; name it with --image-column.")


def mask_generator(settings: SimMIMSettings, size: int, patch_size: int, seed: int):
    """SimMIM's block masks at the model's patch grid (DataError for sizes that do not divide)."""

    try:
        return SimMIMMaskGenerator(size, mask_patch_size(settings, size), patch_size, settings.mask_ratio, seed=seed)
    except ValueError as error:
        raise DataError(f"--mask-patch-size {mask_patch_size(settings, size)} at image size {size}: {error}") from error


def mask_patch_size(settings: SimMIMSettings, size: int) -> int:
    return settings.mask_patch_size or (32 if size >= 64 else 4)


class UnlabelledImages(torch.utils.data.Dataset):
    """Items (pixels (3, S, S) in [0, 1] or None when unreadable, its mask or None, index, file name) of a
    split whose images are stored undecoded; `masks` (N, patches) are the validation set's fixed masks."""

    def __init__(self, split, image_column: str, decode, skipped: SkipCounter, masks: torch.Tensor | None = None):
        self.split, self.image_column, self.decode, self.skipped, self.masks = split, image_column, decode, skipped, masks

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        index = int(index)
        value = self.split[index][self.image_column]
        mask = None if self.masks is None else self.masks[index]
        return decode_or_skip(value, index, self.decode, self.skipped), mask, index, file_name(value, index)


class UnlabelledRows:
    """Undecoded rows of a streamed split -> a batch (runs in the stream loader's workers)."""

    def __init__(self, image_column: str, decode):
        self.image_column, self.decode, self.skipped = image_column, decode, SkipCounter()

    def __call__(self, rows: list[dict]) -> dict:
        items = []
        for i, row in enumerate(rows):
            value = row[self.image_column]
            items.append((decode_or_skip(value, i, self.decode, self.skipped), None, -1, file_name(value, i)))
        return collate_images(items)


def collate_images(items) -> dict:
    """A batch {pixel_values (None when no image was readable), bool_masked_pos (None without masks), index,
    skipped_files} of the readable items."""
    good = [item for item in items if item[0] is not None]
    skipped = [item[3] for item in items if item[0] is None]
    if not good:
        return {"pixel_values": None, "bool_masked_pos": None, "index": None, "skipped_files": skipped}
    masks = [item[1] for item in good]
    return {
        "pixel_values": torch.stack([item[0] for item in good]),
        "bool_masked_pos": torch.stack(masks) if masks[0] is not None else None,
        "index": torch.tensor([item[2] for item in good], dtype=torch.long),
        "skipped_files": skipped,
    }


def per_image_l1(reconstruction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Each image's masked-pixel L1 loss (the model's loss, image by image): (B,)."""
    B, C, H, W = target.shape
    pixel_mask = masks.view(B, 1, H // patch_size, W // patch_size).to(target.dtype)
    pixel_mask = pixel_mask.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)
    error = (reconstruction.float() - target.float()).abs() * pixel_mask
    return error.sum((1, 2, 3)) / (pixel_mask.sum((1, 2, 3)) * C + 1e-5)


class SimMIMTask(Task):
    """The lowest validation masked-pixel L1 loss picks the best model; the folder fine-tunes with finetune.py."""

    name, score, card_task = "pretrain_simmim", "val_loss", "masked-image-modeling"
    fixed = ("model",)
    curves: ClassVar[dict[str, str]] = {}  # (the validation loss is drawn beside the training loss)

    @classmethod
    def resolve(cls, settings: SimMIMSettings) -> SimMIMSettings:
        settings.crop_scale = tuple(settings.crop_scale)
        return settings

    def builtin(self) -> bool:
        s = self.settings
        return s.dataset in (None, "", DIGITS) and not s.train_dir and s.model == "swin-digits"

    def check(self, fabric) -> None:
        check_model_source(self.settings.model, "--model", extra_presets=RECIPE_PRESETS)

    def load_data(self, fabric) -> TaskData:
        import datasets

        s = self.settings
        self.model, self.processor = build_model(s)
        config = self.model.config
        self.image_size = image_size_of(config)
        self.patch_size = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
        self.mask_patch = mask_patch_size(s, self.image_size)
        masks = mask_generator(s, self.image_size, self.patch_size, s.seed)  # (sizes checked before the data is read)

        splits = load_splits(s.dataset, s.train_dir, None, s.dataset_config, s.streaming)
        train_name, _ = choose_splits(splits, s.train_split)
        split = splits[train_name]
        if s.streaming and split.features is None:  # (some formats say their columns only once read)
            split = split._resolve_features()
        column = image_column_of(split, s.image_column)
        source = s.train_dir or s.dataset or DIGITS
        if s.streaming:
            held = s.max_eval_samples or STREAM_VALIDATION
            stream = undecoded(split.select_columns([column]), [column])
            validation = bounded(stream, held)
            train = stream.skip(len(validation))
            train = train.take(s.max_train_samples) if s.max_train_samples else train
            note = f"streamed; validation = the first {len(validation)} images of {train_name!r}, skipped by training"
        else:
            split = split.select_columns([column]).cast_column(column, datasets.Image(decode=False))
            if len(split) < 2:
                raise DataError(f"Split {train_name!r} holds {len(split)} image(s); SimMIM needs at least 2 (one to "
                                "train on, one to validate on).")
            held = min(len(split) - 1, max(1, round(s.validation_fraction * len(split))))
            order = np.random.default_rng(s.seed).permutation(len(split))
            validation, train = split.select(np.sort(order[:held])), split.select(np.sort(order[held:]))
            if s.max_train_samples:
                train = train.select(range(min(s.max_train_samples, len(train))))
            if s.max_eval_samples:
                validation = validation.select(range(min(s.max_eval_samples, len(validation))))
            note = f"validation = {len(validation)} images held out of {train_name!r} (seed {s.seed})"
        if len(validation) == 0:
            raise DataError(f"Split {train_name!r} holds no image to validate on.")

        validation_masks = torch.stack([masks() for _ in range(len(validation))])
        resize = SwinImageProcessor.for_image_size(self.image_size, crop_pct=1.0, do_normalize=False)
        cache = not s.streaming
        skipped = SkipCounter()
        validation = UnlabelledImages(validation, column, PreprocessCache(resize, cache), skipped, validation_masks)
        self.column = column
        if s.streaming:
            rows = UnlabelledRows(column, PreprocessCache(resize, False))
            return TaskData(train, validation, collate_images, rows, source=source, notes=[note])
        train = UnlabelledImages(train, column, PreprocessCache(resize, cache), skipped)
        return TaskData(train, validation, collate_images, None, source=source, notes=[note])

    def build_model(self, data: TaskData):
        return self.model  # (built with the data: its size decides the masks of the validation set)

    def start(self, run: Run) -> None:
        import kornia.augmentation as K

        size = (self.image_size, self.image_size)
        self.augment = K.AugmentationSequential(
            K.RandomResizedCrop(size, scale=self.settings.crop_scale, ratio=(3 / 4, 4 / 3)), K.RandomHorizontalFlip(),
        ).to(run.fabric.device)
        device = run.fabric.device
        self.mean = torch.tensor(self.processor.image_mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.processor.image_std, device=device).view(1, 3, 1, 1)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def draw_masks(self, count: int) -> torch.Tensor:
        """`count` fresh masks, seeded from the global torch RNG (restored on resume)."""
        seed = int(torch.randint(0, 2**31 - 1, ()))
        masks = mask_generator(self.settings, self.image_size, self.patch_size, seed)
        return torch.stack([masks() for _ in range(count)])

    def loss(self, run: Run, batch: dict) -> torch.Tensor:
        images = self.normalise(self.augment(batch["pixel_values"].float()))
        masks = self.draw_masks(len(images)).to(images.device)
        return run.model(pixel_values=images, bool_masked_pos=masks).loss

    def evaluate(self, run: Run) -> Evaluation:
        """The mean masked-pixel L1 loss over the validation images (each with its fixed mask), gathered from
        all processes (padding duplicates removed by index). Unreadable images are left out."""
        rows = []  # (index, loss)
        for batch in run.eval_loader:
            run.skipped.update(("validation", name) for name in batch.get("skipped_files", ()))
            if batch["pixel_values"] is None:
                continue
            images = self.normalise(batch["pixel_values"])
            masks = batch["bool_masked_pos"].to(images.device)
            reconstruction = run.model(pixel_values=images, bool_masked_pos=masks).reconstruction
            losses = per_image_l1(reconstruction, images, masks, self.patch_size)
            rows.extend(zip(batch["index"].tolist(), losses.tolist()))
        gathered = {index: loss for part in gather_objects(run.fabric, rows) for index, loss in part}
        if not gathered:
            return Evaluation({"val_loss": float("nan")}, float("-inf"), "no validation image was readable")
        val_loss = float(np.mean(list(gathered.values())))
        return Evaluation({"val_loss": val_loss}, -val_loss, f"val masked-pixel L1 {val_loss:.4f}")

    def save_model(self, run: Run, folder: str, weights: dict) -> None:
        run.raw_model.save_pretrained(folder, state_dict=weights)
        self.processor.save_pretrained(folder)

    def summary(self, run: Run, best: dict) -> dict:
        train = [row["train_loss"] for row in run.progress["history"] if "train_loss" in row]
        return {
            "first_loss": train[0] if train else None,
            "last_loss": train[-1] if train else None,
            "best_val_loss": best.get("val_loss"),
            "mask_patch_size": self.mask_patch,
            "mask_ratio": self.settings.mask_ratio,
            "image_size": self.image_size,
        }

    def card_metrics(self, summary: dict) -> dict:
        keys = ("first_loss", "last_loss", "best_val_loss", "best_epoch", "steps", "mask_ratio", "mask_patch_size")
        return {k: summary[k] for k in keys if k in summary}

    def pictures(self, run: Run) -> None:
        """reconstructions.png: the best model (the folder in --output-dir) on the first validation images,
        with their validation masks; process 0 loads the folder and draws."""
        out = run.settings.output_dir
        if not run.fabric.is_global_zero or not os.path.exists(os.path.join(out, "model.safetensors")):
            return
        from safetensors.torch import load_file


        model = SwinForMaskedImageModeling(SwinConfig.from_pretrained(out)).eval()
        model.load_state_dict(load_file(os.path.join(out, "model.safetensors")))
        items = (run.data.validation[i] for i in range(len(run.data.validation)))
        chosen = list(itertools.islice(((pixels, mask) for pixels, mask, _, _ in items if pixels is not None), PICTURE_ROWS))
        mean, std = torch.tensor(self.processor.image_mean).view(3, 1, 1), torch.tensor(self.processor.image_std).view(3, 1, 1)
        save_reconstructions(reconstruction_examples(model, chosen, mean, std), os.path.join(out, "reconstructions.png"))

    def report(self, summary: dict) -> list[str]:
        first, last, best = summary.get("first_loss"), summary.get("last_loss"), summary.get("best_val_loss")
        losses = f"{first:.3f} -> {last:.3f}" if first is not None and last is not None else "not logged"
        line = (f"SimMIM: {summary.get('steps', 0)} steps in {summary.get('train_minutes', 0.0):.1f} min, masked-pixel L1 "
                f"{losses}; " + (f"best validation L1 {best:.3f}" if best is not None else "no evaluation ran"))
        return [f"{line} {run_lines(summary)}", f"fine-tune it: python recipes/finetune.py --model {summary['output_dir']}"]


@torch.no_grad()
def reconstruction_examples(model, items, mean: torch.Tensor, std: torch.Tensor) -> list[list[torch.Tensor]]:
    """[input, masked input, reconstruction (visible pixels pasted back)] as (3, S, S) images in [0, 1] for
    each (pixels in [0, 1], mask) of `items`, the model's input normalised by `mean` and `std`."""
    examples = []
    p = model.config.patch_size if isinstance(model.config.patch_size, int) else model.config.patch_size[0]
    for pixels, mask in items:
        normalised = (pixels.float() - mean) / std
        reconstruction = model(normalised[None], bool_masked_pos=mask[None]).reconstruction[0].float()
        S = pixels.shape[-1]
        pixel_mask = mask.view(S // p, S // p).repeat_interleave(p, 0).repeat_interleave(p, 1)[None].float()
        shown = reconstruction * std + mean
        hidden = mean.expand_as(pixels) * pixel_mask  # masked blocks shown in the mean colour (grey)
        examples.append([pixels.float(), pixels.float() * (1 - pixel_mask) + hidden,
                         (shown * pixel_mask + pixels.float() * (1 - pixel_mask)).clamp(0, 1)])
    return examples


def save_reconstructions(examples: list[list[torch.Tensor]], path: str, min_height: int = 128) -> None:
    """A PNG grid a person can read: one row per image, columns titled input | masked input (grey: hidden
    from the model) | reconstruction, each image upscaled to at least `min_height` pixels without blending."""
    if not examples:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = examples[0][0].shape[-1]
    scale = max(1, -(-min_height // size))
    dpi = 100
    side = size * scale / dpi
    fig, axes = plt.subplots(len(examples), 3, figsize=(3 * side + 0.4, len(examples) * side + 0.6), dpi=dpi, squeeze=False)
    titles = ["input", "masked input", "reconstruction"]
    for r, row in enumerate(examples):
        for c, image in enumerate(row):
            axes[r][c].imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[r][c].axis("off")
            if r == 0:
                axes[r][c].set_title(titles[c], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


DESCRIPTION = ("SimMIM pre-training of a Swin encoder on unlabelled images (any `datasets` split); the lowest validation "
               "masked-pixel L1 loss picks the saved model. Launch with `python`, `lightning run` (or `fabric run`), "
               "`torchrun` or `accelerate launch`. With no arguments, a tiny Swin pre-trains on the built-in digits images.")


def main(argv: list[str] | None = None) -> int:

    return launch(SimMIMTask, SimMIMSettings, argv, "pretrain_simmim.py", DESCRIPTION)


__all__ = [
    "DESCRIPTION",
    "SimMIMSettings",
    "SimMIMTask",
    "UnlabelledImages",
    "UnlabelledRows",
    "build_model",
    "collate_images",
    "main",
    "per_image_l1",
    "reconstruction_examples",
    "save_reconstructions",
]
