"""The recipes on several processes: what `--strategy` means, the model and optimiser set up for it, and
whole (unsharded) tensors wherever something is saved.

- `--strategy fsdp` shards every Swin block's parameters, gradients and optimiser state over the processes
  (PyTorch's `fully_shard`, FSDP2, through Lightning Fabric's ModelParallelStrategy). It runs on CPUs (gloo)
  as well as GPUs; Lightning's own "fsdp" strategy (FSDP1) refuses CPUs. Checkpoints, the EMA and exported
  models hold the full tensors, gathered on save: a checkpoint is one file, read with weights_only=True,
  that resumes under any strategy and process count the settings allow.
- Other names (`ddp`, `deepspeed`, ...) go to Lightning Fabric as they are.
- `setup_model_and_optimizer`: the model is set up (sharded) first and the optimiser built on the parameters
  that result, as FSDP2 requires; for DDP the order makes no difference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

SHARDED_STRATEGIES = ("fsdp",)


def is_distributed_tensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (the tensor itself when it is not sharded)."""
    return tensor.to_local() if is_distributed_tensor(tensor) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every process when it is sharded (a collective: every process calls)."""
    return tensor.full_tensor() if is_distributed_tensor(tensor) else tensor


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` cut the way `like` is sharded, from this process's copy of it (no communication)."""
    if not is_distributed_tensor(like):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with whole tensors: sharded weights are gathered (every process must call it),
    others are the model's own tensors (no copy)."""
    return {key: full_tensor(value.detach()) for key, value in model.state_dict().items()}


def is_sharded(model: torch.nn.Module) -> bool:
    return any(is_distributed_tensor(p) for p in model.parameters())


def named_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """`optimizer.state_dict()` keyed by parameter names instead of positions, as the sharded strategy writes
    it: a checkpoint then resumes under either (a plain optimizer reads it by position, FSDP2 by name)."""
    model = getattr(model, "module", model)
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    state = optimizer.state_dict()
    return {
        "state": {order[i]: value for i, value in state["state"].items()},
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]],
    }


@contextlib.contextmanager
def own_class(model: torch.nn.Module):
    """Inside, a sharded model is an instance of its own class again. (FSDP2 gives every sharded module a
    subclass named FSDP<Class>; transformers' save_pretrained would record that class in config.json's
    auto_map and copy torch's FSDP modules into the folder as the model's code.)"""
    from torch.distributed.fsdp import FSDPModule

    sharded = type(model)
    if isinstance(model, FSDPModule):
        model.__class__ = next(c for c in sharded.__mro__[1:] if not issubclass(c, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded


def shard_swin_blocks(model: torch.nn.Module, mesh) -> torch.nn.Module:
    """Lightning's `parallelize_fn` for `--strategy fsdp`: every Swin block (V1 or V2) becomes a unit of
    FSDP2 sharding over the data-parallel processes, and the rest of the model (embeddings, patch merging,
    heads) one more unit. Works on any model that contains swin_hf blocks (classifier, SimMIM, UperNet...)."""
    from torch.distributed.fsdp import fully_shard

    from ..modeling_swin import SwinBlock

    group = mesh["data_parallel"]
    for module in model.modules():
        if isinstance(module, SwinBlock):
            fully_shard(module, mesh=group)
    fully_shard(model, mesh=group)
    return model


def sharded_strategy():
    """Lightning's ModelParallelStrategy set up as plain FSDP2 over all processes (data parallel = world
    size, no tensor parallelism) with whole-tensor checkpoints."""
    from lightning.fabric.strategies import ModelParallelStrategy

    class FullyShardedStrategy(ModelParallelStrategy):
        """FSDP2 over every process; checkpoints are single files of whole tensors."""

        def __init__(self):
            super().__init__(shard_swin_blocks, save_distributed_checkpoint=False)

        def setup_environment(self) -> None:
            self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
            super().setup_environment()

    return FullyShardedStrategy()


def strategy_for(name):
    """What Fabric is given for a --strategy name: the sharded strategy for 'fsdp', the name otherwise."""
    return sharded_strategy() if name in SHARDED_STRATEGIES else name


def setup_model_and_optimizer(fabric, model: torch.nn.Module, make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]):
    """(the model as Fabric runs it, the optimiser): the model is set up first (sharded under fsdp, in
    place), then `make_optimizer(model)` builds the optimiser on its resulting parameters."""
    wrapped = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(make_optimizer(model))
    return wrapped, optimizer


def strategy_name(fabric) -> str:
    """A short name of the strategy Fabric runs: single-device, ddp, fsdp, deepspeed, ..."""
    name = type(fabric.strategy).__name__
    known = {"SingleDeviceStrategy": "single-device", "DDPStrategy": "ddp", "FullyShardedStrategy": "fsdp (FSDP2)",
             "FSDPStrategy": "fsdp (FSDP1)", "DeepSpeedStrategy": "deepspeed", "DataParallelStrategy": "dp"}
    return known.get(name, name)


def describe_launch(fabric) -> str:
    """One line: processes, nodes, strategy, accelerator, precision."""
    nodes = getattr(fabric.strategy, "num_nodes", 1) or 1
    world = fabric.world_size
    per_node = max(1, world // nodes)
    layout = f"{nodes} node{'s' if nodes > 1 else ''} x {per_node} process{'es' if per_node > 1 else ''}"
    accelerator = type(fabric.accelerator).__name__.removesuffix("Accelerator").lower()
    return (f"{world} process{'es' if world > 1 else ''} ({layout}), strategy {strategy_name(fabric)}, accelerator "
            f"{accelerator} ({fabric.device}), precision {fabric.strategy.precision.precision}")


__all__ = [
    "SHARDED_STRATEGIES",
    "describe_launch",
    "full_state_dict",
    "full_tensor",
    "is_sharded",
    "local_tensor",
    "named_optimizer_state",
    "own_class",
    "setup_model_and_optimizer",
    "shard_like",
    "shard_swin_blocks",
    "sharded_strategy",
    "strategy_for",
    "strategy_name",
]
