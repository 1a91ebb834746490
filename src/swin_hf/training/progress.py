"""What a run shows while it trains, the same in every recipe: the launch in the first log lines, one
progress bar (process 0 only; `--no-progress` turns it into plain lines), one line per epoch, and the
throughput in images/s per process and in total.

    display = Display(fabric, total_steps, initial_step, enabled=not args.no_progress)
    display.update(images_in_this_step, loss=...)        # every step, every process
    display.line(f"epoch 3/10: ... {display.rates_text()}")    # every process at the same step (it syncs)
    display.close()
"""

from __future__ import annotations

import logging
import time

import torch

from .distributed import describe_launch

logger = logging.getLogger(__name__)


def announce(fabric, recipe: str) -> None:
    """The first log line of a run (process 0): the recipe, processes, nodes, strategy, device, precision."""
    if fabric.is_global_zero:
        logger.info("%s: %s", recipe, describe_launch(fabric))


class Display:
    """A progress bar over optimiser steps on process 0 and images counted on every process."""

    def __init__(self, fabric, total_steps: int, initial_step: int = 0, enabled: bool = True, desc: str = "train"):
        self.fabric = fabric
        self.bar = None
        if fabric.is_global_zero and enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, desc=desc)
        self.images = 0
        self.started = time.perf_counter()

    def update(self, images: int, **postfix) -> None:
        """One optimiser step of `images` images on this process; `postfix` is shown beside the bar."""
        self.images += images
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def rates(self) -> tuple[float, float]:
        """(images/s per process, images/s of all processes) since training started here. Every process
        must call it at the same step (the counts are summed over processes)."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        total = float(self.images)
        if self.fabric.world_size > 1:
            total = float(self.fabric.all_reduce(torch.tensor(total, device=self.fabric.device), reduce_op="sum"))
        return total / seconds / self.fabric.world_size, total / seconds

    def rates_text(self) -> str:
        per_process, total = self.rates()
        if self.fabric.world_size == 1:
            return f"{total:.0f} images/s"
        return f"{total:.0f} images/s ({per_process:.0f} per process x {self.fabric.world_size})"

    def line(self, text: str) -> None:
        """A line for the user (process 0 of all nodes): above the bar, or printed when there is none."""
        if self.bar is not None:
            self.bar.write(text)
        elif self.fabric.is_global_zero:  # (fabric.print prints on the first process of every node)
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["Display", "announce"]
