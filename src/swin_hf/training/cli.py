"""Command line of the classification recipe (recipes/finetune.py): options, profiles, launchers.

Options left at `auto` take their value from a profile: `digits` (the built-in default: a tiny
Swin from scratch on scikit-learn's digits) or `finetune` (a pretrained Swin on your data).
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import logging
import math
import os
import sys

from ..cli import OneLineArgumentParser
from ..model_source import ModelSourceError
from .augment import AugmentConfig
from .data import DIGITS, check_dataset_source
from .distributed import SHARDED_STRATEGIES, sharded_strategy
from .launcher import LAUNCHER_SET_THREADS
from .errors import RecipeError, UsageError
from .loop import RECIPE_PRESETS, TrainConfig, output_files, run, summary_lines
from .progress import announce

logger = logging.getLogger(__name__)

AUTO = "auto"

PROFILES: dict[str, dict] = {
    "digits": dict(
        model="swin-digits",
        cpu_threads=1,  # a 136k-parameter model gains nothing from more; and it stays fast on a shared CPU
        precision="32-true",  # bf16-mixed: the same accuracy, 0.89x the speed (autocast's casts outweigh tiny products)
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


class RecipeArgumentParser(OneLineArgumentParser):
    """argparse with its errors on one line: `error: argument --lr: expected ..., got 'nan'` and exit 2;
    --help shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def checked(cast, test, requirement: str):
    """An argparse type: `cast(text)`, refused unless `test(value)`, with `requirement` in the message."""

    def parse(text: str):
        try:
            value = cast(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}")
        return value

    parse.__name__ = requirement
    return parse


