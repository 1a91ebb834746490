"""How every recipe starts: its settings parsed (swin_hf.training.settings), 'auto' filled in, Fabric
started for the launcher in use (`python`, `lightning run` / `fabric run`, `torchrun`, `accelerate launch`),
the task run on the shared loop (swin_hf.training.loop), and what the user can fix reported on one line.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import sys

from ..model_source import ModelSourceError
from . import loop
from .data import check_dataset_source
from .distributed import SHARDED_STRATEGIES, sharded_strategy
from .errors import RecipeError, UsageError
from .launcher import LAUNCHER_SET_THREADS
from .progress import announce
from .settings import AUTO, RecipeSettings, parse_settings

logger = logging.getLogger(__name__)


def check_streaming(settings: RecipeSettings) -> None:
    """--streaming needs --max-steps (a stream has no known length); its epoch is --steps-per-epoch steps
    (default: a tenth of --max-steps) and the number of epochs follows. Raises UsageError."""
    if not settings.streaming:
        if settings.steps_per_epoch:
            raise UsageError("--steps-per-epoch is for --streaming runs (other runs' epochs are passes over the data).")
        return
    if not settings.max_steps:
        raise UsageError("--streaming needs --max-steps: a stream has no known length, so the run is counted in "
                         "optimiser steps (e.g. --max-steps 10000).")
    settings.steps_per_epoch = settings.steps_per_epoch or max(1, settings.max_steps // 10)
    settings.epochs = math.ceil(settings.max_steps / settings.steps_per_epoch)


def builtin_run_defaults(settings: RecipeSettings, builtin: bool, threads: int = 1) -> None:
    """--cpu-threads and --precision left at auto, the same in every recipe: a built-in run (the recipe's tiny
    model on its built-in data) takes `threads` threads (1: a tiny model gains nothing from more, and stays
    fast on a shared CPU) and 32-true (bf16 autocast's casts cost more than its small products save:
    BENCHMARKS.md); any other run torch's threads and the launcher's or the device's precision."""
    if settings.cpu_threads == AUTO:
        settings.cpu_threads = threads if builtin else 0
    if settings.precision == AUTO and builtin:
        settings.precision = "32-true"
    if settings.cpu_threads and (not os.environ.get("OMP_NUM_THREADS") or os.environ.get(LAUNCHER_SET_THREADS) == "1"):
        import torch

        torch.set_num_threads(settings.cpu_threads)  # (an OMP_NUM_THREADS the user set wins; the launcher's does not)


def fabric_kwargs(settings: RecipeSettings, environ=os.environ) -> dict:
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
            kwargs["precision"] = resolve_precision(settings.precision, environ.get("LT_ACCELERATOR", "auto"))
        if environ.get("LT_STRATEGY") in SHARDED_STRATEGIES:  # Fabric's own "fsdp" would refuse CPUs: ours
            kwargs["strategy"] = environ["LT_STRATEGY"]
        elif settings.strategy != "auto" and not environ.get("LT_STRATEGY"):
            kwargs["strategy"] = settings.strategy
        return kwargs
    kwargs = dict(accelerator=settings.accelerator, devices=settings.devices, strategy=settings.strategy, num_nodes=settings.num_nodes)
    if settings.devices not in ("auto", "-1") and str(settings.devices).isdigit():
        kwargs["devices"] = int(settings.devices)
    precision = settings.precision
    world_size = int(environ.get("WORLD_SIZE", "1"))
    launched = "LOCAL_RANK" in environ and ("WORLD_SIZE" in environ)
    if launched:
        local = int(environ.get("LOCAL_WORLD_SIZE", world_size))
        kwargs["devices"] = local
        kwargs["num_nodes"] = max(1, world_size // max(local, 1))
        if world_size > 1 and settings.strategy == "auto":
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


@functools.cache
def _warn_bf16_emulated(precision: str) -> None:
    logger.warning(
        "--precision %s: this CPU has no bf16 matrix instructions (AMX or AVX512-BF16), so bf16 is emulated "
        "and slower than 32-true here; --precision auto picks 32-true on such CPUs", precision,
    )


def start_fabric(settings: RecipeSettings, recipe: str = "recipe"):
    """Every recipe's start: logging (quiet libraries; ranks other than 0 log warnings only) and a Fabric
    for the launcher in use (see `fabric_kwargs`), launched here unless `lightning run` / `fabric run`
    already started the processes. The first log line says how the run is spread (processes, nodes,
    strategy, device, precision)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "transformers", "lightning", "lightning.fabric", "evaluate", "fsspec", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from lightning.fabric import Fabric

    kwargs = fabric_kwargs(settings)
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


def launch(task_class, settings_class, argv: list[str] | None, prog: str, description: str, epilog: str | None = None) -> int:
    """Every recipe's main. The settings are parsed (a bad option or settings file: `error: ...` on one line,
    exit 2), 'auto' filled in (`task_class.resolve`), --streaming and a local --dataset path checked; Fabric
    starts for the launcher in use, the task runs on the shared loop and process 0 prints the result lines.
    What the user can fix (RecipeError: bad data, an output folder in use, a changed config on resume, a
    non-finite loss, a full disk; a --model that names nothing loadable) is one line on stderr, `error: ...`,
    with the error's exit status (2, or 1 for a run that failed), not a traceback."""
    try:
        settings = task_class.resolve(parse_settings(settings_class, argv, prog, description, epilog))
        check_streaming(settings)
        if settings.dataset:  # a mistyped local path is named before any model or Hub request
            check_dataset_source(settings.dataset)
        task = task_class(settings)
        builtin_run_defaults(settings, task.builtin(), task.builtin_threads)
    except SystemExit as exit:  # --help, or an option refused (the line is printed)
        return exit.code if isinstance(exit.code, int) else 0
    except RecipeError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return error.exit_code
    fabric = start_fabric(settings, prog.removesuffix(".py"))
    try:
        summary = loop.run(task, fabric)
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
        lines = task.report(summary)
        if summary.get("skipped_images"):
            lines.append(f"{summary['skipped_images']} unreadable image(s) skipped")
        written = loop.output_files(settings.output_dir)
        lines.append(f"outputs: {os.path.abspath(settings.output_dir)} ({', '.join(written) or 'nothing written'})")
        print("\n" + "\n".join(lines))
    return 0


__all__ = [
    "builtin_run_defaults",
    "check_streaming",
    "fabric_kwargs",
    "launch",
    "one_line",
    "resolve_precision",
    "start_fabric",
]
