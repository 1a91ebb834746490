"""What a recipe adds to the shared training loop (swin_hf.training.loop): a `Task`.

The loop owns everything every recipe does the same way: the output folder and its lock, resume, the
optimiser and schedule, gradient accumulation, EMA, checkpoints (epoch ends and --checkpoint-every),
the progress line, the non-finite stop, the best model by the task's score, the final weights,
metrics.json, the curves and the card. A task says what is particular to it:

    class SegmentTask(Task):
        name, score, card_task = "segment", "val_mean_iou", "image-segmentation"
        def load_data(self, fabric) -> TaskData: ...      # training + validation datasets and their collate
        def build_model(self, data) -> nn.Module: ...     # (sets self.processor when it has one)
        def loss(self, run, batch) -> Tensor: ...         # the mean loss of one batch
        def evaluate(self, run) -> Evaluation: ...        # metrics, the score, the epoch line's words
        def save_model(self, run, folder, weights): ...   # the folder pipeline() loads

A batch is a dict with "pixel_values" (None when every image of it was unreadable: the loop passes over
it), optionally "skipped_files" (names, counted) and "index" (example indices, for the tests' record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .settings import RecipeSettings


@dataclass
class TaskData:
    """The data of a run, as a task loaded it."""

    train: Any  # a map-style Dataset of examples, or with --streaming a datasets IterableDataset of rows
    validation: Any  # a map-style Dataset of examples
    collate: Callable  # list of examples -> batch (dict)
    stream_rows: Callable | None = None  # with --streaming: list of rows -> batch
    class_names: list[str] = field(default_factory=list)
    source: str = ""  # where the data came from, in words (model card)
    notes: list[str] = field(default_factory=list)  # what the data checks found (model card)
    move_to_device: bool = True  # whether Fabric moves batches to the device (else the task's loss does)


@dataclass
class Evaluation:
    """One evaluation: `metrics` ("val_*" numbers, logged and kept in the history), `score` (higher is better:
    the best model so far is saved), `text` (the epoch line's words) and `keep` (kept with the best row for
    the task's pictures and summary, e.g. predictions)."""

    metrics: dict
    score: float
    text: str
    keep: dict = field(default_factory=dict)


class Task:
    """A recipe's part of the run. `settings` are the recipe's resolved settings."""

    name: str = "recipe"  # the recipe's name in checkpoints and the first log line
    score: str = ""  # the "val_*" metric that picks the best model (higher is better)
    card_task: str = "image-classification"  # report.CARD_TASKS key of its model card
    fixed: tuple[str, ...] = ("model",)  # settings a resumed run can never change (its weights are for them)
    not_recorded: tuple[str, ...] = ()  # settings that only shape the pictures: not compared on resume
    curves: dict[str, str] | None = None  # metrics plotted beside the loss {key: label}
    curves_title: str = "Validation"
    builtin_threads: int = 1  # torch threads of the built-in run (--cpu-threads auto)

    def __init__(self, settings: RecipeSettings):
        self.settings = settings
        self.processor = None

    # ---- before Fabric starts -----------------------------------------------------------------------
    @classmethod
    def resolve(cls, settings: RecipeSettings) -> RecipeSettings:
        """Settings left at 'auto' filled in (the recipe's choices); checks of options that go together."""
        return settings

    def builtin(self) -> bool:
        """Whether this is the recipe's built-in run (its tiny model on its built-in data)."""
        return False

    # ---- setup --------------------------------------------------------------------------------------
    def check(self, fabric) -> None:
        """What can be refused before the data is read (the model source, sizes, a strategy)."""

    def load_data(self, fabric) -> TaskData:
        raise NotImplementedError

    def build_model(self, data: TaskData) -> torch.nn.Module:
        raise NotImplementedError

    def depths(self, model: torch.nn.Module) -> list[int]:
        """The backbone's blocks per stage (layer-wise lr decay)."""
        return list(model.config.depths)

    def start(self, run) -> None:
        """After the model is on its device and before the first step (e.g. batch augmentation on the device)."""

    # ---- training -----------------------------------------------------------------------------------
    def loss(self, run, batch: dict) -> torch.Tensor:
        """The mean loss of `batch` (training mode)."""
        raise NotImplementedError

    def examples(self, batch: dict) -> int:
        return len(batch["pixel_values"])

    def evaluate(self, run) -> Evaluation:
        raise NotImplementedError

    def save_model(self, run, folder: str, weights: dict) -> None:
        """The evaluated model as a folder that `pipeline(...)` and `from_pretrained` load."""
        run.raw_model.save_pretrained(folder, state_dict=weights)
        if self.processor is not None:
            self.processor.save_pretrained(folder)

    # ---- the outputs --------------------------------------------------------------------------------
    def summary(self, run, best: dict) -> dict:
        """The task's entries of metrics.json from the best evaluation's row (`best`, {} if none ran)."""
        return {}

    def card_metrics(self, summary: dict) -> dict:
        return {}

    def pictures(self, run) -> None:
        """Pictures of the best model (called on every process: a forward pass may need them all; process 0 draws)."""

    def report(self, summary: dict) -> list[str]:
        """The result lines printed at the end of a run."""
        return []


__all__ = ["Evaluation", "Task", "TaskData"]