positive_int = checked(int, lambda v: v >= 1, "a whole number >= 1")
nonnegative_int = checked(int, lambda v: v >= 0, "a whole number >= 0")
positive_float = checked(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
nonnegative_float = checked(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
fraction = checked(float, lambda v: 0 < v < 1, "a number between 0 and 1 (both excluded)")
probability = checked(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")
below_one = checked(float, lambda v: 0 <= v < 1, "a number from 0 up to 1 (1 excluded)")
up_to_one = checked(float, lambda v: 0 < v <= 1, "a number above 0, at most 1")


def _float_pair(text: str) -> tuple[float, float]:
    a, b = (float(x) for x in text.split(","))
    return a, b


scale_range = checked(_float_pair, lambda v: 0 < v[0] <= v[1] <= 1, "'lo,hi' with 0 < lo <= hi <= 1")


def _profiles_help() -> str:
    lines = ["profiles (values used for options left at 'auto'), as YAML:"]
    for name, values in PROFILES.items():
        lines.append(f"  {name}:")
        for key, value in values.items():
            shown = json.dumps([round(v, 4) for v in value] if isinstance(value, tuple) else value)
            lines.append(f"    {key}: {shown.strip(chr(34))}")
    lines.append("  # 'auto' profile: digits when --dataset is the built-in sklearn-digits, else finetune")
    return "\n".join(lines)


def add_data_arguments(parser: argparse.ArgumentParser, builtin: str, train_split: bool = True) -> argparse._ArgumentGroup:
    """The data source every recipe takes (--dataset, default: its built-in offline set `builtin`;
    --dataset-config; with `train_split`, --train-split); returns the group for the recipe's own."""
    d = parser.add_argument_group("data")
    d.add_argument("--dataset", default=builtin, help=f"anything datasets.load_dataset takes (Hub id, a folder of parquet/arrow/webdataset .tar/image files, saved DatasetDict dir); '{builtin}' = built-in, offline")
    d.add_argument("--dataset-config", default=None, help="dataset configuration name")
    if train_split:
        d.add_argument("--train-split", default=None, help="the split to train on (default: 'train', else the first split not named validation/valid/val/test; an evaluation split is used only when named here)")
    d.add_argument("--streaming", action="store_true", help="read the data as it is used (datasets streaming; each process reads its own shards); needs --max-steps")
    d.add_argument("--shuffle-block", type=positive_int, default=1000, help="with --streaming: examples shuffled together in memory (the shard order is also reshuffled every pass)")
    d.add_argument("--steps-per-epoch", type=positive_int, default=None, help="with --streaming: optimiser steps between evaluations and checkpoints (default: a tenth of --max-steps)")
    return d


def check_streaming(args: argparse.Namespace) -> None:
    """--streaming needs --max-steps (a stream has no known length); its epoch is --steps-per-epoch steps
    (default: a tenth of --max-steps) and the number of epochs follows. Raises UsageError."""
    if not getattr(args, "streaming", False):
        if getattr(args, "steps_per_epoch", None):
            raise UsageError("--steps-per-epoch is for --streaming runs (other runs' epochs are passes over the data).")
        return
    if not args.max_steps:
        raise UsageError("--streaming needs --max-steps: a stream has no known length, so the run is counted in "
                         "optimiser steps (e.g. --max-steps 10000).")
    args.steps_per_epoch = args.steps_per_epoch or max(1, args.max_steps // 10)
    args.epochs = math.ceil(args.max_steps / args.steps_per_epoch)


def add_subset_arguments(group: argparse._ArgumentGroup) -> None:
    """The options of the segmentation and detection recipes that take part of a set: the validation
    fraction held out when there is no validation split, the first N examples of each split, loader
    workers."""
    group.add_argument("--validation-fraction", type=fraction, default=0.1, help="split off for validation when the set has none")
    group.add_argument("--max-train-samples", type=positive_int, default=None, help="use only the first N training examples")
    group.add_argument("--max-eval-samples", type=positive_int, default=None, help="use only the first N validation examples")
    group.add_argument("--num-workers", type=nonnegative_int, default=0, help="DataLoader worker processes")


def add_hardware_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The launcher options every recipe shares (Lightning Fabric's names); returns the group."""
    h = parser.add_argument_group("hardware (under `lightning run` / `fabric run`, the launcher's flags win)")
    h.add_argument("--accelerator", default="auto", help="cpu, cuda, mps, auto")
    h.add_argument("--devices", default="auto", help="devices per node (under torchrun/accelerate: from the launcher)")
    h.add_argument("--strategy", default="auto", help="auto, ddp, fsdp (FSDP2: each Swin block sharded, CPU or GPU), or another of Lightning Fabric's")
    h.add_argument("--num-nodes", type=positive_int, default=1, help="nodes")
    h.add_argument("--precision", default="auto", help="auto, 32-true, bf16-mixed, 16-mixed, ... (auto: accelerate's mixed precision if set, else bf16-mixed where the device multiplies bf16 natively - GPUs with bf16, CPUs with AMX or AVX512-BF16 - else 32-true)")
    h.add_argument("--cpu-threads", type=_auto(nonnegative_int), default=AUTO, help="torch intra-op threads per process (0 = torch's default; auto: 1 for the built-in data's tiny model, else torch's default); OMP_NUM_THREADS set by you wins")
    return h


def set_cpu_threads(args: argparse.Namespace, auto: int) -> None:
    """torch's intra-op threads: --cpu-threads, or `auto` (the recipe's choice) when left at auto; 0 keeps
    torch's default. An OMP_NUM_THREADS the user set wins; the one Fabric's launcher sets under `lightning
    run` does not (on a busy 2-core machine 2 threads made the built-in runs 9-15x slower than 1: OpenMP
    threads wait for each other when the cores are shared)."""
    threads = auto if args.cpu_threads == AUTO else args.cpu_threads
    if threads and (not os.environ.get("OMP_NUM_THREADS") or os.environ.get(LAUNCHER_SET_THREADS) == "1"):
        import torch

        torch.set_num_threads(threads)


def set_precision(args: argparse.Namespace, auto: str) -> None:
    """--precision left at auto becomes `auto` (the recipe's choice for its model) unless that is auto too:
    the built-in runs' tiny models train in 32-true (bf16 autocast's casts cost more than their small
    products save: the digits default took 2m25s in bf16-mixed and 2m09s in fp32, both 97%+; BENCHMARKS.md)."""
    if args.precision == AUTO and auto != AUTO:
        args.precision = auto


def builtin_run_defaults(args: argparse.Namespace, builtin: bool, one_thread: bool = True) -> None:
    """--cpu-threads and --precision left at auto, the same in every recipe: a built-in run (the recipe's tiny
    model on its built-in data) takes the digits profile's (one thread, 32-true: see `set_cpu_threads` and
    `set_precision`), any other run the finetune profile's (torch's threads; the launcher's or the device's
    precision). `one_thread=False` keeps torch's threads for a built-in run too."""
    profile = PROFILES["digits" if builtin else "finetune"]
    set_cpu_threads(args, profile["cpu_threads"] if one_thread else 0)
    set_precision(args, profile["precision"])


def add_optimisation_arguments(
    parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float, min_lr_ratio: float,
    weight_decay: float, lr_note: str = "",
) -> argparse._ArgumentGroup:
    """The schedule and AdamW options of the segmentation and SimMIM recipes, with their defaults;
    returns the group for the recipe's own. (finetune's defaults come from per-dataset profiles, so
    build_parser declares its own.)"""
    o = parser.add_argument_group("optimisation")
    o.add_argument("--epochs", type=positive_int, default=epochs, help="epochs")
    o.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimiser steps")
    o.add_argument("--batch-size", type=positive_int, default=batch_size, help="images per process")
    o.add_argument("--lr", type=positive_float, default=lr, help=f"peak learning rate (AdamW{lr_note})")
    o.add_argument("--min-lr-ratio", type=probability, default=min_lr_ratio, help="cosine floor as a fraction of --lr")
    o.add_argument("--weight-decay", type=nonnegative_float, default=weight_decay, help="AdamW weight decay (not on norms, biases, tables)")
    o.add_argument("--warmup-ratio", type=below_one, default=0.05, help="linear warmup as a fraction of all steps")
    o.add_argument("--clip-grad", type=nonnegative_float, default=5.0, help="gradient norm clipping (0 = off)")
    return o


def add_run_arguments(parser: argparse.ArgumentParser, output_dir: str, outputs: str) -> argparse._ArgumentGroup:
    """The run options every recipe shares (seed, output folder, overwrite, resume, log interval); returns
    the group for the recipe's own. `outputs` says what the folder will hold."""
    r = parser.add_argument_group("run")
    r.add_argument("--seed", type=int, default=0, help="random seed")
    r.add_argument("--output-dir", default=output_dir, help=outputs)
    r.add_argument("--overwrite", action="store_true", help="train into a non-empty --output-dir (its old checkpoints are removed once the arguments, data and model are checked)")
    r.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --output-dir (an unreadable one is renamed *.invalid and the one before it used)")
    r.add_argument("--allow-changed-config", metavar="NAMES", default=None, help="with --resume: settings that may differ from the checkpoint's run, comma-separated (e.g. lr,epochs; 'all'); others must match")
    r.add_argument("--log-every", type=positive_int, default=10, help="log the training loss every N steps (and check that it is finite)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (plain lines instead)")
    return r


def _auto(cast):
    def parse(text: str):
        return AUTO if text == AUTO else cast(text)

    parse.__name__ = getattr(cast, "__name__", "value")
    return parse


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if len(names) < 2 or not all(names):
        raise argparse.ArgumentTypeError(f"expected two or more comma-separated class names, got {text!r}")
    return names


def _bool(text: str) -> bool:  # noqa: D103
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = RecipeArgumentParser(
        prog="finetune.py",
        description="Fine-tune (or train from scratch) a Swin Transformer image classifier on datasets splits. "
        "Launch with `python`, `lightning run` (or `fabric run`), `torchrun` or `accelerate launch`. Options at 'auto' come from "
        "the profile (listed at the end): with no arguments, a tiny Swin trains on the built-in digits.",
        epilog=_profiles_help(),
        formatter_class=lambda prog: argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=34, width=110),
    )
    p.epilog = _profiles_help()
    p.formatter_class = type(
        "Formatter", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {}
    )
    d = add_data_arguments(p, DIGITS)
    d.add_argument("--train-dir", default=None, help="imagefolder of training images (class sub-folders)")
    d.add_argument("--validation-dir", default=None, help="imagefolder of validation images")
    d.add_argument("--image-column", default=None, help="image column; None = the first Image feature")
    d.add_argument("--label-column", default=None, help="label column; None = the first ClassLabel feature")
    d.add_argument("--train-val-split", type=fraction, default=0.15, help="validation fraction taken from train (stratified, seeded) when there is no validation split")
    d.add_argument("--max-train-samples", type=positive_int, default=None, help="use only the first N training examples")
    d.add_argument("--max-eval-samples", type=positive_int, default=None, help="use only the first N validation examples (with --streaming: 1000 unless given)")
    d.add_argument("--label-names", type=_names, default=None, help="NAME0,NAME1,...: the classes of a label column that is not a ClassLabel (with --streaming)")
    d.add_argument("--num-workers", type=nonnegative_int, default=0, help="DataLoader worker processes")
    d.add_argument("--cache-images", type=_bool, default=True, help="keep decoded, resized small images in memory between epochs (never with --streaming)")

    m = p.add_argument_group("model")
    m.add_argument("--profile", choices=[AUTO, *PROFILES], default=AUTO, help="where 'auto' options take their values")
    m.add_argument("--model", default=AUTO, help=f"a preset ({', '.join(RECIPE_PRESETS)} or swin_hf.PRESETS; trains from scratch) or a path / Hub id to fine-tune")
    m.add_argument("--image-size", type=positive_int, default=None, help="train at this resolution (position tables resized for pretrained models)")
    m.add_argument("--window-size", type=positive_int, default=None, help="attention window override (with --image-size)")
    m.add_argument("--crop-pct", type=_auto(up_to_one), default=AUTO, help="evaluation centre-crop fraction (None: 0.875 below 384 px)")
    m.add_argument("--drop-path", type=_auto(below_one), default=AUTO, help="stochastic depth rate")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=_auto(positive_int), default=AUTO, help="training epochs")
    o.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimiser steps")
    o.add_argument("--batch-size", type=_auto(positive_int), default=AUTO, help="images per process per micro-batch")
    o.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimiser step")
    o.add_argument("--lr", type=_auto(positive_float), default=AUTO, help="peak learning rate of the last layers (AdamW)")
    o.add_argument("--min-lr-ratio", type=probability, default=0.01, help="cosine floor, as a fraction of --lr")
    o.add_argument("--weight-decay", type=_auto(nonnegative_float), default=AUTO, help="AdamW weight decay (never on norms, biases, position tables)")
    o.add_argument("--layer-decay", type=_auto(up_to_one), default=AUTO, help="layer-wise lr decay per block (1 = off)")
    o.add_argument("--warmup-steps", type=nonnegative_int, default=None, help="linear warmup steps; None = --warmup-ratio of all steps")
    o.add_argument("--warmup-ratio", type=_auto(below_one), default=AUTO, help="warmup as a fraction of all steps")
    o.add_argument("--label-smoothing", type=_auto(below_one), default=AUTO, help="label smoothing")
    o.add_argument("--clip-grad", type=nonnegative_float, default=5.0, help="gradient norm clipping (0 = off)")
    o.add_argument("--ema-decay", type=_auto(below_one), default=AUTO, help="EMA of weights, evaluated and saved (0 = off)")
    o.add_argument("--compile", action="store_true", help="torch.compile the model (on x86 CPUs the eager training step measured faster: BENCHMARKS.md)")
    o.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward to save memory")

    a = p.add_argument_group("augmentation (kornia, on batches)")
    a.add_argument("--random-resized-crop", type=_auto(_bool), default=AUTO, help="random resized crop on/off")
    a.add_argument("--crop-scale", type=_auto(scale_range), default=AUTO, help="random resized crop area range 'lo,hi'")
    a.add_argument("--hflip", type=_auto(probability), default=AUTO, help="horizontal flip probability")
    a.add_argument("--randaugment-n", type=_auto(nonnegative_int), default=AUTO, help="RandAugment ops per image (0 = off)")
    a.add_argument("--randaugment-m", type=_auto(checked(int, lambda v: 0 <= v <= 30, "a whole number from 0 to 30")), default=AUTO, help="RandAugment magnitude (0-30)")
    a.add_argument("--random-erasing", type=_auto(probability), default=AUTO, help="random erasing probability")
    a.add_argument("--mixup", type=_auto(probability), default=AUTO, help="probability a batch gets mixup")
    a.add_argument("--cutmix", type=_auto(probability), default=AUTO, help="probability a batch gets cutmix")

    add_hardware_arguments(p)

    r = add_run_arguments(p, "outputs/swin-finetuned", "model, card, metrics, plots, logs, checkpoints")
    r.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume)")
    r.add_argument("--checkpoint-every", type=positive_int, default=None, help="also checkpoint every N optimiser steps (always at epoch ends)")
    r.add_argument("--keep-checkpoints", type=nonnegative_int, default=2, help="newest checkpoints kept (0 = all)")
    r.add_argument("--eval-every-epochs", type=positive_int, default=1, help="evaluate every N epochs")
    r.add_argument("--push-to-hub", action="store_true", help="upload --output-dir to the Hub at the end (needs network and a token)")
    r.add_argument("--hub-model-id", default=None, help="Hub repository for --push-to-hub")
    r.add_argument("--debug-record-ranks", default=None, help=argparse.SUPPRESS)
    return p


def _profile_name(args: argparse.Namespace) -> str:
    uses_digits = not args.train_dir and args.dataset in (None, "", DIGITS)
    return args.profile if args.profile != AUTO else ("digits" if uses_digits else "finetune")


def resolve(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed options, 'auto' values filled from the profile."""
    uses_digits = not args.train_dir and args.dataset in (None, "", DIGITS)
    profile_name = _profile_name(args)
    profile = PROFILES[profile_name]

    def pick(name):
        value = getattr(args, name, AUTO)
        return profile[name] if value == AUTO else value

    augment = AugmentConfig(
        random_resized_crop=pick("random_resized_crop"),
        crop_scale=tuple(pick("crop_scale")),
        crop_ratio=tuple(profile["crop_ratio"]),
        hflip=pick("hflip"),
        randaugment_n=pick("randaugment_n"),
        randaugment_m=pick("randaugment_m"),
        random_erasing=pick("random_erasing"),
        mixup=pick("mixup"),
        cutmix=pick("cutmix"),
        label_smoothing=pick("label_smoothing"),
    )
    config = TrainConfig(
        dataset=args.dataset,
        dataset_config=args.dataset_config,
        train_split=args.train_split,
        train_dir=args.train_dir,
        validation_dir=args.validation_dir,
        image_column=args.image_column,
        label_column=args.label_column,
        train_val_split=args.train_val_split,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        num_workers=args.num_workers,
        cache_images=args.cache_images and not args.streaming,
        streaming=args.streaming,
        shuffle_block=args.shuffle_block,
        steps_per_epoch=args.steps_per_epoch,
        label_names=args.label_names,
        model=pick("model"),
        image_size=args.image_size,
        window_size=args.window_size,
        crop_pct=pick("crop_pct"),
        drop_path=pick("drop_path"),
        epochs=pick("epochs"),
        max_steps=args.max_steps,
        batch_size=pick("batch_size"),
        grad_accum=args.grad_accum,
        lr=pick("lr"),
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=pick("weight_decay"),
        layer_decay=pick("layer_decay"),
        warmup_steps=args.warmup_steps,
        warmup_ratio=pick("warmup_ratio"),
        clip_grad=args.clip_grad or None,
        ema_decay=pick("ema_decay"),
        compile=args.compile,
        gradient_checkpointing=args.gradient_checkpointing,
        augment=augment,
        seed=args.seed,
        deterministic=args.deterministic,
        output_dir=args.output_dir,
        overwrite=args.overwrite,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        eval_every_epochs=args.eval_every_epochs,
        log_every=args.log_every,
        progress=not args.no_progress,
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        debug_record_ranks=args.debug_record_ranks,
        allow_changed_config=args.allow_changed_config,
    )
    full_default_run = not (args.max_steps or args.max_train_samples or args.max_eval_samples)
    if profile_name == "digits" and uses_digits and full_default_run:
        config.target_accuracy, config.target_minutes = 0.95, 5.0
    return config


def fabric_kwargs(args: argparse.Namespace, environ=os.environ) -> dict:
    """Fabric(...) arguments for the launcher in use.

    - `lightning run` / `fabric run`: its flags arrive as LT_* variables that Fabric reads itself; pass only
      what the launcher left unset (and "fsdp", which `start_fabric` turns into swin_hf's FSDP2 strategy).
    - torchrun / `accelerate launch` (WORLD_SIZE set): one device per launched process; the device count
      must come from the launcher, since devices='auto' on CPU would start N unrelated 1-process runs.
      accelerate's --cpu and --mixed_precision are honoured.
    - plain python: the --accelerator/--devices/... options.
    """
    if environ.get("LT_CLI_USED"):
        kwargs = {}
        if not environ.get("LT_PRECISION"):
            kwargs["precision"] = resolve_precision(args.precision, environ.get("LT_ACCELERATOR", "auto"))
        if environ.get("LT_STRATEGY") in SHARDED_STRATEGIES:  # Fabric's own "fsdp" would refuse CPUs: ours
            kwargs["strategy"] = environ["LT_STRATEGY"]
        elif args.strategy != "auto" and not environ.get("LT_STRATEGY"):
            kwargs["strategy"] = args.strategy
        return kwargs
    kwargs = dict(accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes)
    if args.devices not in ("auto", "-1") and str(args.devices).isdigit():
        kwargs["devices"] = int(args.devices)
    precision = args.precision
    world_size = int(environ.get("WORLD_SIZE", "1"))
    launched = "LOCAL_RANK" in environ and ("WORLD_SIZE" in environ)
    if launched:
        local = int(environ.get("LOCAL_WORLD_SIZE", world_size))
        kwargs["devices"] = local
        kwargs["num_nodes"] = max(1, world_size // max(local, 1))
        if world_size > 1 and args.strategy == "auto":
            kwargs["strategy"] = "ddp"
    if environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        kwargs["accelerator"] = "cpu"
    accelerate_precision = environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision in (None, "auto") and accelerate_precision in ("fp16", "bf16"):
        on_cpu = kwargs["accelerator"] == "cpu"
        precision = "bf16-mixed" if accelerate_precision == "bf16" or on_cpu else "16-mixed"
    kwargs["precision"] = resolve_precision(precision, kwargs["accelerator"])
    return kwargs


def resolve_precision(precision: str | None, accelerator: str) -> str:
    """What --precision auto (or unset) means on `accelerator`: bf16-mixed where the device multiplies bf16
    matrices natively (CUDA GPUs with bf16; CPUs with AMX or AVX512-BF16, see inference.native_bf16), else
    32-true. Any other value is Fabric's own; bf16 asked for where the CPU only emulates it runs, with one
    warning that it is slower there."""
    import torch

    from ..inference import native_bf16

    cuda = accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if precision not in (None, "auto"):
        if "bf16" in str(precision) and device.type == "cpu" and not native_bf16(device):
            _warn_bf16_emulated(str(precision))
        return precision
    return "bf16-mixed" if native_bf16(device) else "32-true"


@functools.lru_cache(maxsize=None)
def _warn_bf16_emulated(precision: str) -> None:
    logger.warning(
        "--precision %s: this CPU has no bf16 matrix instructions (AMX or AVX512-BF16), so bf16 is emulated "
        "and slower than 32-true here; --precision auto picks 32-true on such CPUs", precision,
    )


def start_fabric(args: argparse.Namespace, recipe: str = "recipe"):
    """Every recipe's start: logging (quiet libraries; ranks other than 0 log warnings only) and a Fabric
    for the launcher in use (see `fabric_kwargs`), launched here unless `lightning run` / `fabric run`
    already started the processes. The first log line says how the run is spread (processes, nodes,
    strategy, device, precision)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "transformers", "lightning", "lightning.fabric", "evaluate", "fsspec", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from lightning.fabric import Fabric

    kwargs = fabric_kwargs(args)
    if kwargs.get("strategy") in SHARDED_STRATEGIES:
        os.environ.pop("LT_STRATEGY", None)  # (Fabric would refuse a strategy object that differs from it)
        kwargs["strategy"] = sharded_strategy()
    fabric = Fabric(**kwargs)
    if not os.environ.get("LT_CLI_USED"):  # under `lightning run` / `fabric run` the processes already exist
        fabric.launch()
    if not fabric.is_global_zero:
        logging.getLogger().setLevel(logging.WARNING)
    announce(fabric, recipe)
    return fabric


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def launch(parser: argparse.ArgumentParser, argv: list[str] | None, prepare) -> int:
    """Every recipe's main. The options are parsed (a bad one: `error: ...` on one line, exit 2), then
    `prepare(args)` returns (run(fabric) -> summary, report(summary) -> str) or raises UsageError (a
    --dataset naming a local path that does not exist is refused before that); Fabric
    starts for the launcher in use and rank 0 prints `report(summary)`. What the user can fix (RecipeError:
    bad data, an output folder in use, a changed config on resume, a non-finite loss, a full disk; a
    --model that names nothing loadable) is one line on stderr, `error: ...`, with the error's exit status
    (2, or 1 for a run that failed), not a traceback."""
    try:
        args = parser.parse_args(argv)
        check_streaming(args)
        if getattr(args, "dataset", None):  # a mistyped local path is named before any model or Hub request
            check_dataset_source(args.dataset)
        run_recipe, report = prepare(args)
    except SystemExit as exit:  # --help, or an option argparse refused (it printed the line)
        return exit.code if isinstance(exit.code, int) else 0
    except RecipeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    fabric = start_fabric(args, parser.prog.removesuffix(".py"))
    try:
        summary = run_recipe(fabric)
    except (RecipeError, ModelSourceError) as error:
        if fabric.is_global_zero:
            print(f"error: {one_line(error)}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except OSError as error:
        if error.errno not in DISK_ERRORS:
            raise
        if fabric.is_global_zero:
            print(f"error: could not write the outputs ({one_line(error)}); free space or choose another --output-dir, "
                  "then run again (--resume continues from the last checkpoint).", file=sys.stderr)
        return 1
    finally:
        from .checkpoint import release_output_dirs

        release_output_dirs()  # the --output-dir lock, taken by process 0 when the run checked its folder
    if fabric.is_global_zero:
        print(report(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    def prepare(args):
        config = resolve(args)
        builtin_run_defaults(args, _profile_name(args) == "digits")

        def report(summary: dict) -> str:
            lines = summary_lines(summary, config.target_accuracy, config.target_minutes)
            written = output_files(config.output_dir)
            outputs = f"outputs: {os.path.abspath(config.output_dir)} ({', '.join(written) or 'nothing written'})"
            return "\n" + "\n".join(lines) + "\n" + outputs

        return (lambda fabric: run(config, fabric)), report

    return launch(build_parser(), argv, prepare)


__all__ = [
    "PROFILES",
    "RecipeArgumentParser",
    "add_data_arguments",
    "add_hardware_arguments",
    "add_optimisation_arguments",
    "add_run_arguments",
    "add_subset_arguments",
    "below_one",
    "build_parser",
    "builtin_run_defaults",
    "check_streaming",
    "resolve_precision",
    "checked",
    "fabric_kwargs",
    "fraction",
    "launch",
    "main",
    "nonnegative_float",
    "nonnegative_int",
    "positive_float",
    "positive_int",
    "probability",
    "resolve",
    "scale_range",
    "set_cpu_threads",
    "set_precision",
    "up_to_one",
]
