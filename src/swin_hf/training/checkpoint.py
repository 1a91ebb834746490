"""Training checkpoints: atomic writes, finding the latest, and the RNG / data-position state."""

from __future__ import annotations

import glob
import logging
import os
import random
import re
import shutil

import numpy as np
import torch

logger = logging.getLogger(__name__)

PATTERN = re.compile(r"step-(\d+)\.ckpt$")


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step-{step:08d}.ckpt")


def latest_checkpoint(directory: str) -> str | None:
    """The checkpoint with the highest step in `directory` (temp files of interrupted writes ignored)."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(directory, "step-*.ckpt")) if (m := PATTERN.search(p))]
    return max(found)[1] if found else None


def save_atomic(fabric, path: str, state: dict, keep: int = 2) -> None:
    """fabric.save to a temporary name, then rename: a reader (or a resume after a crash) never sees a
    half-written checkpoint. Older checkpoints beyond the newest `keep` are removed (rank 0)."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f".tmp-{os.path.basename(path)}")
    if fabric.is_global_zero:
        os.makedirs(directory, exist_ok=True)
    fabric.barrier()
    fabric.save(tmp, state)
    fabric.barrier()
    if fabric.is_global_zero:
        os.replace(tmp, path)
        if keep > 0:
            found = sorted(
                (int(m.group(1)), p) for p in glob.glob(os.path.join(directory, "step-*.ckpt")) if (m := PATTERN.search(p))
            )
            for _, old in found[:-keep]:
                if os.path.isdir(old):
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.remove(old)
        logger.info("checkpoint written: %s", path)
    fabric.barrier()


def prepare_output_dir(fabric, out: str, overwrite: bool, resume: bool) -> None:
    """Every recipe's claim on its --output-dir, made by rank 0 while the others wait.

    A non-empty folder needs --resume (continue its latest checkpoint) or --overwrite (train into it;
    its old checkpoints are removed, so a later --resume cannot pick up a stale one).
    """
    if fabric.is_global_zero:
        if os.path.isdir(out) and os.listdir(out) and not (resume or overwrite):
            hint = " Pass --resume to continue it," if latest_checkpoint(os.path.join(out, "checkpoints")) else ""
            raise FileExistsError(
                f"--output-dir {out!r} is not empty.{hint} pass --overwrite to train into it anyway, or choose another directory."
            )
        if overwrite and not resume:
            shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
        os.makedirs(out, exist_ok=True)
    fabric.barrier()


__all__ = ["checkpoint_path", "latest_checkpoint", "prepare_output_dir", "rng_state", "save_atomic", "set_rng_state"]
