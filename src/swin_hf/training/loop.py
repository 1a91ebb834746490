"""The Fabric training loop of the image-classification recipe, in four parts:

- `setup(config, fabric)`: checks the output folder, the model source and the data; builds the model,
  optimiser, loaders and the resumable `state` (one dict: model, optimiser, schedule, EMA, progress, RNG),
  which `--resume` restores; only then does `--overwrite` remove the old run's checkpoints. -> a `Run`
- `fit(run)`: the optimisation loop (accumulation, clipping, EMA, checkpoints, the non-finite stop)
- `evaluate(run)`: distributed evaluation at epoch ends; the best model so far is saved
- `finish(run)`: the outputs (rank 0 only) and the summary

`run(config)` does all four. Call it inside a launched Fabric (see recipes/finetune.py) or let it create one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..model_source import check_model_source
from .augment import AugmentConfig, BatchAugment, soft_cross_entropy
from .checkpoint import gather_objects, rng_state, set_rng_state
from .data import (
    DIGITS,
    ClassificationRows,
    ImageClassificationDataset,
    PreparedData,
    ResumableSampler,
    SkipCounter,
    collate_skipping,
    load_splits,
    prepare,
    prepare_stream,
)
from .distributed import setup_model_and_optimizer, strategy_name
from .ema import EMA, swapped_weights
from .errors import ModelError
from .optim import build_optimizer, build_scheduler, set_schedule_position
from . import report
from .progress import Display
from .session import Session, log_training_row, mean_over_processes, optimizer_step
from .streaming import StreamLoader

logger = logging.getLogger(__name__)

# Small models defined by the recipes (the paper's models are in swin_hf.PRESETS).
RECIPE_PRESETS: dict[str, dict] = {
    # 8x8 digits upscaled to 16x16: patch 2 -> 8x8 tokens, two stages of 4x4 windows, ~136k parameters
    "swin-digits": dict(
        image_size=16, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, mlp_ratio=4.0
    ),
}

# settings a resumed run can never change: the checkpoint's weights are for this architecture and these classes
RUN_FIXED = ("model", "image_size", "window_size", "class_names")


@dataclass
class TrainConfig:
    # data
    dataset: str | None = DIGITS
    dataset_config: str | None = None
    train_split: str | None = None  # None: 'train', else the first split not named like an evaluation split
    train_dir: str | None = None
    validation_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    train_val_split: float = 0.15
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_workers: int = 0
    cache_images: bool = True
    streaming: bool = False  # read the data as it is used (an epoch is then steps_per_epoch steps)
    shuffle_block: int = 1000
    steps_per_epoch: int | None = None
    label_names: list[str] | None = None  # class names for label columns that are not a ClassLabel (streaming)
    # model
    model: str = "swin-digits"
    image_size: int | None = None
    window_size: int | None = None
    crop_pct: float | None = None
    drop_path: float = 0.1
    # optimisation
    epochs: int = 30
    max_steps: int | None = None
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    layer_decay: float = 1.0
    warmup_steps: int | None = None
    warmup_ratio: float = 0.05
    clip_grad: float | None = 5.0
    ema_decay: float = 0.0
    compile: bool = False
    gradient_checkpointing: bool = False
    # augmentation
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # run
    seed: int = 0
    deterministic: bool = False
    output_dir: str = "outputs/swin-finetuned"
    overwrite: bool = False
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    resume: bool = False
    allow_changed_config: str | None = None  # with resume: settings that may differ, "lr,epochs" or "all"
    eval_every_epochs: int = 1
    log_every: int = 10
    progress: bool = True
    push_to_hub: bool = False
    hub_model_id: str | None = None
    target_accuracy: float | None = None
    target_minutes: float | None = None
    debug_record_ranks: str | None = None  # tests: directory where each rank writes what it saw

    def flat(self) -> dict:
        values = dataclasses.asdict(self)
        augment = values.pop("augment")
        values.update({f"augment.{k}": v for k, v in augment.items()})
        return values


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def build_model(config: TrainConfig, class_names: list[str]):
    """(model, image processor, whether it is trained from scratch)."""
    from swin_hf import PRESETS, SwinConfig, SwinForImageClassification, SwinImageProcessor

    id2label = {i: name for i, name in enumerate(class_names)}
    label2id = {name: i for i, name in id2label.items()}
    labels = dict(num_labels=len(class_names), id2label=id2label, label2id=label2id)
    overrides = {k: v for k, v in (("image_size", config.image_size), ("window_size", config.window_size)) if v}
    if config.model in PRESETS or config.model in RECIPE_PRESETS:
        if config.model in PRESETS:
            swin_config = SwinConfig.from_preset(config.model, drop_path_rate=config.drop_path, **labels, **overrides)
        else:
            values = {**RECIPE_PRESETS[config.model], **overrides}
            swin_config = SwinConfig(drop_path_rate=config.drop_path, **values, **labels)
        model = SwinForImageClassification(swin_config)
        processor = SwinImageProcessor.for_image_size(swin_config.image_size, crop_pct=config.crop_pct)
        return model, processor, True

    # id2label alone sets num_labels (passing both makes transformers compare against the old head)
    try:
        model = SwinForImageClassification.from_pretrained(
            config.model,
            ignore_mismatched_sizes=True,
            drop_path_rate=config.drop_path,
            id2label=id2label,
            label2id=label2id,
            **overrides,
        )
    except (TypeError, ValueError, KeyError, OSError) as error:
        raise ModelError(
            f"--model {config.model!r} cannot be loaded ({type(error).__name__}: {' '.join(str(error).split())[:300]}). "
            "If it is a folder, check its config.json (e.g. depths must be a list of whole numbers, drop_path_rate a "
            "number) or write it again with save_pretrained."
        ) from error
    size = model.config.image_size
    try:
        from transformers import AutoImageProcessor

        loaded = AutoImageProcessor.from_pretrained(config.model)
        mean, std = loaded.image_mean, loaded.image_std
    except Exception:  # no processor saved with the checkpoint: ImageNet statistics
        mean = std = None
    extra = {"image_mean": mean, "image_std": std} if mean is not None else {}
    processor = SwinImageProcessor.for_image_size(size, crop_pct=config.crop_pct, **extra)
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


def _format_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _note_skipped(skipped: set | None, split: str, batch: dict) -> None:
    if skipped is not None:
        skipped.update((split, name) for name in batch.get("skipped_files", ()))


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(fabric, model, loader, num_classes: int, accuracy_metric, skipped: set | None = None) -> dict:
    """Top-1 (and top-5 with >= 5 classes) accuracy and loss over the whole validation split, gathered
    from all processes (padding duplicates removed by example index). Unreadable images are left out
    (and added to `skipped` as ("validation", file))."""
    model.eval()
    rows = []  # (index, label, top1, top5-hit-or-top1, loss)
    for batch in loader:
        _note_skipped(skipped, "validation", batch)
        if batch["pixel_values"] is None:
            continue
        logits = model(pixel_values=batch["pixel_values"]).logits.float()
        labels = batch["labels"]
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        top1 = logits.argmax(-1)
        k = min(5, num_classes)
        hit5 = (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1)
        top5 = torch.where(hit5, labels, top1)
        for row in zip(batch["index"].tolist(), labels.tolist(), top1.tolist(), top5.tolist(), losses.tolist()):
            rows.append(row)
    gathered = {}
    for part in gather_objects(fabric, rows):
        for row in part:
            gathered[row[0]] = row
    rows = [gathered[i] for i in sorted(gathered)]
    model.train()
    if not rows:
        return {"val_top1": 0.0, "val_loss": float("nan"), "val_examples": 0, "predictions": [], "references": []}
    indices, refs, top1, top5, losses = map(list, zip(*rows))
    result = {
        "val_top1": accuracy_metric.compute(predictions=top1, references=refs)["accuracy"],
        "val_loss": float(np.mean(losses)),
        "val_examples": len(rows),
        "predictions": top1,
        "references": refs,
    }
    if num_classes >= 5:
        result["val_top5"] = accuracy_metric.compute(predictions=top5, references=refs)["accuracy"]
    return result


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def new_progress() -> dict:
    """The loop's position and record: optimiser steps, epochs, micro-batches done in this epoch,
    logged rows, the best evaluation, training seconds before this process."""
    return {"step": 0, "epoch": 0, "batch": 0, "history": [], "best": None, "elapsed": 0.0}


def plan_steps(config: TrainConfig, batches_per_epoch: int, progress: dict) -> int:
    """The optimiser step the run ends at: the steps done, plus the rest of this epoch and the remaining
    epochs at the current batch size and accumulation (on a fresh run: epochs x steps per epoch), capped
    by --max-steps."""
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    remaining = 0
    if progress["epoch"] < config.epochs:
        left_in_epoch = max(0, batches_per_epoch - progress["batch"])
        remaining = math.ceil(left_in_epoch / config.grad_accum) + (config.epochs - progress["epoch"] - 1) * steps_per_epoch
    total = progress["step"] + remaining
    return min(total, config.max_steps) if config.max_steps else total


@dataclass
class Run:
    """What `fit`, `evaluate` and `finish` work on, built by `setup`. `state` is what a checkpoint holds
    (model, optimizer, scheduler, [ema], progress, rng); `progress` is state["progress"]."""

    config: TrainConfig
    fabric: Any
    session: Session
    data: PreparedData
    model: Any  # as set up by Fabric (and compiled)
    raw_model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    ema: EMA | None
    augment: Any
    train_loader: Any
    eval_loader: Any
    train_order: ResumableSampler | StreamLoader  # where the next epoch starts: set_position(epoch, batch)
    metrics: Any  # report.MetricLoggers
    accuracy: Any
    state: dict
    batches_per_epoch: int
    total_steps: int
    warmup: int
    from_scratch: bool
    image_size: int
    started: float
    skipped: set = field(default_factory=set)  # (split, file) of unreadable images
    running: list = field(default_factory=list)  # losses since the last log row
    epoch_losses: list = field(default_factory=list)  # losses of this epoch (its line)
    last_eval: dict | None = None
    clock: float = 0.0  # when this process started training
    display: Display | None = None
    record: list | None = None

    @property
    def progress(self) -> dict:
        return self.state["progress"]

    @property
    def epochs(self) -> int:
        """The epoch the run ends in (for messages)."""
        return math.ceil(self.total_steps / math.ceil(self.batches_per_epoch / self.config.grad_accum))


def build_loaders(config: TrainConfig, fabric, data: PreparedData, processor, image_size: int):
    """(train loader, validation loader, where the training order starts), set up by Fabric. Images are
    decoded and resized per item (training: not normalised, the batch augmentation does it); the training
    sampler is resumable (epoch + batch position) and shards across processes itself. With --streaming the
    training loader is a StreamLoader (each process reads its own shards; its position is resumable, and
    no image is cached), and the validation split is the bounded one `prepare_stream` made."""
    from swin_hf import SwinImageProcessor

    train_processor = SwinImageProcessor.for_image_size(image_size, crop_pct=1.0, do_normalize=False)
    skipped = SkipCounter()
    columns = (data.image_column, data.label_column)
    eval_set = ImageClassificationDataset(data.validation, *columns, PreprocessCache(processor, config.cache_images), skipped)
    eval_loader, _ = resumable_loader(fabric, eval_set, config.batch_size, False, config.seed, config.num_workers, collate_skipping)
    if config.streaming:
        rows = ClassificationRows(*columns, PreprocessCache(train_processor, False), len(data.class_names))
        train_loader = StreamLoader(fabric, data.train, rows, config.batch_size, config.steps_per_epoch * config.grad_accum,
                                    config.seed, config.shuffle_block, config.num_workers)
        return train_loader, eval_loader, train_loader
    train_set = ImageClassificationDataset(data.train, *columns, PreprocessCache(train_processor, config.cache_images), skipped)
    train_loader, train_sampler = resumable_loader(fabric, train_set, config.batch_size, True, config.seed,
                                                   config.num_workers, collate_skipping)
    return train_loader, eval_loader, train_sampler


def resumable_loader(fabric, dataset, batch_size: int, train: bool, seed: int, num_workers: int, collate_fn,
                     move_to_device: bool = True):
    """(loader, its ResumableSampler), set up by Fabric: each process reads its own share of `dataset`
    (training: shuffled per epoch, whole batches unless the share is smaller than one, the position
    restorable; validation: in order). Creating an iterator never draws from the global RNG (the loader
    has its own generator), so a resumed run sees the same batches and augmentations. Shared by the
    classification and detection recipes."""
    sampler = ResumableSampler(len(dataset), batch_size, train, seed, fabric.global_rank, fabric.world_size, drop_last=train)
    if train and sampler.batches_per_epoch() == 0:
        sampler.drop_last = False
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        persistent_workers=False, generator=torch.Generator().manual_seed(seed),
    )
    return fabric.setup_dataloaders(loader, use_distributed_sampler=False, move_to_device=move_to_device), sampler


def setup(config: TrainConfig, fabric=None) -> Run:
    """Everything before the first step. The output folder, the model source and the data are checked
    before anything is built; the old run's checkpoints (--overwrite) are removed only after the model is
    built; with --resume the newest readable checkpoint whose settings match is restored."""
    from lightning.fabric import Fabric

    from swin_hf.metrics import load_accuracy

    started = time.perf_counter()
    if fabric is None:
        fabric = Fabric(accelerator="cpu", devices=1)
        fabric.launch()
    session = Session(
        fabric, "finetune", config.output_dir, config.flat(), overwrite=config.overwrite, resume=config.resume,
        allow_changed_config=config.allow_changed_config, keep_checkpoints=config.keep_checkpoints, fixed=RUN_FIXED,
        clip_grad=config.clip_grad, precision=fabric.strategy.precision.precision,
    )
    check_model_source(config.model, "--model", extra_presets=RECIPE_PRESETS)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    fabric.seed_everything(config.seed, workers=True)  # same initial weights on every rank
    splits = load_splits(config.dataset, config.train_dir, config.validation_dir, config.dataset_config, config.streaming)
    source = config.train_dir or config.dataset or DIGITS
    if config.streaming:
        data = prepare_stream(splits, config.image_column, config.label_column, config.label_names,
                              config.max_train_samples, config.max_eval_samples or 1000, source, config.train_split)
    else:
        data = prepare(splits, config.image_column, config.label_column, config.train_val_split, config.max_train_samples,
                       config.max_eval_samples, config.seed, source, config.train_split)

    model, processor, from_scratch = build_model(config, data.class_names)
    image_size = model.config.image_size
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()
    raw_model = model
    train_loader, eval_loader, train_order = build_loaders(config, fabric, data, processor, image_size)
    batches_per_epoch = train_order.batches_per_epoch()
    total_steps = plan_steps(config, batches_per_epoch, new_progress())
    warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total_steps)
    if config.compile:
        model = torch.compile(model)
    model, optimizer = setup_model_and_optimizer(
        fabric, model, lambda m: build_optimizer(raw_model, config.lr, config.weight_decay, config.layer_decay, raw_model.config.depths)
    )
    scheduler = build_scheduler(optimizer, total_steps, warmup, config.min_lr_ratio)
    ema = EMA(raw_model, config.ema_decay) if config.ema_decay > 0 else None  # after setup: synced (or sharded) weights
    # per-rank seed from here on: ranks draw different augmentations and drop paths, reproducibly
    fabric.seed_everything(config.seed + fabric.global_rank, workers=True, verbose=False)
    augment = BatchAugment(dataclasses.replace(config.augment, image_size=image_size), processor.image_mean,
                           processor.image_std, len(data.class_names)).to(fabric.device)

    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "progress": new_progress(), "rng": None}
    if ema is not None:
        state["ema"] = ema
    run = Run(config, fabric, session, data, model, raw_model, processor, optimizer, scheduler, ema, augment, train_loader,
              eval_loader, train_order, report.MetricLoggers(fabric, config.output_dir, resume=config.resume), load_accuracy(), state,
              batches_per_epoch, total_steps, warmup, from_scratch, image_size, started)
    # the data as this run sees it: a folder that gained or lost images since the checkpoint is a changed run
    data_settings = {"class_names": data.class_names, "validation_examples": len(data.validation)}
    if config.streaming:
        session.track_stream(train_loader)
    else:
        data_settings["train_examples"] = len(data.train)
    if session.begin(state, {**data_settings, "world_size": fabric.world_size}, optional=("ema",)):
        _continue(run)
    return run


def _continue(run: Run) -> None:
    """After a checkpoint was restored: the RNG, an EMA switched on since (from the restored weights), the
    data position and the schedule length for allowed changes of batch size, process count or epochs."""
    fabric, config, progress = run.fabric, run.config, run.progress
    rngs = run.state["rng"]
    set_rng_state(rngs[fabric.global_rank] if len(rngs) == fabric.world_size else rngs[0])
    if "ema" in run.session.missing:
        run.ema = run.state["ema"] = EMA(run.raw_model, config.ema_decay)
    old = {key: before for key, before, _ in run.session.changes}
    if "batch_size" in old or "world_size" in old:  # the same images seen, in batches of the new size
        before = old.get("batch_size", config.batch_size) * old.get("world_size", fabric.world_size)
        progress["batch"] = progress["batch"] * before // (config.batch_size * fabric.world_size)
    run.total_steps = plan_steps(config, run.batches_per_epoch, progress)
    run.warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * run.total_steps)
    run.scheduler.plan.update(total_steps=run.total_steps, warmup_steps=run.warmup)
    set_schedule_position(run.scheduler)
    if progress["step"] >= run.total_steps:
        logger.warning("The resumed run has done %d steps, as many as these settings ask for: nothing is left to train.", progress["step"])
    fabric.print(f"Resumed from {run.session.resumed_from}: step {progress['step']}, epoch {progress['epoch']}, batch {progress['batch']}.")


def fit(run: Run) -> None:
    """Train until `total_steps`: each optimiser step accumulates `grad_accum` micro-batches; checkpoints
    every `checkpoint_every` steps and at epoch ends; evaluation every `eval_every_epochs` epochs and at
    the end. Stops with NonFiniteLossError (nothing saved) when a loss or gradient norm is not finite."""
    config, progress = run.config, run.progress
    run.clock = time.perf_counter()
    run.record = [] if config.debug_record_ranks else None
    run.display = Display(run.fabric, run.total_steps, progress["step"], enabled=config.progress)
    run.model.train()
    while progress["step"] < run.total_steps and progress["epoch"] < config.epochs:
        run.train_order.set_position(progress["epoch"], progress["batch"])
        batches = iter(run.train_loader)
        while progress["step"] < run.total_steps:
            group = [batch for _, batch in zip(range(config.grad_accum), batches)]
            if not group:
                break
            train_step(run, group)
            step, mid_epoch = progress["step"], progress["batch"] < run.batches_per_epoch
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < run.total_steps and mid_epoch:
                save_checkpoint(run)  # (at an epoch's last step, end_epoch writes it)
        end_epoch(run)
    run.display.close()


def train_step(run: Run, group: list[dict]) -> None:
    """One optimiser step over the micro-batches of `group` (each loss weighted by its share of the
    group's images, so the step is the mean over all of them), then EMA, bookkeeping and logging."""
    for batch in group:
        _note_skipped(run.skipped, "train", batch)
    usable = [batch for batch in group if batch["pixel_values"] is not None]
    examples = sum(batch["labels"].numel() for batch in usable)

    def micro_loss(batch):
        images, targets = run.augment(batch["pixel_values"], batch["labels"])
        logits = run.model(pixel_values=images).logits
        return soft_cross_entropy(logits, targets) * batch["labels"].numel() / examples

    micro = [functools.partial(micro_loss, batch) for batch in usable]
    step, lr = accumulated_step(run, micro, run.config.clip_grad, len(group), examples)
    if run.record is not None:
        run.record.extend(batch["index"].tolist() for batch in usable)
    if step % run.config.log_every == 0 or step == run.total_steps:
        log_training(run, step, lr)


def accumulated_step(run, micro_losses: list, clip_grad: float | None, batches: int, images: int) -> tuple[int, float]:
    """`optimizer_step` over the micro-batch losses, then the EMA, the progress (one step, `batches` more
    batches), the non-finite guard and the display (`images` more on this process); returns (the step
    done, the lr it used). `run` is any recipe's run with model, optimizer, scheduler, ema, raw_model,
    session, progress, display and the running and epoch losses."""
    lr = run.optimizer.param_groups[-1]["lr"]
    loss, norm = optimizer_step(run.fabric, run.model, run.optimizer, run.scheduler, micro_losses, clip_grad)
    if run.ema is not None:
        run.ema.update(run.raw_model)
    progress = run.progress
    progress["step"] += 1
    progress["batch"] += batches
    if loss is not None:
        run.session.guard.record(progress["step"], lr, loss, norm)
        run.running.append(loss)
        run.epoch_losses.append(loss)
    run.display.update(images)
    return progress["step"], lr


def log_training(run, step: int, lr: float) -> None:
    """The training row of `step` (session.log_training_row) from the losses since the last row. Called on
    every process at the same steps. `run` is any recipe's run with session, display, progress, running
    losses and metrics (the classification and detection recipes' both)."""
    log_training_row(run.session, run.display, run.progress, step, lr, run.running, run.metrics)
    run.running = []


def end_epoch(run: Run) -> None:
    """At the end of an epoch's batches (or of training): evaluate when due, checkpoint unless done, and
    one line (every process takes part: the loss and throughput are summed over them)."""
    progress, config = run.progress, run.config
    if run.record is not None:
        os.makedirs(config.debug_record_ranks, exist_ok=True)
        params = list(run.raw_model.parameters())
        with open(os.path.join(config.debug_record_ranks, f"rank{run.fabric.global_rank}-epoch{progress['epoch']}.json"), "w") as f:
            json.dump({"indices": run.record, "weights": [float(p.detach().double().sum()) for p in params],
                       "first": params[0].detach().flatten()[:8].tolist()}, f)
        run.record = []
    finish_epoch(run, config.eval_every_epochs, evaluate)


def finish_epoch(run, eval_every_epochs: int, evaluate_run, stopped: bool = False) -> None:
    """When an epoch's batches are done (or training is, or `stopped`): count the epoch, evaluate when due
    (`evaluate_run(run)`), checkpoint unless done. `run` is any recipe's run with `progress`, `total_steps`,
    `batches_per_epoch`, `epochs`, `display`, `epoch_losses` and what `save_checkpoint` needs (the
    detection recipe's too); `evaluate_run` returns the evaluation's part of the epoch line."""
    progress = run.progress
    done = progress["step"] >= run.total_steps or stopped
    if progress["batch"] >= run.batches_per_epoch or done:
        progress["epoch"] += 1
        progress["batch"] = 0
        line = f"epoch {progress['epoch']}/{run.epochs} (step {progress['step']}/{run.total_steps}): " + epoch_summary(run)
        if progress["epoch"] % eval_every_epochs == 0 or done:
            line += "; " + evaluate_run(run)
        run.display.line(line)
        if not done:
            save_checkpoint(run)


def epoch_summary(run: Run) -> str:
    """The epoch's mean training loss (over processes) and the throughput so far."""
    losses, run.epoch_losses = run.epoch_losses, []
    return f"train loss {mean_over_processes(run.fabric, losses):.4f}, {run.display.rates_text()}"


def save_checkpoint(run: Run) -> None:
    """A checkpoint of `run.state` with the progress, the training time so far and every process's RNG."""
    progress = run.progress
    elapsed = progress["elapsed"] + time.perf_counter() - run.clock
    state = {**run.state, "progress": {**progress, "elapsed": elapsed}, "rng": gather_objects(run.fabric, rng_state())}
    run.session.save(state, progress["step"], run.raw_model)


def evaluate(run: Run) -> str:
    """Accuracy on the validation split (with the EMA weights, if any); logged, and the model is saved to
    --output-dir when it is the best so far. Returns the result in words."""
    progress = run.progress
    run.session.guard.check()
    with swapped_weights(run.raw_model, run.ema):
        result = evaluate_model(run.fabric, run.model, run.eval_loader, len(run.data.class_names), run.accuracy, run.skipped)
    row = {"step": progress["step"], "epoch": progress["epoch"], **{k: v for k, v in result.items() if k.startswith("val_")}}
    progress["history"].append(row)
    run.last_eval = result
    run.metrics.log({k: v for k, v in row.items() if k not in ("step", "val_examples")}, progress["step"])
    message = f"val top-1 {result['val_top1']:.2%}"
    if "val_top5" in result:
        message += f", top-5 {result['val_top5']:.2%}"
    message += f", loss {result['val_loss']:.4f}"
    best = progress["best"]
    if best is None or result["val_top1"] > best["val_top1"]:
        progress["best"] = {**row, "predictions": result["predictions"], "references": result["references"]}
        save_best(run)
        message += " (best so far, saved)"
    return message


def save_best(run: Run) -> None:
    """The evaluated weights (EMA if any) and the image processor as a save_pretrained folder in --output-dir."""

    def write(folder: str, weights: dict) -> None:
        run.raw_model.save_pretrained(folder, state_dict=weights)
        run.processor.save_pretrained(folder)

    with swapped_weights(run.raw_model, run.ema):
        run.session.save_model(write, run.raw_model, run.progress["step"], name="best model")


def finish(run: Run) -> dict:
    """The final training weights (checkpoints/final-weights.safetensors), metrics.json, plots, the model
    card (rank 0), and the summary returned to every process."""
    fabric, config, progress = run.fabric, run.config, run.progress
    run.session.guard.check()
    run.metrics.finalize()
    out = config.output_dir

    def write_final(folder: str, weights: dict) -> None:  # the last (not EMA, not best) weights, e.g. to compare runs
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, os.path.join(folder, "final-weights.safetensors"))

    run.session.save_model(write_final, run.raw_model, progress["step"], "final weights", run.session.checkpoints)
    best = progress["best"] or {}
    skipped = set().union(*gather_objects(fabric, run.skipped))
    per_process, total = run.display.rates()
    summary = {
        "best_val_top1": best.get("val_top1"),
        "best_val_top5": best.get("val_top5"),
        "best_val_loss": best.get("val_loss"),
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "final_val_top1": run.last_eval["val_top1"] if run.last_eval else None,
        "steps": progress["step"],
        "epochs": progress["epoch"],
        "train_examples": None if config.streaming else len(run.data.train),
        "val_examples": len(run.data.validation),
        "num_classes": len(run.data.class_names),
        "skipped_images": len(skipped),
        "world_size": fabric.world_size,
        "strategy": strategy_name(fabric),
        "images_per_s": round(total, 1),
        "images_per_s_per_process": round(per_process, 1),
        "wall_time_s": round(time.perf_counter() - run.started, 2),
        "train_time_s": round(progress["elapsed"] + time.perf_counter() - run.clock, 2),
        "from_scratch": run.from_scratch,
        "streaming": config.streaming or None,
    }
    summary = {k: v for k, v in summary.items() if v is not None}
    if fabric.is_global_zero:
        report.write_report(out, summary, progress["history"], model_card(run, summary, len(skipped)))
        if best:
            matrix = report.confusion_matrix(best["references"], best["predictions"], len(run.data.class_names))
            report.plot_confusion(matrix, run.data.class_names, os.path.join(out, "confusion_matrix.png"))
        if config.push_to_hub:
            push_to_hub(run)
    fabric.barrier()
    return summary


