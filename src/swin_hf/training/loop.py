"""The Fabric training loop of the image-classification recipe.

`run(config)` does everything after the launcher: data, model, optimiser, the loop with
accumulation / clipping / EMA / checkpoints, distributed evaluation, and the outputs (rank 0 only).
Call it inside a launched Fabric (see recipes/finetune.py) or let it create one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .augment import AugmentConfig, BatchAugment, soft_cross_entropy
from .checkpoint import checkpoint_path, latest_checkpoint, prepare_output_dir, rng_state, save_atomic, set_rng_state
from .data import (
    DIGITS,
    ImageClassificationDataset,
    ResumableSampler,
    SkipCounter,
    collate_skipping,
    load_splits,
    prepare,
)
from .ema import EMA, swapped_weights
from .optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

# Small models defined by the recipes (the paper's models are in swin_hf.PRESETS).
RECIPE_PRESETS: dict[str, dict] = {
    # 8x8 digits upscaled to 16x16: patch 2 -> 8x8 tokens, two stages of 4x4 windows, ~136k parameters
    "swin-digits": dict(
        image_size=16, patch_size=2, embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=4, mlp_ratio=4.0
    ),
}


@dataclass
class TrainConfig:
    # data
    dataset: str | None = DIGITS
    dataset_config: str | None = None
    train_dir: str | None = None
    validation_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    train_val_split: float = 0.15
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_workers: int = 0
    cache_images: bool = True
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
    model = SwinForImageClassification.from_pretrained(
        config.model,
        ignore_mismatched_sizes=True,
        drop_path_rate=config.drop_path,
        id2label=id2label,
        label2id=label2id,
        **overrides,
    )
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


def _all_gather_objects(fabric, obj):
    if fabric.world_size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * fabric.world_size
    dist.all_gather_object(out, obj)
    return out


def _format_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(fabric, model, loader, num_classes: int, accuracy_metric) -> dict:
    """Top-1 (and top-5 with >= 5 classes) accuracy and loss over the whole validation split, gathered
    from all processes (padding duplicates removed by example index)."""
    model.eval()
    rows = []  # (index, label, top1, top5-hit-or-top1, loss)
    for batch in loader:
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
    for part in _all_gather_objects(fabric, rows):
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


def run(config: TrainConfig, fabric=None) -> dict:
    """Train and evaluate; returns the summary (also written to output_dir/metrics.json by rank 0)."""
    from lightning.fabric import Fabric
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    from swin_hf.metrics import load_accuracy

    from . import report

    started = time.perf_counter()
    out = config.output_dir
    if fabric is None:
        fabric = Fabric(accelerator="cpu", devices=1)
        fabric.launch()
    prepare_output_dir(fabric, out, config.overwrite, config.resume)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    fabric.seed_everything(config.seed, workers=True)  # same initial weights on every rank

    # data ------------------------------------------------------------------------------------------
    splits = load_splits(config.dataset, config.train_dir, config.validation_dir, config.dataset_config)
    source = config.train_dir or config.dataset or DIGITS
    data = prepare(
        splits,
        config.image_column,
        config.label_column,
        config.train_val_split,
        config.max_train_samples,
        config.max_eval_samples,
        config.seed,
        source,
    )
    num_classes = len(data.class_names)

    # model -----------------------------------------------------------------------------------------
    model, processor, from_scratch = build_model(config, data.class_names)
    image_size = model.config.image_size
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()
    raw_model = model

    from swin_hf import SwinImageProcessor

    train_processor = SwinImageProcessor.for_image_size(image_size, crop_pct=1.0, do_normalize=False)
    skipped = SkipCounter()
    train_set = ImageClassificationDataset(
        data.train, data.image_column, data.label_column, PreprocessCache(train_processor, config.cache_images), skipped
    )
    eval_set = ImageClassificationDataset(
        data.validation, data.image_column, data.label_column, PreprocessCache(processor, config.cache_images), skipped
    )
    train_sampler = ResumableSampler(
        len(train_set), config.batch_size, True, config.seed, fabric.global_rank, fabric.world_size, drop_last=True
    )
    if train_sampler.batches_per_epoch() == 0:
        train_sampler.drop_last = False
    eval_sampler = ResumableSampler(len(eval_set), config.batch_size, False, config.seed, fabric.global_rank, fabric.world_size)

    def loader(dataset, sampler):
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=sampler,
            collate_fn=collate_skipping,
            num_workers=config.num_workers,
            # own generator: creating the iterator must not consume the global RNG (exact resume)
            generator=torch.Generator().manual_seed(config.seed),
            persistent_workers=False,
        )

    train_loader, eval_loader = fabric.setup_dataloaders(
        loader(train_set, train_sampler), loader(eval_set, eval_sampler), use_distributed_sampler=False
    )

    batches_per_epoch = train_sampler.batches_per_epoch()
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps) if config.epochs else config.max_steps
    epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total_steps)

    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.layer_decay, model.config.depths)
    scheduler = build_scheduler(optimizer, total_steps, warmup, config.min_lr_ratio)
    if config.compile:
        model = torch.compile(model)
    model, optimizer = fabric.setup(model, optimizer)
    ema = EMA(raw_model, config.ema_decay) if config.ema_decay > 0 else None  # after setup: synced weights
    # per-rank seed from here on: ranks draw different augmentations and drop paths, reproducibly
    fabric.seed_everything(config.seed + fabric.global_rank, workers=True, verbose=False)
    mean, std = processor.image_mean, processor.image_std
    augment = BatchAugment(dataclasses.replace(config.augment, image_size=image_size), mean, std, num_classes)
    augment = augment.to(fabric.device)
    accuracy_metric = load_accuracy()

    loggers_ready = False
    if fabric.is_global_zero:
        loggers = [CSVLogger(out, name="logs", version=""), TensorBoardLogger(out, name="logs", version="tensorboard")]
        fabric._loggers = loggers
        loggers_ready = True

    # resume ----------------------------------------------------------------------------------------
    progress = {"step": 0, "epoch": 0, "batch": 0, "history": [], "best": None, "elapsed": 0.0}
    ckpt_dir = os.path.join(out, "checkpoints")
    if config.resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            fabric.print(f"--resume: no checkpoint in {ckpt_dir}; starting from scratch.")
        else:
            state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "progress": progress, "rng": None}
            if ema is not None:
                state["ema"] = ema
            fabric.load(path, state, weights_only=False)
            progress = state["progress"]
            rngs = state["rng"]
            set_rng_state(rngs[fabric.global_rank] if len(rngs) == fabric.world_size else rngs[0])
            fabric.print(f"Resumed from {path}: step {progress['step']}, epoch {progress['epoch']}, batch {progress['batch']}.")

    def save_checkpoint():
        state = {
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "progress": {**progress, "elapsed": progress["elapsed"] + time.perf_counter() - segment_start},
            "rng": _all_gather_objects(fabric, rng_state()),
            "config": config.flat(),
        }
        if ema is not None:
            state["ema"] = ema
        save_atomic(fabric, checkpoint_path(ckpt_dir, progress["step"]), state, keep=config.keep_checkpoints)

    def save_best(result):
        """The evaluated weights as a save_pretrained directory in output_dir (rank 0, atomically per file)."""
        if not fabric.is_global_zero:
            return
        tmp = os.path.join(out, ".best-tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with swapped_weights(raw_model, ema):
            raw_model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), os.path.join(out, name))
        shutil.rmtree(tmp, ignore_errors=True)

    # loop ------------------------------------------------------------------------------------------
    segment_start = time.perf_counter()
    bar = None
    if fabric.is_global_zero and config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=progress["step"], unit="step", dynamic_ncols=True, desc="train")
    seen, seen_start = 0, time.perf_counter()
    record = [] if config.debug_record_ranks else None
    last_eval = None
    model.train()
    while progress["step"] < total_steps and progress["epoch"] < epochs:
        epoch = progress["epoch"]
        train_sampler.set_position(epoch, progress["batch"])
        micro, running = 0, []
        iterator = iter(train_loader)
        while True:
            group = []
            for batch in iterator:
                group.append(batch)
                if len(group) == config.grad_accum:
                    break
            if not group:
                break
            usable = [b for b in group if b["pixel_values"] is not None]
            examples = sum(b["labels"].numel() for b in usable)
            for i, batch in enumerate(usable):
                images, targets = augment(batch["pixel_values"], batch["labels"])
                with fabric.no_backward_sync(model, enabled=i < len(usable) - 1):
                    logits = model(pixel_values=images).logits
                    loss = soft_cross_entropy(logits, targets) * batch["labels"].numel() / max(examples, 1)
                    fabric.backward(loss)
                running.append(loss.detach() * max(examples, 1) / batch["labels"].numel() / len(usable))
                if record is not None:
                    record.append(batch["index"].tolist())
            if config.clip_grad and usable:
                fabric.clip_gradients(model, optimizer, max_norm=config.clip_grad)
            if usable:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update(raw_model)
            progress["step"] += 1
            progress["batch"] += len(group)
            micro += len(group)
            seen += examples * fabric.world_size
            step = progress["step"]
            if step % config.log_every == 0 or step == total_steps:
                train_loss = float(torch.stack(running).mean()) if running else float("nan")
                running = []
                lr = optimizer.param_groups[-1]["lr"]
                rate = seen / max(time.perf_counter() - seen_start, 1e-9)
                row = {"step": step, "epoch": epoch, "train_loss": train_loss, "lr": lr, "images_per_s": rate}
                progress["history"].append(row)
                if loggers_ready:
                    fabric.log_dict({k: v for k, v in row.items() if k != "step"}, step=step)
                if bar is not None:
                    bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
            if bar is not None:
                bar.update(1)
            if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
                save_checkpoint()
            if step >= total_steps:
                break
        # epoch end
        if record is not None:
            import json

            os.makedirs(config.debug_record_ranks, exist_ok=True)
            first = next(p for p in raw_model.parameters())
            with open(os.path.join(config.debug_record_ranks, f"rank{fabric.global_rank}-epoch{epoch}.json"), "w") as f:
                json.dump({"indices": record, "weights": [float(p.detach().double().sum()) for p in raw_model.parameters()], "first": first.detach().flatten()[:8].tolist()}, f)
            record = []
        finished_epoch = progress["batch"] >= batches_per_epoch or progress["step"] >= total_steps
        if finished_epoch:
            progress["epoch"] += 1
            progress["batch"] = 0
        done = progress["step"] >= total_steps
        if finished_epoch and (progress["epoch"] % config.eval_every_epochs == 0 or done):
            with swapped_weights(raw_model, ema):
                result = evaluate_model(fabric, model, eval_loader, num_classes, accuracy_metric)
            row = {"step": progress["step"], "epoch": progress["epoch"], **{k: v for k, v in result.items() if k.startswith("val_")}}
            progress["history"].append(row)
            last_eval = result
            if loggers_ready:
                fabric.log_dict({k: v for k, v in row.items() if k not in ("step", "val_examples")}, step=progress["step"])
            message = f"epoch {progress['epoch']}/{epochs}: val top-1 {result['val_top1']:.2%}"
            if "val_top5" in result:
                message += f", top-5 {result['val_top5']:.2%}"
            message += f", loss {result['val_loss']:.4f}"
            best = progress["best"]
            if best is None or result["val_top1"] > best["val_top1"]:
                progress["best"] = {**row, "predictions": result["predictions"], "references": result["references"]}
                save_best(result)
                message += " (best so far, saved)"
            if bar is not None:
                bar.write(message)
            else:
                fabric.print(message)
        if finished_epoch and not done:
            save_checkpoint()
        if done:
            break
    if bar is not None:
        bar.close()

    # outputs ---------------------------------------------------------------------------------------
    if loggers_ready:
        for experiment_logger in fabric.loggers:
            experiment_logger.finalize("success")
    if fabric.is_global_zero:  # the final (not EMA, not best) training weights, e.g. to compare runs
        from safetensors.torch import save_file

        os.makedirs(ckpt_dir, exist_ok=True)
        final = {k: v.detach().cpu().contiguous() for k, v in raw_model.state_dict().items()}
        save_file(final, os.path.join(ckpt_dir, ".final.tmp"))
        os.replace(os.path.join(ckpt_dir, ".final.tmp"), os.path.join(ckpt_dir, "final-weights.safetensors"))
    elapsed = progress["elapsed"] + time.perf_counter() - segment_start
    best = progress["best"] or {}
    skipped_total = sum(_all_gather_objects(fabric, skipped.count))
    summary = {
        "best_val_top1": best.get("val_top1"),
        "best_val_top5": best.get("val_top5"),
        "best_val_loss": best.get("val_loss"),
        "best_epoch": best.get("epoch"),
        "best_step": best.get("step"),
        "final_val_top1": last_eval["val_top1"] if last_eval else None,
        "steps": progress["step"],
        "epochs": progress["epoch"],
        "train_examples": len(data.train),
        "val_examples": len(data.validation),
        "num_classes": num_classes,
        "skipped_images": skipped_total,
        "world_size": fabric.world_size,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_time_s": round(elapsed, 2),
        "from_scratch": from_scratch,
    }
    summary = {k: v for k, v in summary.items() if v is not None}
    if fabric.is_global_zero:
        report.write_json(os.path.join(out, "metrics.json"), {**summary, "history": progress["history"]})
        history = progress["history"]
        report.plot_curves(history, os.path.join(out, "training_curves.png"))
        if best:
            matrix = report.confusion_matrix(best["references"], best["predictions"], num_classes)
            report.plot_confusion(matrix, data.class_names, os.path.join(out, "confusion_matrix.png"))
        hyper = {k: v for k, v in config.flat().items() if k not in ("debug_record_ranks", "progress")}
        hyper.update(image_size=image_size, total_steps=total_steps, warmup_steps=warmup, world_size=fabric.world_size)
        card_metrics = {k: summary[k] for k in ("best_val_top1", "best_val_top5", "best_val_loss", "best_epoch") if k in summary}
        card = report.model_card(
            config.hub_model_id or os.path.basename(os.path.abspath(out)),
            config.model,
            source,
            data.class_names,
            hyper,
            card_metrics,
            data.notes + ([f"{skipped_total} unreadable image(s) were skipped"] if skipped_total else []),
        )
        with open(os.path.join(out, "README.md"), "w") as f:
            f.write(card)
        if skipped_total:
            logger.warning("%d unreadable image(s) were skipped during this run.", skipped_total)
        if config.push_to_hub:
            repo = config.hub_model_id or os.path.basename(os.path.abspath(out))
            from huggingface_hub import upload_folder, create_repo

            create_repo(repo, exist_ok=True)
            upload_folder(repo_id=repo, folder_path=out, ignore_patterns=["checkpoints/*", ".best-tmp/*"])
            fabric.print(f"Pushed {out} to https://huggingface.co/{repo}")
    fabric.barrier()
    return summary


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


__all__ = ["RECIPE_PRESETS", "TrainConfig", "build_model", "evaluate_model", "run", "summary_lines"]
