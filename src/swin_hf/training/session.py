"""What every recipe does around its own data and model, in one place: the output folder, resuming (the
settings compared, unreadable checkpoints skipped), atomic checkpoints and model folders, the optimiser
step, and the non-finite stop.

    session = Session(fabric, "segment", output_dir, settings, ...)   # checks --output-dir, loads nothing (loop.setup does this)
    ... load and check the data, build the model ...
    session.begin(state)          # --resume: restore the newest readable checkpoint; --overwrite: drop the old run's
    loss, norm = optimizer_step(fabric, model, optimizer, scheduler, [lambda: model(**batch).loss], clip_grad)
    session.guard.record(step, lr, loss, norm)
    session.save(state, step, model)     # checks the losses since the last check and the weights first
    session.save_model(lambda folder, weights: model.save_pretrained(folder, state_dict=weights), model, step)

A streamed training split (`swin_hf.training.streaming.StreamLoader`) is registered with
`session.track_stream(loader)` before `begin`: every checkpoint then holds each process's position in the
stream, and `--resume` continues there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch

from .checkpoint import (
    any_process,
    check_output_dir,
    checkpoint_path,
    claim_output_dir,
    gather_objects,
    parse_allowed,
    precheck_resume,
    restore,
    save_atomic,
    write_folder_atomically,
)
from .distributed import full_state_dict, is_sharded, named_optimizer_state, own_class
from .errors import OutputWriteError
from .guard import LossGuard
from .optim import set_schedule_position
from .progress import Display

logger = logging.getLogger(__name__)

# settings of every recipe that do not change what a run computes: they may differ on --resume
FREE_SETTINGS = (
    "output_dir", "overwrite", "resume", "allow_changed_config", "num_workers", "log_every", "progress", "no_progress",
    "accelerator", "devices", "strategy", "num_nodes", "cpu_threads", "keep_checkpoints", "checkpoint_every",
    "push_to_hub", "hub_model_id", "debug_record_ranks", "target_accuracy", "target_minutes", "num_overlays",
    "cache_images", "compile", "gradient_checkpointing", "deterministic", "eval_every_epochs", "precision",
)


class Session:
    """A recipe's claim on its --output-dir and its checkpoints. Creating one checks the folder (a folder,
    writable, not another run's unless --resume / --overwrite) and nothing else; `begin` resumes or
    claims it once the data and model are known to be good."""

    def __init__(
        self, fabric, recipe: str, output_dir: str, settings: dict, *, overwrite: bool = False, resume: bool = False,
        allow_changed_config: str | None = None, keep_checkpoints: int = 2, fixed: tuple[str, ...] = ("model",),
        clip_grad: float | None = None, precision: str | None = None,
    ):
        check_output_dir(fabric, output_dir, overwrite, resume)
        self.fabric, self.output_dir = fabric, output_dir
        self.checkpoints = os.path.join(output_dir, "checkpoints")
        self.overwrite, self.resume, self.keep = overwrite, resume, keep_checkpoints
        self.allowed = parse_allowed(allow_changed_config)
        self.fixed = fixed
        self.run_info = {"recipe": recipe, "config": dict(settings)}
        self.guard = LossGuard(fabric, clip_grad, precision)
        if resume:  # settings that differ are refused now, before the data and the model are loaded
            precheck_resume(self.checkpoints, self.run_info["config"], self.allowed, fixed, FREE_SETTINGS)
        self.resumed_from: str | None = None
        self.missing: list[str] = []  # optional state entries the restored checkpoint lacked
        self.changes: list[tuple[str, object, object]] = []  # allowed (setting, old, new) differences
        self.stream = None  # a StreamLoader whose position the checkpoints hold

    def track_stream(self, loader) -> None:
        """Save `loader`'s stream position (one per process) with every checkpoint and restore it on --resume."""
        self.stream = loader

    def begin(self, state: dict, extra_settings: dict | None = None, optional: tuple[str, ...] = ()) -> str | None:
        """Resume into `state` (--resume) or claim the folder (--overwrite drops the old run's checkpoints).
        The settings of the run (plus `extra_settings`, e.g. the class names) are compared with the
        checkpoint's; optimiser hyperparameters (lr, weight decay) and the schedule are this run's, so an
        allowed change takes effect. Returns the checkpoint loaded, or None."""
        self.run_info["config"].update(extra_settings or {})
        claim_output_dir(self.fabric, self.output_dir, self.overwrite, self.resume)
        if not self.resume:
            return None
        fresh = {k: [{h: g[h] for h in ("initial_lr", "weight_decay") if h in g} for g in v.param_groups]
                 for k, v in state.items() if isinstance(v, torch.optim.Optimizer) or hasattr(v, "param_groups")}
        if self.stream is not None:
            state["stream"], optional = None, (*optional, "stream")
        path, self.missing, self.changes = restore(
            self.fabric, self.checkpoints, state, self.run_info, self.allowed, self.fixed, FREE_SETTINGS, optional
        )
        if self.stream is not None:
            self._restore_stream(state.pop("stream"))
        if path is None:
            self.fabric.print(f"--resume: no checkpoint in {self.checkpoints}; starting from scratch.")
            return None
        if self.changes and self.fabric.is_global_zero:
            logger.warning("--resume with changed settings (allowed): %s",
                           "; ".join(f"{k} {old!r} -> {new!r}" for k, old, new in self.changes))
        for key, groups in fresh.items():
            for group, values in zip(state[key].param_groups, groups):
                group.update(values)
        for scheduler in (v for v in state.values() if isinstance(v, torch.optim.lr_scheduler.LRScheduler)):
            set_schedule_position(scheduler)
        self.resumed_from = self.guard.last_checkpoint = path
        return path

    def _restore_stream(self, positions: list | None) -> None:
        fabric = self.fabric
        if positions and len(positions) == fabric.world_size:
            self.stream.load_state_dict(positions[fabric.global_rank])
        elif positions:
            logger.warning("--resume: the checkpoint's stream positions are for %d process(es), this run has %d; "
                           "each process starts its part of the stream from the beginning.", len(positions), fabric.world_size)

    def save(self, state: dict, step: int, model: torch.nn.Module | None = None) -> str:
        """An atomic checkpoint of `state` (plus this run's settings), after checking that every step since
        the last check had a finite loss and, given `model`, that its weights are finite."""
        self.guard.check()
        if model is not None:
            self.guard.check_weights(model, step)
        path = checkpoint_path(self.checkpoints, step)
        if self.stream is not None:
            state = {**state, "stream": gather_objects(self.fabric, self.stream.state_dict())}
        if model is not None and not is_sharded(model):  # (the sharded strategy keys them by name itself)
            state = {k: named_optimizer_state(model, v) if isinstance(v, torch.optim.Optimizer) else v for k, v in state.items()}
        run = {**self.run_info, "entries": sorted(state), "step": step}
        save_atomic(self.fabric, path, {**state, "run": run}, keep=self.keep)
        self.guard.last_checkpoint = path
        return path

    def save_model(
        self, write: Callable[[str, dict], None], model: torch.nn.Module, step: int, name: str = "model",
        directory: str | None = None,
    ) -> None:
        """Rank 0 writes a model folder with `write(tmp, weights)`, whose files then replace those in
        `directory` (--output-dir). `weights` is the model's state dict with whole tensors (sharded weights are
        gathered from every process first), and a sharded model is an instance of its own class while `write`
        runs (see distributed.own_class). Refused for non-finite weights, removed again if the disk fills
        (OutputWriteError on every process)."""
        self.guard.check()
        self.guard.check_weights(model, step)
        weights = full_state_dict(model)
        error = None
        if self.fabric.is_global_zero:
            try:
                with own_class(model):
                    write_folder_atomically(directory or self.output_dir, lambda folder: write(folder, weights), name)
            except OutputWriteError as caught:
                error = caught
        if any_process(self.fabric, error is not None):
            raise error or OutputWriteError(f"writing the {name} failed on process 0")
        self.fabric.barrier()