def model_card(run: Run, summary: dict, skipped: int) -> str:
    config, out = run.config, run.config.output_dir
    hyper = {k: v for k, v in config.flat().items() if k not in ("debug_record_ranks", "progress")}
    hyper.update(image_size=run.image_size, total_steps=run.total_steps, warmup_steps=run.warmup, world_size=run.fabric.world_size)
    card_metrics = {k: summary[k] for k in ("best_val_top1", "best_val_top5", "best_val_loss", "best_epoch") if k in summary}
    notes = run.data.notes + ([f"{skipped} unreadable image(s) were skipped"] if skipped else [])
    if skipped:
        logger.warning("%d unreadable image(s) were skipped during this run.", skipped)
    return report.model_card(config.hub_model_id or os.path.basename(os.path.abspath(out)), config.model,
                             run.data.source, run.data.class_names, hyper, card_metrics, notes,
                             version=run.raw_model.config.version)


def push_to_hub(run: Run) -> None:
    from huggingface_hub import create_repo, upload_folder

    out = run.config.output_dir
    repo = run.config.hub_model_id or os.path.basename(os.path.abspath(out))
    create_repo(repo, exist_ok=True)
    upload_folder(repo_id=repo, folder_path=out, ignore_patterns=["checkpoints/*", ".tmp-*", ".swin_hf.lock*"])
    run.fabric.print(f"Pushed {out} to https://huggingface.co/{repo}")


