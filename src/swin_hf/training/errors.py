"""The errors a recipe reports as one line (`error: ...`) instead of a traceback.

Each says what was wrong and what to do. `exit_code` is the recipe's exit status: 2 for what the command
line, the data or the output folder must change (as argparse does for bad arguments), 1 for a run that
started and failed (a non-finite loss, a full disk).
"""

from __future__ import annotations


class RecipeError(Exception):
    """A problem the user can fix; the message says what was wrong and what to do."""

    exit_code = 2


class UsageError(RecipeError, ValueError):
    """Options that cannot work (alone or together)."""


class OutputDirError(RecipeError, OSError):
    """--output-dir cannot be used: a file, not writable, or (OutputDirInUseError) another run's folder."""


class OutputDirInUseError(OutputDirError, FileExistsError):
    """--output-dir holds another run and neither --resume nor --overwrite was given."""


class OutputDirLockedError(OutputDirError):
    """--output-dir is held by a run that is still going (its lock is taken); nothing was written."""

    exit_code = 1


class ModelError(RecipeError, ValueError):
    """--model names nothing that can be loaded (no such preset or folder, an invalid config, an unreachable Hub)."""


class ResumeError(RecipeError):
    """--resume cannot continue: no readable checkpoint, or one that does not fit this model."""


class ConfigChangedError(ResumeError):
    """--resume with settings that differ from the checkpoint's run, not allowed by --allow-changed-config."""


class NonFiniteLossError(RecipeError, FloatingPointError):
    """Training produced a non-finite loss (or gradient norm); nothing from that step on was saved."""

    exit_code = 1


class OutputWriteError(RecipeError, OSError):
    """A checkpoint or output file could not be written (a full disk, say); partial files were removed."""

    exit_code = 1


__all__ = [
    "ConfigChangedError",
    "ModelError",
    "NonFiniteLossError",
    "OutputDirError",
    "OutputDirInUseError",
    "OutputDirLockedError",
    "OutputWriteError",
    "RecipeError",
    "ResumeError",
    "UsageError",
]
