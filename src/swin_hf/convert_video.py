"""The official Video Swin checkpoints (the mmaction2-based release: `SwinTransformer3D` under `backbone.`, the
I3D head's `cls_head.fc_cls`) <-> VideoSwinForVideoClassification, strict both ways.

The official layout, from its module names: `backbone.patch_embed.proj` (Conv3d) and `backbone.patch_embed.norm`
(with patch_norm), stage s's blocks `backbone.layers.{s}.blocks.{b}` (norm1, attn.qkv, attn.proj,
attn.relative_position_bias_table, the attn.relative_position_index buffer, norm2, mlp.fc1, mlp.fc2), its patch
merging `backbone.layers.{s}.downsample` (reduction, norm) at the end of every stage but the last, `backbone.norm`,
and `cls_head.fc_cls` (absent from backbone-only files). It is torchvision's swin3d layout under other names (same
tensors, same bias-table order, same merging order), so the conversion renames to torchvision's names and reuses
`convert_torchvision` (config inferred from the weights, the window from the index buffer).
"""

from __future__ import annotations

import re

import torch

from .convert import ConversionError
from .convert_torchvision import from_torchvision, to_torchvision

_BLOCK = {"mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.3."}  # official -> torchvision; every other block key keeps its name


def mmaction_kind(keys) -> bool:
    """Whether a set of state-dict keys is an official (mmaction) Video Swin checkpoint."""
    return "backbone.patch_embed.proj.weight" in set(keys)


def _to_torchvision_name(key: str) -> str | None:
    """torchvision's name of an official key (None: not a key of the official Video Swin)."""
    if key.startswith(("backbone.patch_embed.", "backbone.norm.")):
        return key[len("backbone.") :] if key.count(".") == (3 if "patch_embed" in key else 2) else None
    if key.startswith("cls_head.fc_cls.") and key.count(".") == 2:
        return "head." + key[len("cls_head.fc_cls.") :]
    if block := re.fullmatch(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.(.+)", key):
        rest = block[3]
        for ours, theirs in _BLOCK.items():
            rest = theirs + rest[len(ours) :] if rest.startswith(ours) else rest
        return f"features.{2 * int(block[1])}.{block[2]}.{rest}"
    if merging := re.fullmatch(r"backbone\.layers\.(\d+)\.downsample\.((?:reduction|norm)\.\w+)", key):
        return f"features.{2 * int(merging[1]) + 1}.{merging[2]}"
    return None


def _from_torchvision_name(key: str) -> str:
    """The official name of a torchvision swin3d key (the inverse of `_to_torchvision_name`)."""
    if key.startswith(("patch_embed.", "norm.")):
        return "backbone." + key
    if key.startswith("head."):
        return "cls_head.fc_cls." + key[len("head.") :]
    index, rest = re.fullmatch(r"features\.(\d+)\.(.+)", key).groups()
    if int(index) % 2:  # patch merging after stage index // 2
        return f"backbone.layers.{int(index) // 2}.downsample.{rest}"
    block, rest = rest.split(".", 1)
    for ours, theirs in _BLOCK.items():
        rest = ours + rest[len(theirs) :] if rest.startswith(theirs) else rest
    return f"backbone.layers.{int(index) // 2}.blocks.{block}.{rest}"


def from_mmaction(state_dict: dict[str, torch.Tensor], window_size=None, **overrides):
    """(VideoSwinConfig, state dict in swin_hf's names) of an official Video Swin checkpoint's state dict. Every key
    must be the official model's (anything else, e.g. an auxiliary head, is a ConversionError naming it); the
    config (widths, depths, heads, patch, window, classes, patch_norm) comes from the tensors. `window_size` is
    needed only when the relative_position_index buffers are missing and the bias table does not pin the window."""
    if not mmaction_kind(state_dict):
        raise ConversionError("this is not an official Video Swin checkpoint (no backbone.patch_embed.proj.weight).")
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        theirs = _to_torchvision_name(key)
        if theirs is None:
            unknown.append(key)
        else:
            renamed[theirs] = value
    if unknown:
        raise ConversionError(f"{len(unknown)} key(s) are not official Video Swin weights: {', '.join(sorted(unknown)[:20])}.")
    if "patch_embed.norm.weight" not in renamed:
        overrides.setdefault("patch_norm", False)  # (patch_norm=False in the config: no LayerNorm after the Conv3d)
    try:
        return from_torchvision(renamed, window_size=window_size, **overrides)
    except ConversionError as error:
        official = {theirs: key for key, theirs in ((k, _to_torchvision_name(k)) for k in state_dict)}
        message = re.sub(r"(?:patch_embed|norm|head|features)\.[\w.]+", lambda m: official.get(m[0], m[0]), str(error))
        raise ConversionError(message.replace("torchvision state dict", "official Video Swin checkpoint")) from error


def to_mmaction(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A VideoSwinForVideoClassification state dict in the official names, with the relative_position_index buffers
    the official model's `load_state_dict(strict=True)` expects."""
    return {_from_torchvision_name(key): value for key, value in to_torchvision(state_dict, config).items()}


__all__ = ["from_mmaction", "mmaction_kind", "to_mmaction"]
