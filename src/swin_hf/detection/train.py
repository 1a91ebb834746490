"""Object-detection recipe (recipes/detect.py): a transformers DETR-family detector on a swin_hf backbone.

Launch exactly like recipes/finetune.py (`python`, `fabric run`, `torchrun`, `accelerate launch`); the
launcher handling, argument checks, output folder, checkpoints (weights_only, atomic, settings compared on
resume, unreadable files set aside), the non-finite stop, AdamW groups (layer-wise decay over the backbone's
blocks), the cosine schedule, image decoding (EXIF, unreadable files skipped and counted), the resumable
sampler and the reports are the shared ones (swin_hf.training). What is detection-specific lives beside
this module: swin_hf.detection (the heads' wiring), .data (sets, checks, augmentation), .evaluate (mAP,
pictures).

Input: the Hub's detection convention (`image` + `objects` with `bbox` in COCO [x, y, width, height]
pixels and `category`) from `load_dataset`, a saved DatasetDict, or a COCO-JSON folder. Output folder: the
best model (by COCO mAP) with an image processor that ``pipeline("object-detection")`` loads (after
``import swin_hf``), README.md (model card), metrics.json (mAP, mAP50, mAP75, per-class AP, what the
data checks found), logs/ (CSV, TensorBoard), training_curves.png, pictures/ (validation images, true
boxes | predicted boxes), checkpoints/ (and checkpoints/final-weights.safetensors).

Resume is exact, as in the fine-tuning recipe: a checkpoint holds the model, optimiser, schedule, EMA,
the position in the data (epoch and batch) and every process's random state, written at epoch ends and
every --checkpoint-every steps; a run killed with SIGKILL and resumed ends with the same weights.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..training.checkpoint import gather_objects
from ..training.loop import accumulated_step, finish_epoch, log_training, new_progress, plan_steps, resumable_loader, save_checkpoint
from ..training.progress import Display
from ..training.report import MetricLoggers

from . import DEFAULT_HEAD, HEADS, detector_config, detector_from_encoder, head_settings, image_processor_for, size_multiple
from .data import BBOX_FORMATS, BUILTIN, BoxAugment, DetectionDataset, collate, load_detection_splits, prepare_detection, to_detr_labels
from .evaluate import evaluate_detection, normalise, save_pictures

logger = logging.getLogger(__name__)

# a small Swin for the built-in set: 128 px -> maps of 32, 16, 8, 4 with 4x4 windows (as segment.py's)
BUILTIN_MODEL = dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4, patch_size=4)
# settings a resumed run can never change: the checkpoint's weights are for this architecture and these classes
RUN_FIXED = ("model", "head", "image_size", "hidden_size", "num_queries", "encoder_layers", "decoder_layers", "class_names")
# options that only shape what is drawn at the end; not part of the run's recorded settings
NOT_RECORDED = ("num_pictures", "picture_threshold")
TARGET_MAP50, TARGET_MINUTES = 0.5, 10.0


def build_parser() -> argparse.ArgumentParser:
    from ..training import cli

    p = cli.RecipeArgumentParser(
        prog="detect.py",
        description="Object detection with a transformers DETR-family head (RT-DETR by default) on a Swin backbone, "
        "on any set in the Hub's detection convention (image + objects{bbox, category}) or a COCO-JSON folder. "
        "Launch with `python`, `fabric run`, `torchrun` or `accelerate launch`.",
    )
    d = cli.add_data_arguments(p, BUILTIN)
    d.add_argument("--image-column", default="image", help="image column")
    d.add_argument("--objects-column", default="objects", help="column of per-image objects {bbox: [[x, y, w, h], ...], category: [...]}")
    d.add_argument("--bbox-format", choices=BBOX_FORMATS, default="xywh",
                   help="how bbox is written, in pixels: xywh = COCO [x_min, y_min, width, height] (the Hub's convention), xyxy = corners, cxcywh = centre and size")
    d.add_argument("--id2label", default=None, help="JSON file mapping class index -> name (default: the names of the category ClassLabel)")
    d.add_argument("--num-labels", type=cli.positive_int, default=None, help="number of classes, when the category column has no names")
    cli.add_subset_arguments(d)

    m = p.add_argument_group("model")
    m.add_argument("--model", default="builtin", help="'builtin' (small Swin from scratch), a swin_hf preset (from scratch), or a swin_hf checkpoint whose encoder is loaded (classification, SimMIM, backbone, converted)")
    m.add_argument("--head", choices=sorted(HEADS), default=DEFAULT_HEAD, help="the transformers detector on the backbone")
    m.add_argument("--image-size", type=cli.positive_int, default=128, help="every image is resized to this square size (RT-DETR on COCO: 640)")
    m.add_argument("--hidden-size", type=cli.positive_int, default=64, help="width of the detector's transformer (paper: 256)")
    m.add_argument("--num-queries", type=cli.positive_int, default=30, help="object queries: the most objects found per image (paper: 300)")
    m.add_argument("--encoder-layers", type=cli.positive_int, default=1, help="transformer encoder layers of the head")
    m.add_argument("--decoder-layers", type=cli.checked(int, lambda v: v >= 2, "a whole number >= 2"), default=3,
                   help="transformer decoder layers of the head (paper: 6)")
    m.add_argument("--drop-path", type=cli.below_one, default=0.1, help="stochastic depth of the backbone")

    o = cli.add_optimisation_arguments(
        p, epochs=6, batch_size=16, lr=5e-4, min_lr_ratio=0.05, weight_decay=1e-4, lr_note="; RT-DETR, pre-trained: 1e-4"
    )
    o.add_argument("--grad-accum", type=cli.positive_int, default=1, help="batches per optimiser step")
    o.add_argument("--max-minutes", type=cli.positive_float, default=None, help="stop training after this many minutes (then evaluate and save)")
    o.add_argument("--layer-decay", type=cli.up_to_one, default=1.0, help="layer-wise lr decay over backbone blocks (1 = off)")
    o.add_argument("--ema-decay", type=cli.below_one, default=0.0, help="EMA of weights, evaluated and saved (0 = off)")

    a = p.add_argument_group("augmentation (kornia, images and boxes together)")
    a.add_argument("--hflip", type=cli.probability, default=0.5, help="horizontal flip probability")
    a.add_argument("--scale-range", type=cli.positive_float, nargs=2, default=(0.6, 1.4), help="random zoom range (below 1: zoom out)")
    a.add_argument("--translate", type=cli.below_one, default=0.1, help="random shift, as a fraction of the image size")
    a.add_argument("--jitter", type=cli.below_one, default=0.2, help="brightness/contrast/saturation jitter")

    cli.add_hardware_arguments(p)

    r = cli.add_run_arguments(p, "outputs/swin-detr", "model, card, metrics, pictures, plots, logs, checkpoints")
    r.add_argument("--checkpoint-every", type=cli.positive_int, default=None, help="also checkpoint every N steps (always at epoch ends)")
    r.add_argument("--keep-checkpoints", type=cli.nonnegative_int, default=2, help="newest checkpoints kept (0 = all)")
    r.add_argument("--eval-every-epochs", type=cli.positive_int, default=2, help="evaluate every N epochs (and at the end)")
    r.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume on GPUs)")
    r.add_argument("--num-pictures", type=cli.nonnegative_int, default=8, help="validation images drawn with true and predicted boxes")
    r.add_argument("--picture-threshold", type=cli.probability, default=0.5, help="lowest score of a box drawn in the pictures")
    return p


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def load_data(args):
    """The checked data (detection.data.DetectionData)."""
    from ..training.data import DataError

    splits, id2label = load_detection_splits(args.dataset, args.dataset_config, args.max_train_samples, args.max_eval_samples)
    if args.id2label:
        try:
            with open(args.id2label) as f:
                id2label = {int(k): str(v) for k, v in json.load(f).items()}
        except (OSError, ValueError, AttributeError) as error:
            raise DataError(f"--id2label {args.id2label!r} cannot be read ({error}); give a JSON file like {{\"0\": \"cat\"}}.") from error
        if sorted(id2label) != list(range(len(id2label))):
            raise DataError(f"--id2label {args.id2label!r} must number the classes 0..N-1, got {sorted(id2label)[:10]}.")
    elif args.num_labels:
        id2label = {i: f"class_{i}" for i in range(args.num_labels)}
    if args.num_labels and id2label is not None and args.num_labels != len(id2label):
        raise DataError(f"--num-labels {args.num_labels} but the class list has {len(id2label)} classes.")
    return prepare_detection(
        splits, id2label, args.image_column, args.objects_column, args.bbox_format, args.validation_fraction,
        args.max_train_samples, args.max_eval_samples, args.seed, args.train_split,
    )


def swin_source(args):
    """What --model names: a SwinConfig to start from scratch ('builtin', a preset) or a checkpoint path."""
    from .. import PRESETS, SwinConfig
    from ..model_source import check_model_source

    if args.model == "builtin":
        return SwinConfig(**BUILTIN_MODEL, image_size=args.image_size, drop_path_rate=args.drop_path)
    if args.model in PRESETS:
        return SwinConfig.from_preset(args.model, image_size=args.image_size, drop_path_rate=args.drop_path)
    check_model_source(args.model, "--model", extra_presets=("builtin",))
    return args.model


def check_image_size(args) -> None:
    """--image-size against what the head needs (RT-DETR: a multiple of the coarsest stride), before the
    data is read."""
    from .. import SwinConfig
    from ..training.errors import ModelError, UsageError

    source = swin_source(args)
    try:
        backbone = source if isinstance(source, SwinConfig) else SwinConfig.from_pretrained(source)
    except (TypeError, ValueError, OSError) as error:
        raise ModelError(f"--model {args.model!r}: {' '.join(str(error).split())[:400]}") from error
    multiple = size_multiple(detector_config(backbone, args.head))
    if args.image_size % multiple:
        raise UsageError(
            f"--image-size {args.image_size}: {args.head} needs a multiple of {multiple} (its feature pyramid doubles the "
            f"coarsest map, of stride {multiple}); try {max(multiple, round(args.image_size / multiple) * multiple)}."
        )


def build_model(args, id2label: dict[int, str]):
    from ..training.errors import ModelError

    head = head_settings(args.head, args.hidden_size, args.num_queries, args.encoder_layers, args.decoder_layers,
                         head_dim=16)
    try:
        return detector_from_encoder(swin_source(args), args.head, id2label=id2label, **head)
    except (TypeError, ValueError, OSError) as error:
        raise ModelError(f"--model {args.model!r}: {' '.join(str(error).split())[:400]}") from error


@dataclass
class Run:
    """What `fit`, `evaluate` and `finish` work on, built by `setup`. `state` is what a checkpoint holds."""

    args: argparse.Namespace
    fabric: Any
    session: Any
    data: Any  # detection.data.DetectionData
    model: Any  # as set up by Fabric
    raw_model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    ema: Any
    augment: BoxAugment
    train_loader: Any
    eval_loader: Any
    train_sampler: Any
    eval_set: DetectionDataset
    metrics: Any  # report.MetricLoggers
    state: dict
    batches_per_epoch: int
    total_steps: int
    started: float
    clock: float = 0.0
    skipped: set = field(default_factory=set)  # (split, file) of unreadable images
    running: list = field(default_factory=list)  # losses since the last log row
    epoch_losses: list = field(default_factory=list)  # losses of this epoch (its line)
    last_eval: dict | None = None
    display: Display | None = None

    @property
    def epochs(self) -> int:
        """The epoch the run ends in (for messages)."""
        return min(self.args.epochs, math.ceil(self.total_steps / math.ceil(self.batches_per_epoch / self.args.grad_accum)))

    @property
    def progress(self) -> dict:
        return self.state["progress"]


def setup(args, fabric) -> Run:
    """Everything before the first step: the output folder, the model source and the data are checked
    before anything is built; with --resume the newest readable checkpoint whose settings match is restored."""
    from .. import PRESETS
    from ..model_source import check_model_source
    from ..training.checkpoint import set_rng_state
    from ..training.data import SkipCounter
    from ..training.distributed import strategy_name
    from ..training.errors import UsageError
    from ..training.ema import EMA
    from ..training.optim import build_optimizer, build_scheduler, set_schedule_position
    from ..training.session import Session

    started = time.perf_counter()
    if strategy_name(fabric).startswith("fsdp"):
        raise UsageError("detect.py trains on one device or with DDP (--strategy ddp); sharded training (--strategy fsdp) "
                         "is for finetune.py, segment.py and pretrain_simmim.py.")
    settings = {k: v for k, v in vars(args).items() if k not in NOT_RECORDED}
    session = Session(
        fabric, "detect", args.output_dir, settings, overwrite=args.overwrite, resume=args.resume,
        allow_changed_config=args.allow_changed_config, keep_checkpoints=args.keep_checkpoints, fixed=RUN_FIXED,
        clip_grad=args.clip_grad, precision=fabric.strategy.precision.precision,
    )
    if args.model != "builtin":  # a missing folder or an unreachable Hub id fails before the data is read
        check_model_source(args.model, "--model", extra_presets=("builtin", *PRESETS))
    check_image_size(args)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    fabric.seed_everything(args.seed, workers=True)  # the same initial weights on every process
    data = load_data(args)
    model = build_model(args, data.id2label)
    processor = image_processor_for(args.head, args.image_size)

    skipped = SkipCounter()
    columns = dict(image_column=data.image_column, objects_column=data.objects_column, bbox_format=data.bbox_format)
    train_set = DetectionDataset(data.train, args.image_size, **columns, skipped=skipped)
    eval_set = DetectionDataset(data.validation, args.image_size, **columns, skipped=skipped)
    loader_settings = dict(seed=args.seed, num_workers=args.num_workers, collate_fn=collate, move_to_device=False)
    train_loader, train_sampler = resumable_loader(fabric, train_set, args.batch_size, True, **loader_settings)
    eval_loader, _ = resumable_loader(fabric, eval_set, args.batch_size, False, **loader_settings)
    rank, world = fabric.global_rank, fabric.world_size
    batches_per_epoch = train_sampler.batches_per_epoch()
    progress = new_progress()
    total = plan_steps(args, batches_per_epoch, progress)
    depths = model.config.backbone_config.depths
    raw_model = model
    model, optimizer = fabric.setup(model, build_optimizer(model, args.lr, args.weight_decay, args.layer_decay, depths))
    scheduler = build_scheduler(optimizer, total, round(args.warmup_ratio * total), args.min_lr_ratio)
    ema = EMA(raw_model, args.ema_decay) if args.ema_decay > 0 else None
    # per-process seeds from here on: processes draw different augmentations, reproducibly
    fabric.seed_everything(args.seed + fabric.global_rank, workers=True, verbose=False)
    augment = BoxAugment(args.hflip, tuple(args.scale_range), args.translate, args.jitter)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "progress": progress, "rng": None}
    if ema is not None:
        state["ema"] = ema
    run = Run(args, fabric, session, data, model, raw_model, processor, optimizer, scheduler, ema, augment,
              train_loader, eval_loader, train_sampler, eval_set, MetricLoggers(fabric, args.output_dir, resume=args.resume), state,
              batches_per_epoch, total, started, skipped=set())
    data_settings = {"class_names": list(data.id2label.values()), "train_examples": len(data.train),
                     "validation_examples": len(data.validation), "world_size": world}
    if session.begin(state, data_settings, optional=("ema",)):
        rngs = state["rng"]
        set_rng_state(rngs[rank] if len(rngs) == world else rngs[0])
        if "ema" in session.missing:
            run.ema = state["ema"] = EMA(raw_model, args.ema_decay)
        run.total_steps = plan_steps(args, batches_per_epoch, state["progress"])
        scheduler.plan.update(total_steps=run.total_steps, warmup_steps=round(args.warmup_ratio * run.total_steps))
        set_schedule_position(scheduler)
        p = state["progress"]
        fabric.print(f"Resumed from {session.resumed_from}: step {p['step']}, epoch {p['epoch']}, batch {p['batch']}.")
    logger.info("%s + Swin: %d classes, %d train / %d validation images at %d px, %d steps", args.head,
                len(data.id2label), len(data.train), len(data.validation), args.image_size, run.total_steps)
    return run


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def detection_loss(run: Run, batch: dict, share: float = 1.0) -> torch.Tensor:
    """The head's own loss (Hungarian matching; classification, L1 and GIoU box terms; auxiliary and, for
    RT-DETR, denoising losses) on the augmented batch, times `share` (the batch's part of an accumulated
    step). With several processes every parameter takes part (a head may leave some unused in a step, e.g.
    RT-DETR's denoising on a batch without objects, which DDP refuses): their sum, times zero, is added."""
    device = run.fabric.device
    images = batch["pixel_values"].to(device).float() / 255.0
    images, boxes, labels = run.augment(images, [b.to(device) for b in batch["boxes"]], [c.to(device) for c in batch["labels"]])
    height, width = images.shape[-2:]
    pixels = normalise(images, run.processor.image_mean, run.processor.image_std)
    loss = run.model(pixel_values=pixels, labels=to_detr_labels(boxes, labels, height, width)).loss * share
    if run.fabric.world_size > 1:
        loss = loss + 0.0 * sum(p.sum() for p in run.model.parameters() if p.requires_grad)
    return loss


def fit(run: Run, stop=None) -> None:
    """Train until `total_steps` (or until `stop()` says so on every process); each step accumulates
    --grad-accum batches. Checkpoints every --checkpoint-every steps and at epoch ends; evaluation every
    --eval-every-epochs epochs and at the end."""
    args, progress = run.args, run.progress
    run.clock = time.perf_counter()
    run.display = Display(run.fabric, run.total_steps, progress["step"], enabled=not args.no_progress)
    run.model.train()
    stopped = False
    while progress["step"] < run.total_steps and progress["epoch"] < args.epochs and not stopped:
        run.train_sampler.set_position(progress["epoch"], progress["batch"])
        batches = iter(run.train_loader)
        while progress["step"] < run.total_steps and not stopped:
            group = [batch for _, batch in zip(range(args.grad_accum), batches)]
            if not group:
                break
            train_step(run, group)
            stopped = stop is not None and stop()
            step, mid_epoch = progress["step"], progress["batch"] < run.batches_per_epoch
            if args.checkpoint_every and step % args.checkpoint_every == 0 and step < run.total_steps and mid_epoch and not stopped:
                save_checkpoint(run)  # (at an epoch's last step, finish_epoch writes it)
        finish_epoch(run, args.eval_every_epochs, evaluate, stopped)
    run.display.close()


def train_step(run: Run, group: list[dict]) -> None:
    """One optimiser step over the batches of `group` (each weighted by its share of the images), then the
    EMA, bookkeeping and logging."""
    for batch in group:
        run.skipped.update(("train", name) for name in batch["skipped_files"])
    usable = [batch for batch in group if batch["pixel_values"] is not None]
    images = sum(len(batch["pixel_values"]) for batch in usable)
    micro = [functools.partial(detection_loss, run, batch, len(batch["pixel_values"]) / images) for batch in usable]
    step, lr = accumulated_step(run, micro, run.args.clip_grad or None, len(group), images)
    if step % run.args.log_every == 0 or step == 1 or step == run.total_steps:
        log_training(run, step, lr)


def evaluate(run: Run) -> str:
    """COCO mAP on the validation split (with the EMA weights, if any); logged, and the model is saved to
    --output-dir when its mAP is the best so far. Returns the epoch line's part (the result is in
    `run.last_eval`)."""
    from ..training.ema import swapped_weights

    progress = run.progress
    run.session.guard.check()
    with swapped_weights(run.raw_model, run.ema):
        result = evaluate_detection(run.model, run.processor, run.eval_loader, run.data.id2label,
                                    gather=lambda rows: gather_objects(run.fabric, rows), skipped=run.skipped)
    row = {"step": progress["step"], "epoch": progress["epoch"],
           **{f"val_{k}": v for k, v in result.items() if k not in ("per_class_ap", "images")}}
    progress["history"].append(row)
    run.last_eval = result
    run.metrics.log({k: v for k, v in row.items() if k != "step"}, progress["step"])
    message = f"val mAP {result['map']:.4f}, mAP50 {result['map_50']:.4f}, mAP75 {result['map_75']:.4f}"
    best = progress["best"]
    if best is None or result["map"] > best["val_map"]:
        progress["best"] = {**row, "per_class_ap": result["per_class_ap"]}
        with swapped_weights(run.raw_model, run.ema):
            run.session.save_model(lambda folder, weights: save_for_pipeline(run.raw_model, run.processor, folder, weights),
                                   run.raw_model, progress["step"], "best model")
        message += " (best so far, saved)"
    return message


def save_for_pipeline(model, processor, directory: str, weights: dict | None = None) -> None:
    """Model + image processor, so that ``pipeline("object-detection", model=directory)`` loads it (after
    ``import swin_hf``, which teaches transformers the "swin_hf" backbone type). `weights`: the whole
    tensors of a sharded model (default: the model's own)."""
    model.save_pretrained(directory, state_dict=weights)
    processor.save_pretrained(directory)


# --------------------------------------------------------------------------------------------------
# The outputs
# --------------------------------------------------------------------------------------------------


def finish(run: Run) -> dict:
    """Final weights (checkpoints/final-weights.safetensors), metrics.json, curves, pictures of the best
    model and the model card (rank 0); the summary on every process."""
    from ..training import report
    from ..training.distributed import strategy_name

    fabric, args, progress = run.fabric, run.args, run.progress
    run.session.guard.check()
    run.metrics.finalize()
    out = args.output_dir

    def write_final(folder: str, weights: dict) -> None:  # the last (not EMA, not best) weights, e.g. to compare runs
        from safetensors.torch import save_model  # (heads share tensors between decoder layers: stored once)

        save_model(run.raw_model, os.path.join(folder, "final-weights.safetensors"))  # (never sharded: see setup)

    run.session.save_model(write_final, run.raw_model, progress["step"], "final weights", run.session.checkpoints)
    best = progress["best"] or {}
    skipped = set().union(*gather_objects(fabric, run.skipped))
    per_process, total = run.display.rates()
    train_seconds = progress["elapsed"] + time.perf_counter() - run.clock
    summary = {
        "head": args.head,
        "map": best.get("val_map"),
        "map_50": best.get("val_map_50"),
        "map_75": best.get("val_map_75"),
        "map_small": best.get("val_map_small"),
        "map_medium": best.get("val_map_medium"),
        "map_large": best.get("val_map_large"),
        "per_class_ap": best.get("per_class_ap"),
        "best_step": best.get("step"),
        "best_epoch": best.get("epoch"),
        "final_map_50": run.last_eval["map_50"] if run.last_eval else None,
        "steps": progress["step"],
        "epochs": progress["epoch"],
        "train_examples": len(run.data.train),
        "val_examples": len(run.data.validation),
        "num_classes": len(run.data.id2label),
        "data_checks": {name: vars(stats) for name, stats in run.data.stats.items()},
        "skipped_images": len(skipped),
        "world_size": fabric.world_size,
        "strategy": strategy_name(fabric),
        "images_per_s": round(total, 2),
        "images_per_s_per_process": round(per_process, 2),
        "image_size": args.image_size,
        "train_minutes": round(train_seconds / 60, 2),
        "wall_minutes": round((time.perf_counter() - run.started) / 60, 2),
        "output_dir": os.path.abspath(out),
    }
    summary = {k: v for k, v in summary.items() if v is not None}
    if fabric.is_global_zero:
        if best and args.num_pictures:
            from transformers import AutoModelForObjectDetection

            best_model = AutoModelForObjectDetection.from_pretrained(out).to(fabric.device)
            save_pictures(best_model, run.processor, run.eval_set, os.path.join(out, "pictures"), run.data.id2label,
                          args.num_pictures, args.picture_threshold)
        report.write_report(out, summary, progress["history"], model_card(run, summary, len(skipped)),
                            {"val_map": "mAP", "val_map_50": "mAP50"}, "Validation box mAP")
    fabric.barrier()
    return summary


def model_card(run: Run, summary: dict, skipped: int) -> str:
    from ..training import report

    args, out = run.args, run.args.output_dir
    hyper = {k: v for k, v in vars(args).items() if k not in ("output_dir", "overwrite", "resume")}
    hyper.update(total_steps=run.total_steps, world_size=run.fabric.world_size, head=type(run.raw_model).__name__)
    card_metrics = {k: summary[k] for k in ("map", "map_50", "map_75", "best_epoch") if k in summary}
    card_metrics.update({f"AP {name}": ap for name, ap in summary.get("per_class_ap", {}).items()})
    notes = run.data.notes + ([f"{skipped} unreadable image(s) were skipped"] if skipped else [])
    return report.model_card(
        os.path.basename(os.path.abspath(out)), args.model, args.dataset, list(run.data.id2label.values()), hyper,
        card_metrics, notes, task="object-detection", version=run.raw_model.config.backbone_config.version,
    )


def run(args, fabric) -> dict:
    """Train and evaluate; returns the summary (also written to --output-dir/metrics.json by rank 0)."""
    state = setup(args, fabric)
    start = time.time()

    def out_of_time() -> bool:  # every process must agree to stop, or the collectives that follow would hang
        late = args.max_minutes is not None and (time.time() - start) / 60 >= args.max_minutes
        return bool(fabric.all_reduce(torch.tensor(float(late)), reduce_op="max").item())

    try:
        fit(state, out_of_time if args.max_minutes else None)
        return finish(state)
    finally:
        try:
            state.metrics.finalize("failed")  # after a failure no log file stays open (no-op after finish)
        except OSError:
            pass


def summary_line(summary: dict) -> str:
    """The human summary printed at the end of a run."""
    per_class = ", ".join(f"{k} {v:.3f}" for k, v in summary.get("per_class_ap", {}).items())
    if "map" not in summary:
        return "no evaluation ran"
    return (f"validation mAP {summary['map']:.4f}, mAP50 {summary['map_50']:.4f}, mAP75 {summary['map_75']:.4f} "
            f"(AP per class: {per_class}) after {summary['train_minutes']:.1f} min of training ({summary['steps']} steps, "
            f"{summary['world_size']} process{'es' if summary['world_size'] > 1 else ''})")


def main(argv: list[str] | None = None) -> int:
    from ..training.cli import builtin_run_defaults, launch

    def prepare(args):
        builtin = args.dataset == BUILTIN and args.model == "builtin"
        builtin_run_defaults(args, builtin, one_thread=False)  # (its built-in run is measured in fp32 with torch's threads)
        default_run = (builtin and args.head == DEFAULT_HEAD
                       and not (args.max_steps or args.max_train_samples or args.max_eval_samples or args.max_minutes))

        def report(summary: dict) -> str:
            lines = ["", summary_line(summary)]
            if default_run and "map_50" in summary:
                met = summary["map_50"] >= TARGET_MAP50 and summary["train_minutes"] < TARGET_MINUTES
                lines.append(f"target mAP50 >= {TARGET_MAP50} in < {TARGET_MINUTES:g} min: {'met' if met else 'NOT met'}")
            if summary.get("skipped_images"):
                lines.append(f"{summary['skipped_images']} unreadable image(s) skipped")
            lines.append(f"outputs: {summary['output_dir']} (model for pipeline('object-detection'), README.md, metrics.json, "
                         "training_curves.png, pictures/, logs/)")
            return "\n".join(lines)

        return (lambda fabric: run(args, fabric)), report

    return launch(build_parser(), argv, prepare)


__all__ = [
    "BUILTIN_MODEL",
    "RUN_FIXED",
    "Run",
    "build_model",
    "build_parser",
    "check_image_size",
    "detection_loss",
    "evaluate",
    "finish",
    "fit",
    "model_card",
    "train_step",
    "load_data",
    "main",
    "run",
    "save_for_pipeline",
    "setup",
    "summary_line",
    "swin_source",
]
