"""torchvision's Swin weights <-> swin_hf, strict both ways.

- 2D `swin_t/s/b` and `swin_v2_t/s/b` (torchvision.models.swin_transformer) <-> SwinForImageClassification;
- 3D `swin3d_t/s/b` (torchvision.models.video.swin_transformer) <-> VideoSwinForVideoClassification.

Strict means: every torchvision key is renamed or is one of the buffers torchvision derives from the window
(`relative_position_index`, Swin V2's `relative_coords_table`: they give the window, then are dropped), and every
parameter of the swin_hf model is filled with the right shape; otherwise a ConversionError lists the keys.
The config is inferred from the weights (widths, depths, heads, patch, window, classes); the window can be given
where the buffers are missing and the bias table does not pin it (Swin V2, Video Swin).

torchvision's layout (from its module names): 2D `features.0.0` Conv2d, `features.0.2` LayerNorm, stage s's blocks
`features.{2s+1}.{b}`, its patch merging `features.{2s+2}`; 3D `patch_embed.proj` / `patch_embed.norm`, blocks
`features.{2s}.{b}`, merging `features.{2s+1}`; both `norm`, `head`. In a block `mlp.0` / `mlp.3` are fc1 / fc2,
and Swin V2's qkv bias (3C) holds the q and v biases around a k part its forward ignores.
"""

from __future__ import annotations

import math
import re

import torch

from .configuration_swin import SwinConfig
from .configuration_video_swin import VideoSwinConfig
from .convert import ConversionError
from .modeling_swin import log_spaced_offsets, relative_position_index

DERIVED = ("attn.relative_position_index", "attn.relative_coords_table")
_BLOCK = {"mlp.0.": "mlp.fc1.", "mlp.3.": "mlp.fc2."}  # every other block key keeps its name


def torchvision_kind(keys) -> str | None:
    """"video" (swin3d), "image" (swin / swin_v2) or None for a set of torchvision state-dict keys."""
    keys = set(keys)
    if "patch_embed.proj.weight" in keys:
        return "video"
    if "features.0.0.weight" in keys:
        return "image"
    return None


def _rename(key: str, video: bool) -> str | None:
    """The swin_hf name of a torchvision key (None: not a key of torchvision's Swin)."""
    embed = {"patch_embed.proj.": "proj.", "patch_embed.norm.": "norm."} if video else {"features.0.0.": "proj.", "features.0.2.": "norm."}
    for prefix, ours in embed.items():
        if key.startswith(prefix):
            return "swin.embeddings." + ours + key[len(prefix) :]
    first = 0 if video else 1  # the index in `features` of stage 1's blocks
    block = re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", key)
    if block and int(block[1]) >= first and (int(block[1]) - first) % 2 == 0:
        rest = block[3]
        for theirs, ours in _BLOCK.items():
            rest = ours + rest[len(theirs) :] if rest.startswith(theirs) else rest
        return f"swin.stages.{(int(block[1]) - first) // 2}.blocks.{block[2]}.{rest}"
    merging = re.fullmatch(r"features\.(\d+)\.((?:reduction|norm)\..+)", key)
    if merging and int(merging[1]) > first and (int(merging[1]) - first) % 2 == 1:
        return f"swin.stages.{(int(merging[1]) - first) // 2}.downsample.{merging[2]}"
    for theirs, ours in (("norm.", "swin.norm."), ("head.", "classifier.")):
        if key.startswith(theirs) and key.count(".") == 1:
            return ours + key[len(theirs) :]
    return None


