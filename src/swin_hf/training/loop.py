"""The training loop every recipe runs, in four parts; a recipe is a `Task` (swin_hf.training.task) on it.

- `setup(task, fabric)`: checks the output folder, the task's model source and the data; builds the model,
  optimiser, loaders and the resumable `state` (model, optimiser, schedule, EMA, progress, RNG), which
  --resume restores; only then does --overwrite remove the old run's checkpoints. -> a `Run`
- `fit(run)`: the optimisation loop (accumulation, clipping, EMA, checkpoints, the non-finite stop, --max-minutes)
- `evaluate(run)`: the task's evaluation at epoch ends (with the EMA weights); the best model so far is saved
- `finish(run)`: final weights, metrics.json, curves, pictures, the card (process 0) and the summary

`run(task, fabric)` does all four.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from . import report
from .checkpoint import gather_objects, rng_state, set_rng_state
from .data import ResumableSampler
from .distributed import setup_model_and_optimizer, strategy_name
from .ema import EMA, swapped_weights
from .optim import build_optimizer, build_scheduler, set_schedule_position
from .progress import Display
from .session import Session, log_training_row, mean_over_processes, optimizer_step
from .settings import RecipeSettings, save_settings
from .streaming import StreamLoader
from .task import Task, TaskData

logger = logging.getLogger(__name__)


def new_progress() -> dict:
    """The loop's position and record: optimiser steps, epochs, micro-batches done in this epoch,
    logged rows, the best evaluation, training seconds before this process."""
    return {"step": 0, "epoch": 0, "batch": 0, "history": [], "best": None, "elapsed": 0.0}


def plan_steps(settings: RecipeSettings, batches_per_epoch: int, progress: dict) -> int:
    """The optimiser step the run ends at: the steps done, plus the rest of this epoch and the remaining
    epochs at the current batch size and accumulation (on a fresh run: epochs x steps per epoch), capped
    by --max-steps."""
    steps_per_epoch = math.ceil(batches_per_epoch / settings.grad_accum)
    remaining = 0
    if progress["epoch"] < settings.epochs:
        left_in_epoch = max(0, batches_per_epoch - progress["batch"])
        remaining = math.ceil(left_in_epoch / settings.grad_accum) + (settings.epochs - progress["epoch"] - 1) * steps_per_epoch
    total = progress["step"] + remaining
    return min(total, settings.max_steps) if settings.max_steps else total


def resumable_loader(fabric, dataset, batch_size: int, train: bool, seed: int, num_workers: int, collate_fn,
                     move_to_device: bool = True):
    """(loader, its ResumableSampler), set up by Fabric: each process reads its own share of `dataset`
    (training: shuffled per epoch, whole batches unless the share is smaller than one, the position
    restorable; validation: in order). Creating an iterator never draws from the global RNG (the loader
    has its own generator), so a resumed run sees the same batches and augmentations."""
    sampler = ResumableSampler(len(dataset), batch_size, train, seed, fabric.global_rank, fabric.world_size, drop_last=train)
    if train and sampler.batches_per_epoch() == 0:
        sampler.drop_last = False
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
        persistent_workers=False, generator=torch.Generator().manual_seed(seed),
    )
    return fabric.setup_dataloaders(loader, use_distributed_sampler=False, move_to_device=move_to_device), sampler


@dataclass
class Run:
    """What `fit`, `evaluate` and `finish` work on, built by `setup`. `state` is what a checkpoint holds
    (model, optimizer, scheduler, [ema], progress, rng); `progress` is state["progress"]."""

    task: Task
    settings: RecipeSettings
    fabric: Any
    session: Session
    data: TaskData
    model: Any  # as set up by Fabric (and compiled)
    raw_model: Any
    optimizer: Any
    scheduler: Any
    ema: EMA | None
    train_loader: Any
    eval_loader: Any
    train_order: ResumableSampler | StreamLoader  # where the next epoch starts: set_position(epoch, batch)
    metrics: Any  # report.MetricLoggers
    state: dict
    batches_per_epoch: int
    total_steps: int
    warmup: int
    started: float
    skipped: set = field(default_factory=set)  # (split, file) of unreadable images
    running: list = field(default_factory=list)  # losses since the last log row
    epoch_losses: list = field(default_factory=list)  # losses of this epoch (its line)
    last_eval: dict | None = None  # the last evaluation's metrics
    clock: float = 0.0  # when this process started training
    display: Display | None = None
    record: list | None = None  # tests (--debug-record-ranks): the example indices this process trained on

    @property
    def progress(self) -> dict:
        return self.state["progress"]

    @property
    def epochs(self) -> int:
        """The epoch the run ends in (for messages)."""
        per_epoch = math.ceil(self.batches_per_epoch / self.settings.grad_accum)
        return min(self.settings.epochs, math.ceil(self.total_steps / max(1, per_epoch)))


def recorded_settings(task: Task) -> dict:
    """The settings a checkpoint records and --resume compares (not those that only shape pictures)."""
    return {k: v for k, v in vars(task.settings).items() if k not in task.not_recorded and k not in ("config",)}


def setup(task: Task, fabric) -> Run:
    """Everything before the first step. The output folder, the model source and the data are checked
    before anything is built; the old run's checkpoints (--overwrite) are removed only after the model is
    built; with --resume the newest readable checkpoint whose settings match is restored."""
    settings = task.settings
    started = time.perf_counter()
    session = Session(
        fabric, task.name, settings.output_dir, recorded_settings(task), overwrite=settings.overwrite, resume=settings.resume,
        allow_changed_config=settings.allow_changed_config, keep_checkpoints=settings.keep_checkpoints, fixed=task.fixed,
        clip_grad=settings.clip_grad or None, precision=fabric.strategy.precision.precision,
    )
    task.check(fabric)
    if settings.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    fabric.seed_everything(settings.seed, workers=True)  # same initial weights on every process
    data = task.load_data(fabric)
    model = task.build_model(data)
    if settings.gradient_checkpointing:
        model.activation_checkpointing_enable() if hasattr(model, "activation_checkpointing_enable") else model.gradient_checkpointing_enable()
    raw_model = model
    train_loader, eval_loader, train_order = build_loaders(settings, fabric, data)
    batches_per_epoch = train_order.batches_per_epoch()
    total_steps = plan_steps(settings, batches_per_epoch, new_progress())
    warmup = warmup_steps(settings, total_steps)
    if settings.compile:
        model = torch.compile(model)
    depths = task.depths(raw_model)
    model, optimizer = setup_model_and_optimizer(
        fabric, model, lambda m: build_optimizer(raw_model, settings.lr, settings.weight_decay, settings.layer_decay, depths)
    )
    scheduler = build_scheduler(optimizer, total_steps, warmup, settings.min_lr_ratio)
    ema = EMA(raw_model, settings.ema_decay) if settings.ema_decay > 0 else None  # after setup: synced (or sharded) weights
    # per-process seed from here on: processes draw different augmentations and drop paths, reproducibly
    fabric.seed_everything(settings.seed + fabric.global_rank, workers=True, verbose=False)
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "progress": new_progress(), "rng": None}
    if ema is not None:
        state["ema"] = ema
    run = Run(task, settings, fabric, session, data, model, raw_model, optimizer, scheduler, ema, train_loader, eval_loader,
              train_order, report.MetricLoggers(fabric, settings.output_dir, resume=settings.resume), state,
              batches_per_epoch, total_steps, warmup, started)
    # the data as this run sees it: a folder that gained or lost images since the checkpoint is a changed run
    data_settings = {"class_names": data.class_names, "validation_examples": len(data.validation)}
    if settings.streaming:
        session.track_stream(train_loader)
    else:
        data_settings["train_examples"] = len(data.train)
    if session.begin(state, {**data_settings, "world_size": fabric.world_size}, optional=("ema",)):
        _continue(run)
    if fabric.is_global_zero:
        save_settings(settings, settings.output_dir)
    task.start(run)
    train_size = "a stream of" if settings.streaming else str(len(data.train))
    logger.info("%s: %s training / %d validation examples, %d steps", task.name, train_size, len(data.validation), run.total_steps)
    return run


def warmup_steps(settings: RecipeSettings, total_steps: int) -> int:
    return settings.warmup_steps if settings.warmup_steps is not None else int(settings.warmup_ratio * total_steps)


def build_loaders(settings: RecipeSettings, fabric, data: TaskData):
    """(train loader, validation loader, where the training order starts). The training sampler is
    resumable (epoch + batch position) and shards across processes itself; with --streaming the training
    loader is a StreamLoader (each process reads its own shards; its position is resumable)."""
    common = dict(seed=settings.seed, num_workers=settings.num_workers, collate_fn=data.collate,
                  move_to_device=data.move_to_device)
    eval_loader, _ = resumable_loader(fabric, data.validation, settings.batch_size, False, **common)
    if settings.streaming:
        train_loader = StreamLoader(fabric, data.train, data.stream_rows, settings.batch_size,
                                    settings.steps_per_epoch * settings.grad_accum, settings.seed, settings.shuffle_block,
                                    settings.num_workers)
        return train_loader, eval_loader, train_loader
    train_loader, sampler = resumable_loader(fabric, data.train, settings.batch_size, True, **common)
    return train_loader, eval_loader, sampler


def _continue(run: Run) -> None:
    """After a checkpoint was restored: the RNG, an EMA switched on since (from the restored weights), the
    data position and the schedule length for allowed changes of batch size, process count or epochs."""
    fabric, settings, progress = run.fabric, run.settings, run.progress
    rngs = run.state["rng"]
    set_rng_state(rngs[fabric.global_rank] if len(rngs) == fabric.world_size else rngs[0])
    if "ema" in run.session.missing:
        run.ema = run.state["ema"] = EMA(run.raw_model, settings.ema_decay)
    old = {key: before for key, before, _ in run.session.changes}
    if "batch_size" in old or "world_size" in old:  # the same images seen, in batches of the new size
        before = old.get("batch_size", settings.batch_size) * old.get("world_size", fabric.world_size)
        progress["batch"] = progress["batch"] * before // (settings.batch_size * fabric.world_size)
    run.total_steps = plan_steps(settings, run.batches_per_epoch, progress)
    run.warmup = warmup_steps(settings, run.total_steps)
    run.scheduler.plan.update(total_steps=run.total_steps, warmup_steps=run.warmup)
    set_schedule_position(run.scheduler)
    if progress["step"] >= run.total_steps:
        logger.warning("The resumed run has done %d steps, as many as these settings ask for: nothing is left to train.", progress["step"])
    fabric.print(f"Resumed from {run.session.resumed_from}: step {progress['step']}, epoch {progress['epoch']}, batch {progress['batch']}.")


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def fit(run: Run) -> None:
    """Train until `total_steps` (or --max-minutes): each optimiser step accumulates --grad-accum
    micro-batches; checkpoints every --checkpoint-every steps and at epoch ends; evaluation every
    --eval-every-epochs epochs and at the end. Stops with NonFiniteLossError (nothing saved) when a loss
    or gradient norm is not finite."""
    settings, progress = run.settings, run.progress
    run.clock = time.perf_counter()
    run.record = [] if settings.debug_record_ranks else None
    run.display = Display(run.fabric, run.total_steps, progress["step"], enabled=settings.progress)
    run.model.train()
    stopped = False
    while progress["step"] < run.total_steps and progress["epoch"] < settings.epochs and not stopped:
        run.train_order.set_position(progress["epoch"], progress["batch"])
        batches = iter(run.train_loader)
        while progress["step"] < run.total_steps and not stopped:
            group = [batch for _, batch in zip(range(settings.grad_accum), batches)]
            if not group:
                break
            train_step(run, group)
            stopped = out_of_time(run)
            step, mid_epoch = progress["step"], progress["batch"] < run.batches_per_epoch
            if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < run.total_steps and mid_epoch and not stopped:
                save_checkpoint(run)  # (at an epoch's last step, end_epoch writes it)
        end_epoch(run, stopped)
    run.display.close()


def out_of_time(run: Run) -> bool:
    """Whether --max-minutes of training have passed (every process must agree to stop, or the collectives
    that follow would hang)."""
    limit = run.settings.max_minutes
    if limit is None:
        return False
    late = (time.perf_counter() - run.clock) / 60 >= limit
    return bool(run.fabric.all_reduce(torch.tensor(float(late)), reduce_op="max").item())


def train_step(run: Run, group: list[dict]) -> None:
    """One optimiser step over the micro-batches of `group` (each loss weighted by its share of the
    group's examples, so the step is the mean over all of them), then EMA, bookkeeping and logging."""
    for batch in group:
        if batch is not None:
            run.skipped.update(("train", name) for name in batch.get("skipped_files", ()))
    usable = [batch for batch in group if batch is not None and batch.get("pixel_values") is not None]
    sizes = [run.task.examples(batch) for batch in usable]
    examples = sum(sizes)
    micro = [lambda batch=batch, size=size: run.task.loss(run, batch) * (size / examples) for batch, size in zip(usable, sizes)]
    lr = run.optimizer.param_groups[-1]["lr"]
    loss, norm = optimizer_step(run.fabric, run.model, run.optimizer, run.scheduler, micro, run.settings.clip_grad or None)
    if run.ema is not None:
        run.ema.update(run.raw_model)
    progress = run.progress
    progress["step"] += 1
    progress["batch"] += len(group)
    if loss is not None:
        run.session.guard.record(progress["step"], lr, loss, norm)
        run.running.append(loss)
        run.epoch_losses.append(loss)
    run.display.update(examples)
    if run.record is not None:
        run.record.extend(batch["index"].tolist() for batch in usable if "index" in batch)
    step = progress["step"]
    if step % run.settings.log_every == 0 or step == 1 or step == run.total_steps:
        row = log_training_row(run.session, run.display, progress, step, lr, run.running, run.metrics)
        run.running = []
        if run.display.bar is None:
            run.display.line(f"step {step}/{run.total_steps}: loss {row['train_loss']:.4f}, lr {lr:.2e}")


def end_epoch(run: Run, stopped: bool = False) -> None:
    """When an epoch's batches are done (or training is, or --max-minutes `stopped` it): count the epoch,
    evaluate when due, checkpoint unless done, and one line (every process takes part: the loss and
    throughput are summed over them)."""
    progress, settings = run.progress, run.settings
    if run.record is not None:
        record_epoch(run)
    done = progress["step"] >= run.total_steps or stopped
    if progress["batch"] >= run.batches_per_epoch or done:
        progress["epoch"] += 1
        progress["batch"] = 0
        losses, run.epoch_losses = run.epoch_losses, []
        line = (f"epoch {progress['epoch']}/{run.epochs} (step {progress['step']}/{run.total_steps}): "
                f"train loss {mean_over_processes(run.fabric, losses):.4f}, {run.display.rates_text()}")
        if progress["epoch"] % settings.eval_every_epochs == 0 or done:
            line += "; " + evaluate(run)
        run.display.line(line)
        if not done:
            save_checkpoint(run)


def record_epoch(run: Run) -> None:
    """Tests (--debug-record-ranks): what this process trained on in this epoch, and its weights' sums."""
    folder = run.settings.debug_record_ranks
    os.makedirs(folder, exist_ok=True)
    params = list(run.raw_model.parameters())
    with open(os.path.join(folder, f"rank{run.fabric.global_rank}-epoch{run.progress['epoch']}.json"), "w") as f:
        json.dump({"indices": run.record, "weights": [float(p.detach().double().sum()) for p in params],
                   "first": params[0].detach().flatten()[:8].tolist()}, f)
    run.record = []


def save_checkpoint(run: Run) -> None:
    """A checkpoint of `run.state` with the progress, the training time so far and every process's RNG."""
    progress = run.progress
    elapsed = progress["elapsed"] + time.perf_counter() - run.clock
    state = {**run.state, "progress": {**progress, "elapsed": elapsed}, "rng": gather_objects(run.fabric, rng_state())}
    run.session.save(state, progress["step"], run.raw_model)


def evaluate(run: Run) -> str:
    """The task's evaluation (with the EMA weights, if any); logged, and the model is saved to --output-dir
    when its score is the best so far. Returns the result in words."""
    progress = run.progress
    run.session.guard.check()
    with swapped_weights(run.raw_model, run.ema):
        run.model.eval()
        with torch.no_grad():
            result = run.task.evaluate(run)
        run.model.train()
    row = {"step": progress["step"], "epoch": progress["epoch"], **result.metrics}
    progress["history"].append(row)
    run.last_eval = result.metrics
    run.metrics.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}, progress["step"])
    message = result.text
    best = progress["best"]
    if best is None or result.score > best["score"]:
        progress["best"] = {**row, "score": result.score, **result.keep}
        save_best(run)
        message += " (best so far, saved)"
    return message