def optimizer_step(
    fabric, model, optimizer, scheduler, micro_losses: Sequence[Callable[[], torch.Tensor]], clip_grad: float | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One optimiser step: backward of each micro-batch loss (gradients accumulate; DDP synchronises on the
    last), clipping (a non-finite norm is returned, not raised), the step and the schedule. Returns (the
    sum of the micro-batch losses, the gradient norm before clipping or None); with no micro-batch, only
    the schedule advances."""
    total = None
    for i, compute in enumerate(micro_losses):
        with fabric.no_backward_sync(model, enabled=i < len(micro_losses) - 1):
            loss = compute()
            fabric.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    norm = None
    if micro_losses:
        if clip_grad:
            norm = fabric.clip_gradients(model, optimizer, max_norm=clip_grad, error_if_nonfinite=False)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return total, norm


def log_training_row(session: Session, display: Display, progress: dict, step: int, lr: float,
                     losses: list[torch.Tensor], metrics=None) -> dict:
    """The training row every recipe logs every --log-every steps: after the non-finite check (nothing is
    logged past a non-finite loss), {step, epoch, train_loss (the mean of `losses`, this process's losses
    since the last row, averaged over the processes, so every process logs the same number), lr, images/s
    in total and per process} is appended to progress["history"], written to `metrics` (a
    report.MetricLoggers: process 0 writes) and shown beside the progress bar. The check, the loss and the
    throughput are reduced over the processes: every process calls this at the same steps. Returns the row."""
    session.guard.check()
    train_loss = mean_over_processes(session.fabric, losses)
    per_process, total = display.rates()
    row = {"step": step, "epoch": progress["epoch"], "train_loss": train_loss, "lr": lr, "images_per_s": total,
           "images_per_s_per_process": per_process}
    progress["history"].append(row)
    if metrics is not None:
        metrics.log({k: v for k, v in row.items() if k != "step"}, step)
    if display.bar is not None:
        display.bar.set_postfix(epoch=row["epoch"], loss=f"{train_loss:.3f}", lr=f"{lr:.2e}", img_s=f"{total:.0f}")
    return row


def mean_over_processes(fabric, losses: list[torch.Tensor]) -> float:
    """The mean of `losses` (this process's, on its device) averaged over the processes."""
    mean = torch.stack(losses).float().mean() if losses else torch.tensor(float("nan"), device=fabric.device)
    return float(fabric.all_reduce(mean, reduce_op="mean")) if fabric.world_size > 1 else float(mean)


__all__ = ["FREE_SETTINGS", "Session", "log_training_row", "mean_over_processes", "optimizer_step"]