def run(config: TrainConfig, fabric=None) -> dict:
    """Train and evaluate; returns the summary (also written to output_dir/metrics.json by rank 0)."""
    state = setup(config, fabric)
    try:
        fit(state)
        return finish(state)
    finally:
        try:
            state.metrics.finalize("failed")  # after a failure: no log file stays open (no-op after finish)
        except OSError:  # the disk that stopped the run may refuse the logs too
            pass


def output_files(out: str) -> list[str]:
    """What a run left in `out`, in the words of the summary line."""
    found = {
        "model": os.path.exists(os.path.join(out, "model.safetensors")),
        "README.md": os.path.exists(os.path.join(out, "README.md")),
        "metrics.json": os.path.exists(os.path.join(out, "metrics.json")),
        "plots": os.path.exists(os.path.join(out, "training_curves.png")),
        "logs": os.path.isdir(os.path.join(out, "logs")),
    }
    return [name for name, present in found.items() if present]


def summary_lines(summary: dict, target_accuracy: float | None = None, target_minutes: float | None = None) -> list[str]:
    """The short human summary printed at the end of a run."""
    top1 = summary.get("best_val_top1")
    wall = summary.get("train_time_s", summary.get("wall_time_s", 0.0))
    line = f"validation top-1 {top1:.1%}" if top1 is not None else "no evaluation ran"
    if "best_val_top5" in summary:
        line += f" (top-5 {summary['best_val_top5']:.1%})"
    line += f" after {_format_time(wall)} of training ({summary.get('steps', 0)} steps, {summary.get('epochs', 0)} epochs"
    line += f", {summary.get('world_size', 1)} process{'es' if summary.get('world_size', 1) > 1 else ''})"
    lines = [line]
    if target_accuracy is not None and top1 is not None:
        met = top1 >= target_accuracy and (target_minutes is None or wall < 60 * target_minutes)
        limit = f" in < {target_minutes:g} min" if target_minutes is not None else ""
        lines.append(f"target >= {target_accuracy:.0%}{limit}: {'met' if met else 'NOT met'}")
    if summary.get("skipped_images"):
        lines.append(f"{summary['skipped_images']} unreadable image(s) skipped")
    return lines


__all__ = [
    "RECIPE_PRESETS",
    "Run",
    "TrainConfig",
    "accumulated_step",
    "build_model",
    "evaluate",
    "evaluate_model",
    "finish",
    "finish_epoch",
    "fit",
    "log_training",
    "output_files",
    "plan_steps",
    "run",
    "save_checkpoint",
    "setup",
    "summary_lines",
]