def save_best(run: Run) -> None:
    """The evaluated weights (EMA if any) as the task's model folder in --output-dir."""
    with swapped_weights(run.raw_model, run.ema):
        run.session.save_model(lambda folder, weights: run.task.save_model(run, folder, weights), run.raw_model,
                               run.progress["step"], name="best model")


# --------------------------------------------------------------------------------------------------
# The outputs
# --------------------------------------------------------------------------------------------------


def finish(run: Run) -> dict:
    """The final training weights (checkpoints/final-weights.safetensors), metrics.json, the curves, the
    task's pictures, the model card (process 0), and the summary returned to every process."""
    fabric, settings, progress, task = run.fabric, run.settings, run.progress, run.task
    run.session.guard.check()
    run.metrics.finalize()
    out = settings.output_dir

    def write_final(folder: str, weights: dict) -> None:  # the last (not EMA, not best) weights, e.g. to compare runs
        from safetensors.torch import save_file

        # (copies: detection heads share tensors between layers, which save_file refuses)
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in weights.items()},
                  os.path.join(folder, "final-weights.safetensors"))

    run.session.save_model(write_final, run.raw_model, progress["step"], "final weights", run.session.checkpoints)
    best = progress["best"] or {}
    skipped = set().union(*gather_objects(fabric, run.skipped))
    per_process, total = run.display.rates()
    train_seconds = progress["elapsed"] + time.perf_counter() - run.clock
    summary = {
        **task.summary(run, best),
        "best_step": best.get("step"),
        "best_epoch": best.get("epoch"),
        "steps": progress["step"],
        "epochs": progress["epoch"],
        "train_examples": None if settings.streaming else len(run.data.train),
        "val_examples": len(run.data.validation),
        "skipped_images": len(skipped),
        "world_size": fabric.world_size,
        "strategy": strategy_name(fabric),
        "images_per_s": round(total, 1),
        "images_per_s_per_process": round(per_process, 1),
        "wall_time_s": round(time.perf_counter() - run.started, 2),
        "train_time_s": round(train_seconds, 2),
        "train_minutes": round(train_seconds / 60, 2),
        "streaming": settings.streaming or None,
        "output_dir": os.path.abspath(out),
    }
    summary = {k: v for k, v in summary.items() if v is not None}
    task.pictures(run)
    if fabric.is_global_zero:
        if skipped:
            logger.warning("%d unreadable image(s) were skipped during this run.", len(skipped))
        report.write_report(out, summary, progress["history"], model_card(run, summary, len(skipped)), task.curves,
                            task.curves_title)
        if settings.push_to_hub:
            push_to_hub(run)
    fabric.barrier()
    return summary


