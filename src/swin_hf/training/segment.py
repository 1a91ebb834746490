"""Semantic segmentation recipe (recipes/segment.py): UperNet + a swin_hf backbone on a `datasets` set.

Launch exactly like recipes/finetune.py (`python`, `fabric run`, `torchrun`, `accelerate launch`); the
launcher handling, dataset loading, AdamW groups (layer-wise decay over the backbone's blocks), cosine
schedule, atomic checkpoints and reports are the fine-tuning recipe's (swin_hf.training). What is
segmentation-specific lives in swin_hf.segmentation_* (data, joint augmentation, evaluation, saving).

Input: any `datasets` set with an image column and a label-map column (`image` + `annotation`, as
ADE20K-style Hub sets have). Output folder: the UperNet model and an image processor that
``pipeline("image-segmentation")`` loads (after ``import swin_hf``), metrics.json (mIoU, mean accuracy,
pixel accuracy, per class), log.csv, overlays/ (image | truth | prediction PNGs), checkpoints/.

Default (no arguments, offline): the built-in texture-collage set (real photos from scikit-learn and
matplotlib, see swin_hf.segmentation_data; 320 train / 64 validation images), a small Swin (C=32,
depths 2-2-2-2, 2.95M parameters with the UperNet head) from scratch at 64 px, 8 epochs (160 steps of 16).
Measured: validation mIoU 0.846, pixel accuracy 0.916 after 7.1 minutes on 2 CPU cores shared with
other jobs (mIoU 0.68 after 2 epochs, 0.76 after 4, 0.84 after 6).
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

logger = logging.getLogger(__name__)

BUILTIN = "texture-collage"
# a small Swin for the built-in set: 64 px -> maps of 16, 8, 4, 2 with 4x4 windows
BUILTIN_MODEL = dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4, patch_size=4)


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_hardware_arguments, add_optimisation_arguments, add_run_arguments

    p = argparse.ArgumentParser(
        prog="segment.py",
        description="Semantic segmentation with UperNet on a Swin backbone (any `datasets` set with image + "
        "label-map columns). Launch with `python`, `fabric run`, `torchrun` or `accelerate launch`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=BUILTIN, help="datasets.load_dataset name/path or saved DatasetDict dir; 'texture-collage' = built-in, offline")
    d.add_argument("--dataset-config", default=None, help="dataset configuration name")
    d.add_argument("--image-column", default="image", help="image column")
    d.add_argument("--label-column", default="annotation", help="label-map column (an image of class indices)")
    d.add_argument("--num-labels", type=int, default=None, help="number of classes (built-in: 3; needed for other sets unless --id2label)")
    d.add_argument("--id2label", default=None, help="JSON file mapping class index -> name")
    d.add_argument("--reduce-labels", action="store_true", help="label 0 is 'other' (ADE20K): ignore it, shift the rest down")
    d.add_argument("--validation-fraction", type=float, default=0.1, help="split off for validation when the set has none")
    d.add_argument("--max-train-samples", type=int, default=None, help="use only the first N training examples")
    d.add_argument("--max-eval-samples", type=int, default=None, help="use only the first N validation examples")
    d.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")

    m = p.add_argument_group("model")
    m.add_argument("--model", default="builtin", help="'builtin' (small Swin from scratch), a swin_hf preset (from scratch), or a swin_hf checkpoint whose encoder is loaded (classification, SimMIM, backbone)")
    m.add_argument("--image-size", type=int, default=64, help="training crop / evaluation size (ADE20K: 512)")
    m.add_argument("--hidden-size", type=int, default=64, help="UperNet channels (paper: 512)")
    m.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth of the backbone")
    m.add_argument("--scale-range", type=float, nargs=2, default=(0.5, 2.0), help="random rescale range of training images")

    o = add_optimisation_arguments(
        p, epochs=8, batch_size=16, lr=1e-3, min_lr_ratio=0.0, weight_decay=0.01, lr_note="; paper, pre-trained: 6e-5"
    )
    o.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes (then evaluate and save)")
    o.add_argument("--layer-decay", type=float, default=1.0, help="layer-wise lr decay over backbone blocks (1 = off)")

    add_hardware_arguments(p)

    r = add_run_arguments(p, "outputs/swin-upernet", "model, metrics, overlays, checkpoints")
    r.add_argument("--eval-every-epochs", type=int, default=2, help="evaluate every N epochs (and at the end)")
    r.add_argument("--num-overlays", type=int, default=8, help="validation images rendered as overlays")
    return p


def load_data(args):
    """(train split, validation split, id2label)."""
    import json

    from ..segmentation_data import texture_collage_dataset

    if args.dataset == BUILTIN:
        splits, id2label = texture_collage_dataset(seed=args.seed)
    else:
        from .data import load_splits

        splits = load_splits(dataset=args.dataset, dataset_config=args.dataset_config)
        if args.id2label:
            with open(args.id2label) as f:
                id2label = {int(k): v for k, v in json.load(f).items()}
        elif args.num_labels:
            id2label = {i: f"class_{i}" for i in range(args.num_labels)}
        else:
            raise ValueError("Give --num-labels or --id2label for a dataset other than the built-in one.")
    if args.num_labels and args.num_labels != len(id2label):
        raise ValueError(f"--num-labels {args.num_labels} but id2label has {len(id2label)} classes.")
    train = splits["train"]
    validation = next((splits[name] for name in ("validation", "val", "test") if name in splits), None)
    if validation is None:
        parts = train.train_test_split(test_size=args.validation_fraction, seed=args.seed)
        train, validation = parts["train"], parts["test"]
        logger.info("no validation split: held out %d training examples", len(validation))
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        validation = validation.select(range(min(args.max_eval_samples, len(validation))))
    return train, validation, id2label


def build_model(args, id2label: dict[int, str]):
    from .. import PRESETS, SwinConfig
    from ..segmentation import upernet_from_encoder

    head = dict(hidden_size=args.hidden_size, auxiliary_channels=max(16, args.hidden_size // 2))
    if args.model == "builtin":
        source = SwinConfig(**BUILTIN_MODEL, image_size=args.image_size, drop_path_rate=args.drop_path)
    elif args.model in PRESETS:
        source = SwinConfig.from_preset(args.model, image_size=args.image_size, drop_path_rate=args.drop_path)
    else:
        source = args.model  # a checkpoint: its encoder weights are loaded
    model = upernet_from_encoder(source, num_labels=len(id2label), id2label=id2label, **head)
    model.config.loss_ignore_index = 255
    return model


def run(args, fabric) -> dict:
    from ..segmentation_data import JointTransform, SegmentationDataset, collate
    from ..segmentation_train import evaluate_segmentation, save_for_pipeline, save_overlays, segmentation_loss
    from .checkpoint import checkpoint_path, latest_checkpoint, prepare_output_dir, save_atomic
    from .optim import build_optimizer, build_scheduler
    from .report import CSVLog, write_json

    out = args.output_dir
    prepare_output_dir(fabric, out, args.overwrite, args.resume)
    fabric.seed_everything(args.seed)
    train_split, val_split, id2label = load_data(args)
    num_labels = len(id2label)

    S = args.image_size
    train_transform = JointTransform(S, train=True, scale_range=tuple(args.scale_range), reduce_labels=args.reduce_labels,
                                     seed=args.seed + fabric.global_rank)
    eval_transform = JointTransform(S, train=False, reduce_labels=args.reduce_labels)
    columns = dict(image_column=args.image_column, label_column=args.label_column)
    train_loader = torch.utils.data.DataLoader(
        SegmentationDataset(train_split, train_transform, **columns), batch_size=args.batch_size, shuffle=True,
        drop_last=len(train_split) >= args.batch_size, collate_fn=collate, num_workers=args.num_workers,
    )
    val_loader = torch.utils.data.DataLoader(
        SegmentationDataset(val_split, eval_transform, **columns), batch_size=args.batch_size, collate_fn=collate,
        num_workers=args.num_workers,
    )
    train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)

    model = build_model(args, id2label)
    total = args.max_steps or args.epochs * len(train_loader)
    depths = model.config.backbone_config.depths
    optimizer = build_optimizer(model, args.lr, args.weight_decay, args.layer_decay, depths)
    scheduler = build_scheduler(optimizer, total, round(args.warmup_ratio * total), args.min_lr_ratio)
    model, optimizer = fabric.setup(model, optimizer)

    step, epoch, history = 0, 0, []
    checkpoints = os.path.join(out, "checkpoints")
    if args.resume and (found := latest_checkpoint(checkpoints)):
        state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "step": 0, "epoch": 0, "history": []}
        fabric.load(found, state)
        step, epoch, history = state["step"], state["epoch"], state["history"]
        logger.info("resumed from %s at step %d", found, step)
    log = CSVLog(os.path.join(out, "log.csv")) if fabric.is_global_zero else None
    logger.info("UperNet + Swin: %d classes, %d train / %d validation images at %d px, %d steps",
                num_labels, len(train_split), len(val_split), S, total)

    def evaluate() -> dict:
        result = evaluate_segmentation(model, val_loader, num_labels, gather=fabric.all_gather)
        history.append({"step": step, "epoch": epoch, **{k: v for k, v in result.items() if k != "per_category_iou"}})
        if fabric.is_global_zero:
            logger.info("epoch %d step %d: mIoU %.4f  pixel accuracy %.4f  mean accuracy %.4f", epoch, step,
                        result["mean_iou"], result["overall_accuracy"], result["mean_accuracy"])
            log.log(history[-1])
        return result

    start = time.time()
    out_of_time = False
    result = None
    model.train()
    while step < total and not out_of_time:
        for batch in train_loader:
            loss = segmentation_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if args.clip_grad:
                fabric.clip_gradients(model, optimizer, max_norm=args.clip_grad)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % args.log_every == 0 or step == 1:
                value = fabric.all_reduce(loss.detach(), reduce_op="mean").item()
                if fabric.is_global_zero:
                    logger.info("step %d/%d  loss %.4f  lr %.2e", step, total, value, scheduler.get_last_lr()[0])
                    log.log({"step": step, "epoch": epoch, "train_loss": value, "lr": scheduler.get_last_lr()[0]})
            out_of_time = args.max_minutes is not None and (time.time() - start) / 60 >= args.max_minutes
            # every process must agree to stop, or the collectives below would hang
            out_of_time = bool(fabric.all_reduce(torch.tensor(float(out_of_time)), reduce_op="max").item())
            if step >= total or out_of_time:
                break
        epoch += 1
        state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "step": step, "epoch": epoch,
                 "history": history}
        save_atomic(fabric, checkpoint_path(checkpoints, step), state)
        if epoch % args.eval_every_epochs == 0 and step < total and not out_of_time:
            result = evaluate()
    minutes = (time.time() - start) / 60
    result = evaluate()

    summary = {
        "mean_iou": result["mean_iou"],
        "overall_accuracy": result["overall_accuracy"],
        "mean_accuracy": result["mean_accuracy"],
        "per_category_iou": dict(zip(id2label.values(), result["per_category_iou"])),
        "steps": step,
        "epochs": epoch,
        "train_minutes": minutes,
        "image_size": S,
        "output_dir": os.path.abspath(out),
    }
    if fabric.is_global_zero:
        unwrapped = model.module if hasattr(model, "module") else model
        save_for_pipeline(unwrapped, eval_transform, out, reduce_labels=args.reduce_labels)
        save_overlays(unwrapped, val_split, eval_transform, os.path.join(out, "overlays"), num_labels,
                      count=args.num_overlays, **columns)
        write_json(os.path.join(out, "metrics.json"), {**summary, "history": history})
    fabric.barrier()
    return summary


def main(argv: list[str] | None = None) -> int:
    from .cli import launch

    def report(summary: dict) -> str:
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in summary["per_category_iou"].items())
        return (
            f"\nvalidation mIoU {summary['mean_iou']:.4f}, pixel accuracy {summary['overall_accuracy']:.4f} "
            f"({per_class}) after {summary['train_minutes']:.1f} min ({summary['steps']} steps)\n"
            f"outputs: {summary['output_dir']} (model for pipeline('image-segmentation'), metrics.json, overlays/)"
        )

    args = build_parser().parse_args(argv)
    return launch(args, lambda fabric: run(args, fabric), (ValueError, FileExistsError), report)


__all__ = ["BUILTIN", "BUILTIN_MODEL", "build_model", "build_parser", "load_data", "main", "run"]
