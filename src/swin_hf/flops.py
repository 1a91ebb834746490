"""Parameters and FLOPs of a Swin model, counted the way the paper (and the official `flops()`) count them.

What "FLOPs" means here (and in the paper): multiply-accumulates (MACs) of
  - every matrix product: patch embedding conv, qkv / proj / MLP linears, patch merging reduction, the head,
    and the two attention products Q K^T and (softmax) V;
  - plus H*W*C per LayerNorm (one term per normalised element), as the official code adds.
Bias additions, softmax, GELU, residual additions and the average pool are not counted. Neither is Swin
V2's continuous position bias MLP (a function of the window size alone, not of the image; the official
V2 `flops()` and its paper leave it out): it is reported apart, as `position_bias_macs`.

How: the model is built on the `meta` device (no memory, no arithmetic) with eager attention, and run
under `torch.utils.flop_counter.FlopCounterMode`, which reports 2 FLOPs per MAC of mm/bmm/addmm/conv.
Eager attention matters: the fused `scaled_dot_product_attention` CPU kernel is not in the counter's
table, so with it torch sees only the linears and the conv (Swin-T: 4.35G instead of 4.49G). LayerNorm
elements are counted with forward hooks. The result matches the official `flops()` (V1 and V2) to within 0.1%.

The theoretical attention cost per block (section 3.2 of the paper), for an h x w map of width C and
window M:  Omega(MSA) = 4hwC^2 + 2(hw)^2 C   (global attention, as in ViT)
           Omega(W-MSA) = 4hwC^2 + 2M^2 hwC (window attention)
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .configuration_swin import PRESETS, SwinConfig, to_pair


@dataclass
class PartCost:
    """Cost of one part of the model (patch embedding, a stage with its patch merging, or norm + head)."""

    name: str
    resolution: tuple[int, int]  # token grid the part works on (H, W)
    channels: int
    params: int
    matmul_macs: int  # multiply-accumulates of matrix products and convolutions
    norm_elements: int  # elements normalised by LayerNorms (one "FLOP" each in the official count)
    blocks: int = 0
    msa_macs: int = 0  # Omega(MSA), summed over the blocks (attention part only: qkv, proj, products)
    wmsa_macs: int = 0  # Omega(W-MSA), summed over the blocks
    position_bias_macs: int = 0  # Swin V2's position bias MLP, not in `flops` (as the paper counts)

    @property
    def flops(self) -> int:
        return self.matmul_macs + self.norm_elements


@dataclass
class ModelCost:
    """Per-part and total parameters and FLOPs of a config at an image size."""

    config: SwinConfig
    image_size: tuple[int, int]
    parts: list[PartCost] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def flops(self) -> int:
        return sum(p.flops for p in self.parts)

    @property
    def matmul_macs(self) -> int:
        return sum(p.matmul_macs for p in self.parts)

    @property
    def norm_elements(self) -> int:
        return sum(p.norm_elements for p in self.parts)

    @property
    def position_bias_macs(self) -> int:
        return sum(p.position_bias_macs for p in self.parts)

    def as_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "window_size": self.config.window_size,
            "num_labels": self.config.num_labels,
            "params": self.params,
            "flops": self.flops,
            "matmul_macs": self.matmul_macs,
            "norm_elements": self.norm_elements,
            "position_bias_macs": self.position_bias_macs,
            "parts": [
                {
                    "name": p.name,
                    "resolution": list(p.resolution),
                    "channels": p.channels,
                    "params": p.params,
                    "flops": p.flops,
                    "matmul_macs": p.matmul_macs,
                    "norm_elements": p.norm_elements,
                    "blocks": p.blocks,
                    "msa_macs": p.msa_macs,
                    "wmsa_macs": p.wmsa_macs,
                    "position_bias_macs": p.position_bias_macs,
                }
                for p in self.parts
            ],
        }


def attention_cost(height: int, width: int, channels: int, window: int) -> tuple[int, int]:
    """(Omega(MSA), Omega(W-MSA)) of one block on a height x width map, in multiply-accumulates."""
    hw = height * width
    projections = 4 * hw * channels**2  # qkv (3hwC^2) + output projection (hwC^2)
    return projections + 2 * hw**2 * channels, projections + 2 * window**2 * hw * channels


def resolve_config(name_or_dir: str, num_labels: int | None = None) -> SwinConfig:
    """The config of a preset name (with its release's head: 1000 labels, 21841 for the ImageNet-22k ones,
    unless `num_labels` is given) or of a saved model directory (swin_hf or transformers' Swin / Swinv2)."""
    if name_or_dir in PRESETS:
        default = PRESETS[name_or_dir].num_labels or 1000
        return SwinConfig.from_preset(name_or_dir, num_labels=default if num_labels is None else num_labels)
    import os

    if os.path.isdir(name_or_dir):
        from transformers import PretrainedConfig

        from .convert import config_from_transformers

        config_dict, _ = PretrainedConfig.get_config_dict(name_or_dir)
        if config_dict.get("model_type") not in ("swin", "swinv2", SwinConfig.model_type):
            raise ValueError(
                f"{name_or_dir}: config.json has model_type {config_dict.get('model_type')!r}; expected a Swin model "
                f"({SwinConfig.model_type!r}, 'swin' or 'swinv2')."
            )
        overrides = {} if num_labels is None else {"num_labels": num_labels}
        return config_from_transformers(config_dict, SwinConfig, **overrides)
    raise ValueError(
        f"{name_or_dir!r} is neither a preset nor a model directory. Presets: {', '.join(PRESETS)}."
    )


def measure_cost(config: SwinConfig, image_size: int | tuple[int, int] | None = None) -> ModelCost:
    """Parameters and FLOPs of SwinForImageClassification(config) (SwinModel when num_labels is 0) on one
    image of `image_size` (default: config.image_size). Nothing is allocated: the model lives on `meta`."""
    size = to_pair(config.image_size if image_size is None else image_size)
    # measured once per config and size in a process (the cards, `swin-hf info` and their tests ask again)
    return copy.deepcopy(_measured(config.to_json_string(), size))


@functools.lru_cache(maxsize=64)
def _measured(config_json: str, size: tuple[int, int]) -> ModelCost:
    from .modeling_swin import SwinForImageClassification, window_geometry

    config = SwinConfig.from_dict(json.loads(config_json))
    patch = to_pair(config.patch_size)
    if size[0] < patch[0] or size[1] < patch[1]:
        raise ValueError(
            f"Image size {size[0]}x{size[1]} is smaller than one {patch[0]}x{patch[1]} patch; use at least {max(patch)}."
        )
    config._attn_implementation = "eager"  # explicit Q K^T and A V products the counter can see
    with torch.device("meta"):
        model = SwinForImageClassification(config).eval()

    norm_elements: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            def count(module, inputs, output, name=name):
                norm_elements[name] = norm_elements.get(name, 0) + inputs[0].numel()

            hooks.append(module.register_forward_hook(count))
    pixels = torch.empty(1, config.num_channels, *size, device="meta")
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    by_module = counter.get_flop_counts()
    root = type(model).__name__

    def macs(prefix: str) -> int:
        return sum(by_module.get(f"{root}.{prefix}", {}).values()) // 2

    def position_bias_macs(prefix: str) -> int:  # V2's cpb_mlp modules under `prefix`
        inside = (c for name, c in by_module.items() if name.startswith(f"{root}.{prefix}.") and name.endswith(".cpb_mlp"))
        return sum(sum(c.values()) for c in inside) // 2

    def norms(prefix: str) -> int:
        return sum(n for name, n in norm_elements.items() if name == prefix or name.startswith(prefix + "."))

    def params(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    height, width = -(-size[0] // patch[0]), -(-size[1] // patch[1])
    cost = ModelCost(config=config, image_size=size)
    cost.parts.append(
        PartCost("patch embedding", (height, width), config.embed_dim, params(model.swin.embeddings),
                 macs("swin.embeddings"), norms("swin.embeddings"))
    )
    for s, stage in enumerate(model.swin.stages):
        channels = config.embed_dim * 2**s
        window, _ = window_geometry(height, width, config.window_size, always_partition=False)
        msa, wmsa = attention_cost(height, width, channels, window)
        bias = position_bias_macs(f"swin.stages.{s}")
        cost.parts.append(
            PartCost(f"stage{s + 1}", (height, width), channels, params(stage), macs(f"swin.stages.{s}") - bias,
                     norms(f"swin.stages.{s}"), blocks=len(stage.blocks), msa_macs=msa * len(stage.blocks),
                     wmsa_macs=wmsa * len(stage.blocks), position_bias_macs=bias)
        )
        if stage.downsample is not None:
            height, width = (height + 1) // 2, (width + 1) // 2
    total_macs = sum(counter.get_flop_counts()["Global"].values()) // 2 - cost.position_bias_macs
    head_params = params(model) - sum(p.params for p in cost.parts)
    head_macs = total_macs - sum(p.matmul_macs for p in cost.parts)
    cost.parts.append(
        PartCost("norm + head", (height, width), config.hidden_size, head_params, head_macs,
                 norms("swin.norm") + norms("classifier"))
    )
    return cost


def format_report(cost: ModelCost, title: str = "") -> str:
    """A table of parameters and FLOPs per part, totals, and the attention cost against global attention."""
    c = cost.config
    lines = []
    if title:
        lines.append(title)
    lines.append(
        f"{'Swin V2, ' if c.version == 2 else ''}image {cost.image_size[0]}x{cost.image_size[1]}, patch {c.patch_size}, window {c.window_size}, "
        f"embed_dim {c.embed_dim}, depths {list(c.depths)}, heads {list(c.num_heads)}, {c.num_labels} labels"
    )
    lines.append("")
    lines.append(f"{'part':<16}{'tokens':>10}{'channels':>10}{'params':>15}{'FLOPs (G)':>12}")
    for p in cost.parts:
        tokens = f"{p.resolution[0]}x{p.resolution[1]}"
        lines.append(f"{p.name:<16}{tokens:>10}{p.channels:>10}{p.params:>15,}{p.flops / 1e9:>12.3f}")
    lines.append(f"{'total':<16}{'':>10}{'':>10}{cost.params:>15,}{cost.flops / 1e9:>12.3f}")
    lines.append("")
    lines.append(
        f"Parameters: {cost.params:,} ({cost.params / 1e6:.1f}M). FLOPs: {cost.flops / 1e9:.3f}G multiply-accumulates "
        f"({cost.matmul_macs / 1e9:.3f}G in matrix products counted by torch.utils.flop_counter + "
        f"{cost.norm_elements / 1e9:.3f}G LayerNorm elements), as the paper counts them."
    )
    if cost.position_bias_macs:
        lines.append(
            f"Not counted, as in the Swin V2 paper: {cost.position_bias_macs / 1e9:.3f}G in the continuous position "
            "bias MLPs (one run per block, a function of the window size, not of the image)."
        )
    lines.append("")
    lines.append("Attention cost per stage, all blocks (paper section 3.2; GMACs):")
    lines.append(f"{'stage':<16}{'blocks':>8}{'global MSA':>14}{'window W-MSA':>14}{'ratio':>9}")
    for p in cost.parts:
        if p.blocks:
            ratio = p.msa_macs / p.wmsa_macs
            lines.append(f"{p.name:<16}{p.blocks:>8}{p.msa_macs / 1e9:>14.3f}{p.wmsa_macs / 1e9:>14.3f}{ratio:>8.1f}x")
    msa = sum(p.msa_macs for p in cost.parts)
    wmsa = sum(p.wmsa_macs for p in cost.parts)
    lines.append(f"{'total':<16}{'':>8}{msa / 1e9:>14.3f}{wmsa / 1e9:>14.3f}{msa / wmsa:>8.1f}x")
    lines.append(
        "Omega(MSA) = 4hwC^2 + 2(hw)^2 C (a ViT of the same width attending globally); "
        "Omega(W-MSA) = 4hwC^2 + 2M^2 hwC."
    )
    return "\n".join(lines)




__all__ = ["ModelCost", "PartCost", "attention_cost", "format_report", "measure_cost", "resolve_config"]