def model_card(run: Run, summary: dict, skipped: int) -> str:
    settings, task = run.settings, run.task
    hyper = {k: v for k, v in settings.saved().items() if k not in ("progress", "output_dir", "hub_model_id", "push_to_hub")}
    hyper.update(total_steps=run.total_steps, warmup_steps=run.warmup, world_size=run.fabric.world_size)
    notes = run.data.notes + ([f"{skipped} unreadable image(s) were skipped"] if skipped else [])
    config = run.raw_model.config
    version = getattr(getattr(config, "backbone_config", None) or config, "version", 1)
    out = settings.output_dir
    return report.model_card(settings.hub_model_id or os.path.basename(os.path.abspath(out)), settings.model,
                             run.data.source or settings.dataset, run.data.class_names, hyper, task.card_metrics(summary),
                             notes, task=task.card_task, version=version)


def push_to_hub(run: Run) -> None:
    from huggingface_hub import create_repo, upload_folder

    out = run.settings.output_dir
    repo = run.settings.hub_model_id or os.path.basename(os.path.abspath(out))
    create_repo(repo, exist_ok=True)
    upload_folder(repo_id=repo, folder_path=out, ignore_patterns=["checkpoints/*", ".tmp-*", ".swin_hf.lock*"])
    run.fabric.print(f"Pushed {out} to https://huggingface.co/{repo}")


def run(task: Task, fabric) -> dict:
    """Train and evaluate; returns the summary (also written to --output-dir/metrics.json by process 0)."""
    state = setup(task, fabric)
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
        "settings.json": os.path.exists(os.path.join(out, "settings.json")),
        "metrics.json": os.path.exists(os.path.join(out, "metrics.json")),
        "plots": os.path.exists(os.path.join(out, "training_curves.png")),
        "logs": os.path.isdir(os.path.join(out, "logs")),
    }
    return [name for name, present in found.items() if present]


def format_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_lines(summary: dict) -> str:
    """'after 1m02s of training (240 steps, 8 epochs, 1 process)'."""
    processes = summary.get("world_size", 1)
    return (f"after {format_time(summary.get('train_time_s', 0.0))} of training ({summary.get('steps', 0)} steps, "
            f"{summary.get('epochs', 0)} epochs, {processes} process{'es' if processes > 1 else ''})")


__all__ = [
    "Run",
    "build_loaders",
    "end_epoch",
    "evaluate",
    "finish",
    "fit",
    "format_time",
    "new_progress",
    "output_files",
    "plan_steps",
    "resumable_loader",
    "run",
    "run_lines",
    "save_checkpoint",
    "setup",
]
