"""The non-finite stop every recipe shares: a run whose loss (or gradient norm) becomes inf or NaN stops
with the step, the learning rate and what to try, and nothing from that step on is saved.

Losses stay on the device between checks (no synchronisation per step); `check` looks at all the steps
recorded since the last check, on every process, before anything is logged, evaluated or saved.
"""

from __future__ import annotations

import math

import torch

from .distributed import local_tensor
from .errors import NonFiniteLossError


class LossGuard:
    """Records (step, lr, loss, gradient norm) per optimiser step; `check()` raises NonFiniteLossError
    naming the first step where either was not finite. Call `check` on every process at the same steps."""

    def __init__(self, fabric, clip_grad: float | None = None, precision: str | None = None):
        self.fabric = fabric
        self.clip_grad = clip_grad
        self.precision = str(precision or "")
        self.pending: list[tuple[int, float, torch.Tensor, torch.Tensor | None]] = []
        self.last_checkpoint: str | None = None

    def record(self, step: int, lr: float, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> None:
        self.pending.append((step, lr, loss.detach(), None if grad_norm is None else local_tensor(grad_norm.detach())))

    def check(self) -> None:
        pending, self.pending = self.pending, []
        if not pending and self.fabric.world_size == 1:
            return
        device = pending[0][2].device if pending else self.fabric.device
        values = [torch.stack([loss.float().reshape(()), (norm if norm is not None else loss.new_zeros(())).float().reshape(())])
                  for _, _, loss, norm in pending]
        ok = torch.stack(values).isfinite().all(dim=1) if values else torch.ones(0, dtype=torch.bool, device=device)
        bad = (~ok).nonzero()
        first = pending[int(bad[0])][0] if len(bad) else math.inf
        first_step = torch.tensor(float(first), device=device)
        if self.fabric.world_size > 1:
            first_step = self.fabric.all_reduce(first_step, reduce_op="min")
        if math.isinf(float(first_step)):
            return
        step = int(first_step)
        here = next(((s, lr, loss, norm) for s, lr, loss, norm in pending if s == step), None)
        raise NonFiniteLossError(self.message(step, *(here[1:] if here else (None, None, None))))

    def message(self, step: int, lr: float | None, loss: torch.Tensor | None, norm: torch.Tensor | None) -> str:
        what = "the loss became non-finite"
        if loss is not None:
            value = float(loss)
            what = f"the loss became {value}" if not math.isfinite(value) else f"the gradient norm became {float(norm)}"
        lr_text = f" (lr {lr:.3g})" if lr is not None else ""
        saved = f"; the last checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
        tries = [f"a lower --lr (e.g. {lr / 10:.3g})" if lr else "a lower --lr"]
        if not self.clip_grad:
            tries.append("gradient clipping (--clip-grad 1)")
        if "16" in self.precision:
            tries.append("--precision 32-true")
        return (
            f"training stopped at step {step}: {what}{lr_text}. Nothing from this step on was saved{saved}. "
            f"Try {', '.join(tries[:-1]) + ' or ' + tries[-1] if len(tries) > 1 else tries[0]}."
        )

    def check_weights(self, model: torch.nn.Module, step: int) -> None:
        """Refuse to save weights that are not all finite (each process checks its shards, if sharded)."""
        finite = torch.stack([local_tensor(p.detach()).isfinite().all() for p in model.parameters()]).all()
        if self.fabric.world_size > 1:
            finite = self.fabric.all_reduce(finite.float(), reduce_op="min") > 0
        if not bool(finite):
            raise NonFiniteLossError(
                f"training stopped at step {step}: the weights are no longer finite, so they were not saved"
                + (f"; the last checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "")
                + ". Try a lower --lr" + ("" if self.clip_grad else " or gradient clipping (--clip-grad 1)") + "."
            )


__all__ = ["LossGuard"]
