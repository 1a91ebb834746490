"""Exponential moving average of model weights (evaluated and saved instead of the raw weights)."""

from __future__ import annotations

import torch
from torch import nn

from .distributed import full_tensor, shard_like


class EMA:
    """shadow = decay * shadow + (1 - decay) * weights after every optimiser step.

    The effective decay ramps up as min(decay, (1 + n) / (10 + n)) so early, random weights fade fast.
    Floating-point buffers are averaged too; integer buffers are copied. Under a sharded strategy each
    process averages its own shards; `state_dict` gathers whole tensors (every process calls it, as Fabric's
    save does under that strategy) and `load_state_dict` takes whole tensors and keeps this process's shards.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            shadow = self.shadow[key]
            if value.is_floating_point():
                shadow.mul_(d).add_(value.detach().float(), alpha=1 - d)
            else:
                shadow.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: full_tensor(v).cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for key, value in state["shadow"].items():
            self.shadow[key].copy_(shard_like(value, self.shadow[key]))


class swapped_weights:
    """Context manager: the model temporarily holds the EMA weights (no-op when ema is None)."""

    def __init__(self, model: nn.Module, ema: EMA | None):
        self.model, self.ema, self.saved = model, ema, None

    def __enter__(self):
        if self.ema is not None:
            self.saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.ema.copy_to(self.model)
        return self.model

    def __exit__(self, *exc):
        if self.saved is not None:
            self.model.load_state_dict(self.saved)
        return False


__all__ = ["EMA", "swapped_weights"]