def _window_3d(table_rows: int, tokens: int | None) -> tuple[int, int, int] | None:
    """(T, M, M) with (2T-1)(2M-1)^2 = table_rows (and T*M*M = tokens when the index buffer gives it), if unique."""
    found = []
    for M in range(1, 65):
        rest, remainder = divmod(table_rows, (2 * M - 1) ** 2)
        if remainder == 0 and rest % 2 == 1 and (tokens is None or (rest + 1) // 2 * M * M == tokens):
            found.append(((rest + 1) // 2, M, M))
    return found[0] if len(found) == 1 else None


def _infer_config(state_dict: dict[str, torch.Tensor], video: bool, window_size=None, **overrides):
    """The config of a torchvision state dict: widths, depths, heads, patch, window and classes from the tensors."""
    proj = state_dict["patch_embed.proj.weight" if video else "features.0.0.weight"]
    first = 0 if video else 1
    depths: dict[int, int] = {}
    for key in state_dict:
        block = re.fullmatch(r"features\.(\d+)\.(\d+)\..+", key)
        if block and (int(block[1]) - first) % 2 == 0:
            stage = (int(block[1]) - first) // 2
            depths[stage] = max(depths.get(stage, 0), int(block[2]) + 1)
    stages = sorted(depths)
    if not stages or stages != list(range(len(stages))):
        raise ConversionError(f"the torchvision state dict has blocks in stages {stages}; expected stages 0, 1, ... without gaps.")
    version = 2 if any(k.endswith("attn.logit_scale") for k in state_dict) else 1
    heads = []
    for s in stages:
        attn = f"features.{2 * s + first}.0.attn."
        heads.append(state_dict[attn + ("logit_scale" if version == 2 else "relative_position_bias_table")].shape[version == 1])
    attn0 = f"features.{first}.0.attn."
    index, table = state_dict.get(attn0 + "relative_position_index"), state_dict.get(attn0 + "relative_position_bias_table")
    values = dict(
        embed_dim=proj.shape[0], num_channels=proj.shape[1], patch_size=list(proj.shape[2:]), depths=[depths[s] for s in stages],
        num_heads=heads, qkv_bias=attn0 + "qkv.bias" in state_dict, layer_norm_eps=1e-5,
    )  # fmt: skip
    if "head.weight" in state_dict:
        values["num_labels"] = state_dict["head.weight"].shape[0]
    if video:
        window = window_size or _window_3d(table.shape[0], None if index is None else index.shape[0])
        if window is None:
            raise ConversionError(
                f"the window of this Video Swin state dict is not pinned by its bias table ({table.shape[0]} rows) without its "
                "relative_position_index buffer; give it, e.g. window_size=[8, 7, 7]."
            )
        values.update(window_size=list(window), image_size=224, num_frames=32)
        values.update(overrides)
        return VideoSwinConfig(**values)
    if window_size is None:
        coords = state_dict.get(attn0 + "relative_coords_table")
        if version == 1:
            window_size = (math.isqrt(table.shape[0]) + 1) // 2
        elif coords is not None:
            window_size = (coords.shape[1] + 1) // 2
        elif index is not None:
            window_size = math.isqrt(math.isqrt(index.numel()))
        else:
            raise ConversionError("the window of this Swin V2 state dict is not recorded (no relative_coords_table); give window_size.")
    values.update(window_size=int(window_size), patch_size=int(proj.shape[2]), image_size=256 if version == 2 else 224, version=version)
    if version == 2:
        values["pretrained_window_sizes"] = [0] * len(stages)  # torchvision normalises offsets by the window itself
    values.update(overrides)
    return SwinConfig(**values)


def from_torchvision(state_dict: dict[str, torch.Tensor], window_size=None, **overrides):
    """(config, state dict in swin_hf's names) of a torchvision Swin state dict: a SwinConfig for swin_t/s/b and
    swin_v2_t/s/b, a VideoSwinConfig for swin3d_t/s/b. `overrides`: config fields to set (e.g. id2label)."""
    kind = torchvision_kind(state_dict)
    if kind is None:
        raise ConversionError(
            "this is not a torchvision Swin state dict (no features.0.0.weight of swin_t/s/b or patch_embed.proj.weight of swin3d_t/s/b)."
        )
    video = kind == "video"
    config = _infer_config(state_dict, video, window_size, **overrides)
    out, unknown, names = {}, [], {}
    for key, value in state_dict.items():
        if key.endswith(DERIVED):
            continue
        ours = _rename(key, video)
        if ours is None:
            unknown.append(key)
        elif ours.endswith("attn.qkv.bias") and getattr(config, "version", 1) == 2:
            C = value.shape[0] // 3  # (q, k, v) biases: V2 learns q and v only
            out[ours[: -len("qkv.bias")] + "q_bias"], out[ours[: -len("qkv.bias")] + "v_bias"] = value[:C], value[2 * C :]
        else:
            out[ours] = value
        names[ours] = key
    if unknown:
        raise ConversionError(f"{len(unknown)} key(s) are not torchvision Swin weights: {', '.join(sorted(unknown)[:20])}.")
    _check_against_model(out, config, names)
    return config, out


def _model_class(config):
    from .modeling_swin import SwinForImageClassification
    from .modeling_video_swin import VideoSwinForVideoClassification

    return VideoSwinForVideoClassification if isinstance(config, VideoSwinConfig) else SwinForImageClassification


def _check_against_model(state_dict: dict[str, torch.Tensor], config, names: dict[str, str] | None = None) -> None:
    """Every parameter of the swin_hf model for `config` present with its shape, and nothing else; `names`: the
    source's name of each key (the message names unexpected and misshapen tensors as the source does)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in _model_class(config)(config).state_dict().items()}
    if "classifier.weight" not in state_dict:  # an encoder without its head: the body must be complete
        expected = {k: v for k, v in expected.items() if not k.startswith("classifier.")}
    missing = sorted(set(expected) - set(state_dict))
    names = names or {}
    extra = sorted(names.get(k, k) for k in set(state_dict) - set(expected))
    wrong = sorted(f"{names.get(k, k)} {tuple(state_dict[k].shape)} (expected {expected[k]})" for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != expected[k])
    if missing or extra or wrong:
        parts = [f"{name}: {', '.join(keys[:12])}" for name, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys]
        raise ConversionError("the torchvision state dict does not fill the swin_hf model: " + "; ".join(parts) + ".")


def to_torchvision(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A swin_hf state dict (SwinForImageClassification V1/V2 or VideoSwinForVideoClassification) in torchvision's
    names, with the derived buffers torchvision's `load_state_dict(strict=True)` expects."""
    video = isinstance(config, VideoSwinConfig)
    _check_against_model(state_dict, config)
    first = 0 if video else 1
    embed = {"proj.": "patch_embed.proj.", "norm.": "patch_embed.norm."} if video else {"proj.": "features.0.0.", "norm.": "features.0.2."}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("swin.embeddings."):
            rest = key[len("swin.embeddings.") :]
            prefix = next(theirs for ours, theirs in embed.items() if rest.startswith(ours))
            out[prefix + rest.split(".", 1)[1]] = value
        elif m := re.fullmatch(r"swin\.stages\.(\d+)\.blocks\.(\d+)\.(.+)", key):
            rest = m[3]
            for theirs, ours in _BLOCK.items():
                rest = theirs + rest[len(ours) :] if rest.startswith(ours) else rest
            base = f"features.{2 * int(m[1]) + first}.{m[2]}."
            if rest == "attn.q_bias":
                out[base + "attn.qkv.bias"] = torch.cat([value, torch.zeros_like(value), state_dict[key[: -len("q_bias")] + "v_bias"]])
            elif rest != "attn.v_bias":
                out[base + rest] = value
        elif m := re.fullmatch(r"swin\.stages\.(\d+)\.downsample\.(.+)", key):
            out[f"features.{2 * int(m[1]) + first + 1}.{m[2]}"] = value
        elif key.startswith("swin.norm."):
            out["norm." + key[len("swin.norm.") :]] = value
        elif key.startswith("classifier."):
            out["head." + key[len("classifier.") :]] = value
    _add_derived_buffers(out, config, video, first)
    return out


def _add_derived_buffers(out: dict[str, torch.Tensor], config, video: bool, first: int) -> None:
    """torchvision's relative_position_index (3D: (N, N); 2D: flattened) and V2's relative_coords_table per block."""
    cpu = torch.device("cpu")
    window = tuple(config.window_size) if video else config.window_size
    index = relative_position_index(window, window, cpu).clone()
    for key in [k for k in out if k.endswith("attn.qkv.weight")]:
        base = key[: -len("qkv.weight")]
        out[base + "relative_position_index"] = index if video else index.flatten()
        if not video and config.version == 2:
            out[base + "relative_coords_table"] = log_spaced_offsets(window, window, cpu).clone().unsqueeze(0)


__all__ = ["DERIVED", "from_torchvision", "to_torchvision", "torchvision_kind"]
