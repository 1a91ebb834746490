"""Weights from other Swin implementations <-> swin_hf, as pure, strict state-dict conversions.

Sources: the official Microsoft release ("official", `swin_tiny_patch4_window7_224.pth`,
`swinv2_tiny_patch4_window8_256.pth` ...), timm ("timm", `model.safetensors` of
`swin_tiny_patch4_window7_224.ms_in1k`, `swinv2_tiny_window8_256.ms_in1k` ...) and transformers' own Swin
and Swinv2 ("transformers"). swin_hf's own names (prefix `swin.` on the task models, as in transformers):
    embeddings.proj / embeddings.norm / embeddings.absolute_pos_embed
    stages.{s}.blocks.{b}.norm1 | attn.qkv | attn.proj | attn.relative_position_bias_table | norm2 | mlp.fc1 | mlp.fc2
        Swin V2 instead of the table: attn.q_bias | attn.v_bias | attn.logit_scale | attn.cpb_mlp.{0,2}
    stages.{s}.downsample.norm | downsample.reduction
    norm, classifier (image classification head), hidden_states_norms.{stage} (backbone)

Strict means: every source key is either renamed or deliberately dropped (derived buffers such as
`relative_position_index`, `attn_mask` and V2's `relative_coords_table`), every key the model needs is
produced with the shape the (given or inferred) config implies, and anything else raises a
ConversionError listing the keys. `convert_state_dict(sd, to="official"|"timm")` goes the other way;
official/timm -> swin_hf -> back is the identity (up to the derived buffers, which are recomputed exactly).

Swin V2's weights hold no window size (its position bias is an MLP over coordinates, for any window). The
official checkpoints' `relative_coords_table` buffers record each stage's window and the pre-training window
its offsets are normalised by, and are read for the config; for other V2 state dicts the window must be
given (`infer_config(sd, window_size=...)`, `config=`, or `swin-hf convert --preset/--config`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re

import torch

from .configuration_swin import SwinConfig, to_pair
from .modeling_swin import SwinModel, log_spaced_offsets, relative_position_index, shifted_window_mask, window_geometry
from .resize import adapt_state_dict

logger = logging.getLogger(__name__)

# (pattern on the source key, replacement) - the first match wins; a replacement of None drops the key.
# `{P}` in a pattern matches an optional model prefix ("swin." on task models) that is kept as is.
_TRANSFORMERS_RULES: list[tuple[str, str | None]] = [
    (r"embeddings\.patch_embeddings\.projection\.", "embeddings.proj."),
    (r"embeddings\.norm\.", "embeddings.norm."),
    (r"embeddings\.position_embeddings$", "embeddings.absolute_pos_embed"),
    (r"embeddings\.mask_token$", "embeddings.mask_token"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before\.", r"stages.\1.blocks.\2.norm1."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after\.", r"stages.\1.blocks.\2.norm2."),
    # attention: transformers >= 5.x names, then the older names most Hub checkpoints carry
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(q|k|v)_proj\.", r"stages.\1.blocks.\2.attn.\3."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.(query|key|value)\.", r"stages.\1.blocks.\2.attn.\3."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.", r"stages.\1.blocks.\2.attn.proj."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.output\.dense\.", r"stages.\1.blocks.\2.attn.proj."),
    (
        r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:relative_position_bias|self)\.relative_position_bias_table$",
        r"stages.\1.blocks.\2.attn.relative_position_bias_table",
    ),
    (r"encoder\.layers\.\d+\.blocks\.\d+\.attention\.(?:relative_position_bias|self)\.relative_position_index$", None),
    # Swin V2 (transformers' Swinv2): temperature, continuous position bias MLP; its coordinates are derived
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.logit_scale$", r"stages.\1.blocks.\2.attn.logit_scale"),
    (
        r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.continuous_position_bias_mlp\.(\d)\.",
        r"stages.\1.blocks.\2.attn.cpb_mlp.\3.",
    ),
    (r"encoder\.layers\.\d+\.blocks\.\d+\.attention\.self\.relative_coords_table$", None),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r"stages.\1.blocks.\2.mlp.\3."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.intermediate\.dense\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.output\.dense\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\.", r"stages.\1.downsample.\2."),
    (r"layernorm\.", "norm."),
]
# keys outside the encoder, matched without the prefix handling
_TRANSFORMERS_HEAD_RULES: list[tuple[str, str | None]] = [
    (r"^classifier\.", "classifier."),
    (r"^hidden_states_norms\.", "hidden_states_norms."),
]

SOURCES = ("official", "timm", "transformers")
TRANSFORMERS_MODEL_TYPES = ("swin", "swinv2")  # transformers' Swin and Swin V2
EXPORT_FORMATS = ("official", "timm")

# q, k and v projections (separate in transformers) become one fused `qkv` linear, in that order.
_QKV_PARTS = {"q": 0, "query": 0, "k": 1, "key": 1, "v": 2, "value": 2}


class ConversionError(ValueError):
    """A state dict that does not convert: unknown keys, missing parts or wrong shapes."""


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    source: str | None = None,
    *,
    to: str | None = None,
    config=None,
) -> dict[str, torch.Tensor]:
    """Convert a state dict between naming schemes; the input is never modified.

    - ``convert_state_dict(sd, source="official"|"timm"|"transformers")``: a state dict in swin_hf's names
      (``swin.``-prefixed body, ``classifier`` head). `source` defaults to "transformers".
    - ``convert_state_dict(sd, to="official"|"timm")``: a swin_hf state dict exported to that layout.

    `config` (a SwinConfig) pins the expected architecture; by default it is inferred from the shapes.
    Raises ConversionError naming every key that is unknown, missing or of the wrong shape.
    """
    if to is not None:
        if source not in (None, "swin_hf"):
            raise ValueError(f"Exporting converts from swin_hf's names; got source={source!r} with to={to!r}.")
        if to not in EXPORT_FORMATS:
            raise ValueError(f"Unknown export format to={to!r}; expected one of {EXPORT_FORMATS}.")
        return _export(state_dict, to, config)
    source = "transformers" if source is None else source
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")
    if source == "transformers":
        out = _from_transformers(state_dict)
    else:
        out = _from_layout(state_dict, source)
    if config is None:
        config = _checking_config(out, _inference_hints(state_dict, source))
    check_state_dict(out, config, source=source)
    return out


# --------------------------------------------------------------------------------------------------
# transformers -> swin_hf
# --------------------------------------------------------------------------------------------------


def _from_transformers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[int, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state_dict.items():
        new = _rename(key, _TRANSFORMERS_HEAD_RULES, _TRANSFORMERS_RULES)
        if new is False:
            unknown.append(key)
            continue
        if new is None:  # derived buffer: recomputed by swin_hf, never loaded
            continue
        match = re.match(r"(.*\.attn\.)(q|k|v|query|key|value)\.(weight|bias)$", new)
        if match:
            fused = f"{match.group(1)}qkv.{match.group(3)}"
            qkv_parts.setdefault(fused, {})[_QKV_PARTS[match.group(2)]] = tensor
            continue
        out[new] = tensor
    if unknown:
        raise _unknown_keys_error(unknown, "transformers", state_dict)
    for fused, parts in qkv_parts.items():
        if fused.endswith("bias") and sorted(parts) == [0, 2]:  # Swin V2: q and v biases, none for k
            out[fused.replace("qkv.bias", "q_bias")], out[fused.replace("qkv.bias", "v_bias")] = parts[0], parts[2]
            continue
        if sorted(parts) != [0, 1, 2]:
            raise ConversionError(f"{fused}: found only parts {sorted(parts)} of q, k, v.")
        out[fused] = torch.cat([parts[0], parts[1], parts[2]], dim=0)  # (3C, C) or (3C,)
    return out


def _rename(key: str, head_rules, body_rules) -> str | None | bool:
    """The converted key, None to drop it, False if no rule applies."""
    for pattern, replacement in head_rules:
        if re.match(pattern, key):
            return None if replacement is None else re.sub(pattern, replacement, key, count=1)
    prefix, body = "", key
    for task_prefix in ("swin.", "swinv2."):  # transformers' Swin and Swinv2 task models
        if key.startswith(task_prefix):
            prefix, body = "swin.", key[len(task_prefix) :]
    for pattern, replacement in body_rules:
        if re.match(pattern, body):
            return None if replacement is None else prefix + re.sub(pattern, replacement, body, count=1)
    return False


# --------------------------------------------------------------------------------------------------
# official / timm <-> swin_hf: one table, read in both directions
# --------------------------------------------------------------------------------------------------

# (swin_hf key, official key, timm key). Fields: {s} stage, {b} block, {p} weight|bias, {m} a module of a
# block, {a} a parameter of the attention itself (V1's bias table; V2's biases and temperature), {d} a module
# of patch merging, {t} = s + 1: timm puts the patch merging that ENDS official stage s at the START of its
# stage s + 1, in V1 and V2 alike. The official head is `head`, timm's `head.fc`. Swin V2 keeps every name.
_LAYOUT: list[tuple[str, str, str]] = [
    ("swin.embeddings.proj.{p}", "patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    ("swin.embeddings.norm.{p}", "patch_embed.norm.{p}", "patch_embed.norm.{p}"),
    ("swin.embeddings.absolute_pos_embed", "absolute_pos_embed", "absolute_pos_embed"),
    ("swin.stages.{s}.blocks.{b}.{m}.{p}", "layers.{s}.blocks.{b}.{m}.{p}", "layers.{s}.blocks.{b}.{m}.{p}"),
    ("swin.stages.{s}.blocks.{b}.attn.{a}", "layers.{s}.blocks.{b}.attn.{a}", "layers.{s}.blocks.{b}.attn.{a}"),
    ("swin.stages.{s}.downsample.{d}.{p}", "layers.{s}.downsample.{d}.{p}", "layers.{t}.downsample.{d}.{p}"),
    ("swin.norm.{p}", "norm.{p}", "norm.{p}"),
    ("classifier.{p}", "head.{p}", "head.fc.{p}"),
]
_COLUMN = {"swin_hf": 0, "official": 1, "timm": 2}
_FIELDS = {
    "s": r"\d+",
    "b": r"\d+",
    "t": r"\d+",
    "p": r"weight|bias",
    "m": r"norm1|norm2|attn\.qkv|attn\.proj|attn\.cpb_mlp\.[02]|mlp\.fc1|mlp\.fc2",
    "a": r"relative_position_bias_table|q_bias|v_bias|logit_scale",
    "d": r"norm|reduction",
}
# Buffers that official (and older timm) checkpoints carry. They are functions of the window and the
# feature-map size (V2's coordinates also of the pre-training window), recomputed by swin_hf, so they are
# dropped on the way in (after the config is read from them) and rebuilt on the way out.
_DERIVED_BUFFERS = [
    r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_index",
    r"layers\.\d+\.blocks\.\d+\.attn\.relative_coords_table",
    r"layers\.\d+\.blocks\.\d+\.attn_mask",
]


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)  # literal, field, literal, field, ...
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for i, p in enumerate(parts))
    return re.compile(regex)


_LAYOUT_REGEX = [tuple(_template_regex(t) for t in row) for row in _LAYOUT]


def _translate(key: str, source: str, target: str) -> str | None:
    """`key` in the `source` layout renamed to the `target` layout; None if no row of the table matches."""
    src, dst = _COLUMN[source], _COLUMN[target]
    for row, regexes in zip(_LAYOUT, _LAYOUT_REGEX):
        match = regexes[src].fullmatch(key)
        if match is None:
            continue
        fields = match.groupdict()
        if "t" in fields:
            fields["s"] = int(fields.pop("t")) - 1
            if fields["s"] < 0:
                return None  # timm's stage 0 has no patch merging
        if "s" in fields:
            fields["t"] = int(fields["s"]) + 1
        return row[dst].format(**fields)
    return None


def _from_layout(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state_dict.items():
        if any(re.fullmatch(p, key) for p in _DERIVED_BUFFERS):
            continue
        new = _translate(key, source, "swin_hf")
        if new is None:
            unknown.append(key)
            continue
        # timm versions with an absolute position embedding store (1, L, C) like the official code; accept a
        # channels-last grid (1, H, W, C) as well
        if new.endswith("absolute_pos_embed") and tensor.ndim == 4:  # (1, H, W, C) -> (1, H*W, C)
            tensor = tensor.reshape(1, -1, tensor.shape[-1])
        out[new] = tensor
    if unknown:
        raise _unknown_keys_error(unknown, source, state_dict)
    return out


def _inference_hints(state_dict: dict[str, torch.Tensor], source: str) -> dict:
    """Config values that the derived buffers of an official checkpoint reveal: the image size, from the
    number of windows of the first stage's SW-MSA mask (nW, N, N); for Swin V2 the window and the
    pre-training windows, from the relative_coords_table buffers (`_v2_window_hints`)."""
    if source == "transformers":
        return {}
    hints = _v2_window_hints(state_dict)
    for key, tensor in state_dict.items():
        if re.fullmatch(r"layers\.0\.blocks\.\d+\.attn_mask", key) and tensor.ndim == 3:
            windows_per_side = math.isqrt(tensor.shape[0])
            window = math.isqrt(tensor.shape[1])
            patch = state_dict["patch_embed.proj.weight"].shape[-1] if "patch_embed.proj.weight" in state_dict else 4
            if windows_per_side**2 == tensor.shape[0] and window**2 == tensor.shape[1]:
                hints["image_size"] = windows_per_side * window * patch
                break
    return hints


def _v2_window_hints(state_dict: dict[str, torch.Tensor]) -> dict:
    """window_size and pretrained_window_sizes from the official V2 relative_coords_table buffers.

    Stage s's table, (1, 2w-1, 2w-1, 2), holds the log-spaced offsets of its window w (the config's window,
    or the map's side where the map is not larger); at offset dy = +1 it holds log2(1 + 8 / (n - 1)) / 3,
    n being the window the offsets are normalised by: the pre-training window, or w itself (0 in the config).
    """
    windows, normalisers = {}, {}
    for key, table in state_dict.items():
        match = re.fullmatch(r"layers\.(\d+)\.blocks\.0\.attn\.relative_coords_table", key)
        if match is None or table.ndim != 4 or table.shape[1] % 2 == 0:
            continue
        stage, window = int(match.group(1)), (table.shape[1] + 1) // 2
        windows[stage] = normalisers[stage] = window
        value = float(table[0, window, window - 1, 0]) if window > 1 else 0.0  # offset (dy, dx) = (+1, 0)
        if 0.0 < value < math.inf:  # (a window of 1 has no offset to read: its own window serves)
            normalisers[stage] = round(1 + 8 / (2 ** (3 * value) - 1))
    if sorted(windows) != list(range(len(windows))) or not windows:
        return {}
    pretrained = [0 if normalisers[s] == windows[s] else normalisers[s] for s in sorted(windows)]
    return {"window_size": windows[0], "pretrained_window_sizes": pretrained}


def _export(state_dict: dict[str, torch.Tensor], to: str, config) -> dict[str, torch.Tensor]:

    # accept the base model's names (no `swin.` prefix) as well as the task models'
    ours = {(k if k.startswith(("swin.", "classifier.")) else "swin." + k): v for k, v in state_dict.items()}
    extra = sorted(k for k in ours if k.startswith("swin.hidden_states_norms.") or k.startswith("hidden_states_norms."))
    if extra:
        raise ConversionError(
            f"{', '.join(extra)}: the backbone's per-stage norms have no {to} counterpart. "
            "Export a SwinModel or SwinForImageClassification state dict."
        )
    if config is None:
        if to == "official" and _version(_body(ours)) == 2:
            raise ConversionError(
                "Exporting Swin V2 weights to the official layout rebuilds its relative_coords_table and attn_mask "
                "buffers, which depend on the window sizes and the image size that the weights do not record: pass "
                "config= (the model's config, e.g. model.config)."
            )
        config = _checking_config(ours, {})
        logger.info(
            "Exporting with the config inferred from the shapes (image_size=%s); pass config= for another "
            "image size (it sizes the official attn_mask buffers).", config.image_size,
        )
    check_state_dict(ours, config, source="swin_hf")
    out = {}
    for key, tensor in ours.items():
        new = _translate(key, "swin_hf", to)
        if new is None:  # check_state_dict accepted it, so the table must know it
            raise ConversionError(f"{key}: no {to} name for this swin_hf key.")
        out[new] = tensor
    if to == "official":
        # the official model registers these buffers persistently; rebuild them as its __init__ does
        height, width = _grid(config)
        cpu = torch.device("cpu")
        for s, depth in enumerate(config.depths):
            window, shift = window_geometry(height, width, config.window_size, always_partition=False)
            if window != config.window_size and config.version == 1:
                raise ConversionError(
                    f"Stage {s + 1} is {height}x{width} tokens, smaller than the {config.window_size}-token window: the "
                    "official layout would need a smaller relative position table there. Export at an image size where "
                    f"every stage is at least one window (e.g. {config.window_size * 2 ** (len(config.depths) - 1)} "
                    "tokens per side at the first stage)."
                )
            index = relative_position_index(window, window, cpu).clone()  # (N, N)
            if config.version == 2:  # (1, 2w-1, 2w-1, 2), normalised by the pre-training window if there is one
                pretrained = (config.pretrained_window_sizes or [0] * len(config.depths))[s]
                coords = log_spaced_offsets(window, pretrained or window, cpu).unsqueeze(0)
            for b in range(depth):
                out[f"layers.{s}.blocks.{b}.attn.relative_position_index"] = index.clone()
                if config.version == 2:
                    out[f"layers.{s}.blocks.{b}.attn.relative_coords_table"] = coords.clone()
                if b % 2 == 1 and shift:
                    pad_h, pad_w = height + (-height) % window, width + (-width) % window
                    mask = shifted_window_mask(pad_h, pad_w, window, shift, torch.device("cpu"))  # (nW, N, N)
                    out[f"layers.{s}.blocks.{b}.attn_mask"] = mask.clone() + 0.0  # + 0.0: no negative zeros
            height, width = (height + 1) // 2, (width + 1) // 2
    return out


def _grid(config) -> tuple[int, int]:
    """Patch grid of the first stage, (H/patch, W/patch) rounded up."""
    size, patch = to_pair(config.image_size), to_pair(config.patch_size)
    return (-(-size[0] // patch[0]), -(-size[1] // patch[1]))




# --------------------------------------------------------------------------------------------------
# Architecture from tensor shapes, and the check that a state dict fits a config
# --------------------------------------------------------------------------------------------------


def _body(state_dict) -> dict[str, torch.Tensor]:
    """The SwinModel part of a swin_hf state dict, without the `swin.` prefix."""
    return {
        (k[5:] if k.startswith("swin.") else k): v
        for k, v in state_dict.items()
        if not k.startswith(("classifier.", "hidden_states_norms."))
    }


def infer_config(state_dict: dict[str, torch.Tensor], **overrides):
    """The SwinConfig that a swin_hf-named state dict was trained with, read from tensor shapes.

    embed_dim, patch size and channels come from the patch embedding; depths from the block indices;
    heads and the window M from the relative position tables ((2M-1)^2, heads); mlp_ratio from fc1;
    Swin V2 (`logit_scale` present): heads from its temperatures (heads, 1, 1); its weights hold no window
    size, so `window_size` (and `pretrained_window_sizes` for weights fine-tuned from another window) must
    be in `overrides` (`convert_state_dict` reads them from official checkpoints' buffers), else a
    ConversionError says how to give it; num_labels from the classifier (0 without one). The image size
    is read from an absolute position embedding when there is one; otherwise it is taken as the size at
    which the last stage is one window (M * patch * 2**(stages-1): 224 for M=7, 384 for M=12, the paper's
    pairs) unless given in `overrides`.
    """

    body = _body(state_dict)
    proj = body.get("embeddings.proj.weight")
    if proj is None or proj.ndim != 4:
        raise ConversionError(
            "No patch embedding (embeddings.proj.weight, a (C, channels, p, p) conv weight) found: this is not a "
            f"Swin state dict. First keys: {', '.join(list(state_dict)[:8])}."
        )
    embed_dim, num_channels, patch_h, patch_w = proj.shape
    stage_ids = sorted({int(m.group(1)) for k in body if (m := re.match(r"stages\.(\d+)\.", k))})
    if not stage_ids or stage_ids != list(range(len(stage_ids))):
        raise ConversionError(f"Stages {stage_ids} found; expected stages 0..n-1 (the weights are incomplete).")
    depths, num_heads = [], []
    for s in stage_ids:
        blocks = sorted({int(m.group(1)) for k in body if (m := re.match(rf"stages\.{s}\.blocks\.(\d+)\.", k))})
        if not blocks or blocks != list(range(len(blocks))):
            raise ConversionError(f"Stage {s} has blocks {blocks}; expected blocks 0..n-1 (the weights are incomplete).")
        depths.append(len(blocks))
        heads = body.get(f"stages.{s}.blocks.0.attn.logit_scale")  # Swin V2: (heads, 1, 1)
        heads = heads if heads is not None else body.get(f"stages.{s}.blocks.0.attn.relative_position_bias_table")
        if heads is None or heads.ndim not in (2, 3):
            raise ConversionError(f"stages.{s}.blocks.0.attn.relative_position_bias_table is missing or not 2-D.")
        num_heads.append(int(heads.shape[0] if heads.ndim == 3 else heads.shape[1]))
    version = _version(body)
    if version == 2:  # the continuous position bias holds no window size
        if "window_size" not in overrides:
            raise ConversionError(
                "These Swin V2 weights do not record their window size (only the official checkpoints' "
                "relative_coords_table buffers do, and they are absent): give it. swin-hf convert: --preset NAME "
                "(e.g. swinv2-tiny-patch4-window8-256) or --config config.json; in Python: "
                "infer_config(state_dict, window_size=M, pretrained_window_sizes=[...]) or "
                "convert_state_dict(..., config=SwinConfig.from_preset(NAME))."
            )
        window = overrides["window_size"]
    else:
        table = body["stages.0.blocks.0.attn.relative_position_bias_table"]
        side = math.isqrt(table.shape[0])
        if side * side != table.shape[0] or side % 2 == 0:
            raise ConversionError(
                f"relative_position_bias_table has {table.shape[0]} rows; expected (2M-1)^2 for a window size M."
            )
        window = (side + 1) // 2
    fc1 = body.get("stages.0.blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / embed_dim if fc1 is not None else 4.0
    values = dict(
        embed_dim=int(embed_dim),
        num_channels=int(num_channels),
        patch_size=int(patch_h) if patch_h == patch_w else [int(patch_h), int(patch_w)],
        depths=depths,
        num_heads=num_heads,
        window_size=int(window),
        mlp_ratio=float(mlp_ratio),
        qkv_bias="stages.0.blocks.0.attn.qkv.bias" in body or "stages.0.blocks.0.attn.q_bias" in body,
        version=version,
        use_absolute_embeddings="embeddings.absolute_pos_embed" in body,
        image_size=int(window * patch_h * 2 ** (len(depths) - 1)),
    )
    if values["use_absolute_embeddings"]:
        tokens = body["embeddings.absolute_pos_embed"].shape[1]
        grid = math.isqrt(tokens)
        if grid * grid == tokens:
            values["image_size"] = int(grid * patch_h)
    head = state_dict.get("classifier.weight")
    values["num_labels"] = int(head.shape[0]) if head is not None else 0
    values.update(overrides)
    try:
        return SwinConfig(**values)
    except ValueError as error:
        raise ConversionError(f"The tensor shapes describe no valid Swin config: {error}") from error


def _version(body: dict[str, torch.Tensor]) -> int:
    """2 for Swin V2 weights (a temperature per head, `logit_scale`), else 1."""
    return 2 if any(k.endswith("attn.logit_scale") for k in body) else 1


def _checking_config(state_dict: dict[str, torch.Tensor], hints: dict):
    """The config that checks a swin_hf state dict's names and shapes: inferred from the shapes and `hints`.
    The shapes of V2 weights do not depend on the window, so where no hint gives one any window checks them."""
    if _version(_body(state_dict)) == 2 and "window_size" not in hints:
        hints = dict(hints, window_size=1)
    return infer_config(state_dict, **hints)


def expected_shapes(config, with_head: bool | None = None) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the persistent tensors of SwinForImageClassification(config) (SwinModel's keys
    with the `swin.` prefix, plus `classifier.*` when config.num_labels > 0 and `with_head` is not False).
    Built on the meta device: nothing is allocated."""

    with torch.device("meta"):
        model = SwinModel(config)
    shapes = {f"swin.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    if (config.num_labels > 0) if with_head is None else with_head:
        shapes["classifier.weight"] = (config.num_labels, config.hidden_size)
        shapes["classifier.bias"] = (config.num_labels,)
    return shapes


def check_state_dict(state_dict: dict[str, torch.Tensor], config, source: str = "swin_hf") -> None:
    """Raise ConversionError unless `state_dict` (swin_hf names) holds exactly the tensors `config` needs.

    The classifier is optional (a headless checkpoint); transformers checkpoints may also be a base model
    (no `swin.` prefix), a backbone (`hidden_states_norms.*`, no final norm) or carry a `mask_token`.
    """
    expected = {k[5:]: v for k, v in expected_shapes(config, with_head=False).items()}
    body = _body(state_dict)
    lenient = source == "transformers"
    allowed_extra = {"embeddings.mask_token"} if lenient else set()
    missing = sorted(set(expected) - set(body))
    if lenient and not any(k.startswith("classifier.") for k in state_dict):
        missing = [k for k in missing if not k.startswith("norm.")]  # transformers' Swinv2Backbone has no final norm
    unexpected = sorted(set(body) - set(expected) - allowed_extra)
    if not lenient:
        unexpected += sorted(k for k in state_dict if k.startswith("hidden_states_norms."))
    wrong = [
        f"{k}: {tuple(body[k].shape)} (expected {expected[k]})"
        for k in sorted(set(body) & set(expected))
        if tuple(body[k].shape) != expected[k]
    ]
    head = {k: v for k, v in state_dict.items() if k.startswith("classifier.")}
    if head:
        weight, bias = head.get("classifier.weight"), head.get("classifier.bias")
        if weight is None or weight.ndim != 2 or weight.shape[1] != config.hidden_size:
            wrong.append(f"classifier.weight: {None if weight is None else tuple(weight.shape)} (expected (labels, {config.hidden_size}))")
        elif bias is None or tuple(bias.shape) != (weight.shape[0],):
            wrong.append(f"classifier.bias: {None if bias is None else tuple(bias.shape)} (expected ({weight.shape[0]},))")
        unexpected += sorted(set(head) - {"classifier.weight", "classifier.bias"})
    if source in _COLUMN and source != "swin_hf":  # name the tensors as the user's checkpoint does

        def named(key: str) -> str:
            name, _, rest = key.partition(":")
            return (_translate("swin." + name, "swin_hf", source) or name) + (":" + rest if rest else "")

        missing, unexpected, wrong = ([named(k) for k in keys] for keys in (missing, unexpected, wrong))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_some(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_some(wrong)}")
    if problems:
        raise ConversionError(
            f"The {source} state dict does not fit {_describe(config)}: " + "; ".join(problems) + "."
        )


def _describe(config) -> str:
    shapes = f"embed_dim={config.embed_dim}, depths={list(config.depths)}, num_heads={list(config.num_heads)}"
    if config.version == 2:  # the window does not change a V2 weight's shape
        return f"Swin V2({shapes})"
    return f"Swin({shapes}, window_size={config.window_size}, image_size={config.image_size})"


def _some(items: list[str], limit: int = 12) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def guess_source(keys) -> str | None:
    """The layout a set of state-dict keys looks like: "official", "timm", "transformers", "swin_hf" or None.
    Swin V1 and V2 alike (`guess_version` tells them apart)."""
    keys = set(keys)
    if any(".attn.meta_mlp." in k for k in keys):  # timm's swin_transformer_v2_cr, another V2 design
        return None
    if any(k.startswith(("swin.stages.", "stages.")) for k in keys):
        return "swin_hf"
    if any(".encoder.layers." in k or k.startswith("encoder.layers.") for k in keys):
        return "transformers"
    if not any(k.startswith("layers.") for k in keys):
        return None
    merging_moved = any(re.match(r"layers\.[1-9]\d*\.downsample\.", k) for k in keys) and not any(
        k.startswith("layers.0.downsample.") for k in keys
    )  # timm: patch merging at the start of stages 1.., none in stage 0
    if any(k.startswith("head.fc.") for k in keys) or merging_moved:
        return "timm"
    return "official"


def guess_version(keys) -> int:
    """2 if the keys are those of a Swin V2 (a temperature per head and a position-bias MLP), else 1."""
    v2_names = (".cpb_mlp.", ".continuous_position_bias_mlp.")  # official / timm / ours, transformers
    return 2 if any(k.endswith("logit_scale") or any(n in k for n in v2_names) for k in keys) else 1


def _unknown_keys_error(unknown: list[str], source: str, state_dict) -> ConversionError:
    guess = guess_source(state_dict)
    what = f"Swin {'V2' if guess_version(state_dict) == 2 else 'V1'}"
    if any(".attn.meta_mlp." in k for k in state_dict):
        hint = ("It looks like timm's swin_transformer_v2_cr (its own Swin V2 design: `meta_mlp` position bias, "
                "post-norm stages), which swin_hf does not convert; the official and timm `swinv2_*` models convert.")
    elif guess is None:
        hint = "It does not look like a Swin Transformer (V1 or V2) checkpoint."
    elif guess == "swin_hf":
        hint = "These are swin_hf's own names: load them with load_state_dict or from_pretrained; nothing to convert."
    elif guess != source:
        hint = f"The keys look like the {guess!r} layout of a {what}: convert with source={guess!r} (`--from {guess}`)."
    else:
        hint = f"The keys look like the {source!r} layout of a {what}; is it a plain {what} classifier or encoder?"
    return ConversionError(
        f"{len(unknown)} key(s) of the {source} state dict are not Swin weights: {_some(sorted(unknown), 20)}. {hint}"
    )

# --------------------------------------------------------------------------------------------------
# transformers' config.json (model_type "swin") -> SwinConfig
# --------------------------------------------------------------------------------------------------

_DROPPED_CONFIG_KEYS = {
    "model_type", "transformers_version", "architectures", "auto_map", "num_layers", "hidden_size", "stage_names",
}


def config_from_transformers(config_dict: dict, config_class, **overrides):
    """A swin_hf config from the dict of a transformers `SwinConfig` or `Swinv2Config` (same field names)."""
    values = {k: v for k, v in config_dict.items() if k not in _DROPPED_CONFIG_KEYS and not k.startswith("_")}
    if config_dict.get("model_type") == "swinv2":
        values["version"] = 2
    # transformers reads these lists one entry per stage and ignores entries past the last stage (Swinv2Config
    # keeps its 4-entry default pretrained_window_sizes when given fewer depths): loading its folders does too
    depths = values.get("depths")
    stages = len(depths) if isinstance(depths, (list, tuple)) else 0  # (a malformed depths is SwinConfig's to refuse)
    for field in ("num_heads", "pretrained_window_sizes"):
        value = values.get(field)
        if stages and isinstance(value, (list, tuple)) and len(value) > stages:
            logger.info("%s: %d entries for %d stages, as transformers saved it; using the first %d.", field, len(value),
                        stages, stages)
            values[field] = list(value[:stages])
    for private in ("_out_features", "_out_indices"):
        if config_dict.get(private) is not None:
            values[private[1:]] = config_dict[private]
    # an override of one of a linked pair replaces the saved pair
    for given, linked in (("out_features", "out_indices"), ("out_indices", "out_features"), ("num_labels", "id2label")):
        if given in overrides and linked not in overrides:
            values.pop(linked, None)
            if linked == "id2label":
                values.pop("label2id", None)
    values.update(overrides)
    return config_class(**values)


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
# from_pretrained kwargs that look like config fields but are about loading
_LOAD_ONLY_KWARGS = {"dtype", "torch_dtype", "transformers_version", "architectures", "_name_or_path"}


def _config_overrides(model_class, kwargs: dict, pop: bool) -> dict:
    fields = set(model_class.config_class().to_dict()) | {"num_labels", "id2label", "label2id"}
    keys = [k for k in list(kwargs) if k in fields and k not in _LOAD_ONLY_KWARGS]
    return {k: (kwargs.pop(k) if pop else kwargs[k]) for k in keys}


def prepare_pretrained(model_class, path, kwargs: dict):
    """(config, state_dict) for `model_class.from_pretrained(path, **kwargs)` when swin_hf must prepare the
    weights itself; None to let transformers load `path` as usual. That is the case when `path` holds

    - a checkpoint of transformers' own Swin (`model_type: "swin"`): config and weights are converted;
    - a checkpoint whose relative position tables or absolute position embedding do not fit the requested
      config (e.g. ``window_size=12, image_size=384``): they are resized by `resize.adapt_state_dict`, which
      logs what it did; with ``ignore_mismatched_sizes=True`` a classifier of another ``num_labels`` is
      dropped (re-initialised, with a log line). Without it, transformers reports the size mismatch.

    Config-field entries of `kwargs` are then moved into the config.
    """
    from transformers import PretrainedConfig
    from transformers.utils import cached_file

    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    reinitialise_head = bool(kwargs.get("ignore_mismatched_sizes", False))
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, **hub_kwargs)
    except (OSError, ValueError):
        return None  # not a readable folder/repo: let from_pretrained report it
    model_type = config_dict.get("model_type")
    if model_type in TRANSFORMERS_MODEL_TYPES:
        user_config = kwargs.pop("config", None)
        overrides = _config_overrides(model_class, kwargs, pop=True)
        config = user_config or config_from_transformers(config_dict, model_class.config_class, **overrides)
        state_dict = convert_state_dict(_read_weights(path, hub_kwargs, cached_file), source="transformers")
        return config, adapt_state_dict(state_dict, config, reinitialise_head=reinitialise_head)
    if model_type != model_class.config_class.model_type:
        return None
    overrides = _config_overrides(model_class, kwargs, pop=False)
    user_config = kwargs.get("config")
    if not overrides and user_config is None:
        return None  # the saved config is used as is: the weights fit it
    config = user_config if user_config is not None else config_from_transformers(
        config_dict, model_class.config_class, **overrides
    )
    shapes = _saved_shapes(path, hub_kwargs, cached_file)
    if shapes is None or not _needs_adapting(shapes, config, reinitialise_head):
        return None
    kwargs.pop("config", None)
    _config_overrides(model_class, kwargs, pop=True)
    return config, adapt_state_dict(_read_weights(path, hub_kwargs, cached_file), config, reinitialise_head)


def _saved_shapes(path, hub_kwargs, cached_file) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the tensors in a checkpoint's model.safetensors, read from its header only."""
    from safetensors import safe_open

    file = cached_file(path, "model.safetensors", _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if file is None:
        return None
    with safe_open(file, framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _needs_adapting(shapes: dict[str, tuple[int, ...]], config, reinitialise_head: bool) -> bool:
    grid = _grid(config)
    for key, shape in shapes.items():
        if key.endswith("attn.relative_position_bias_table") and shape[0] != (2 * config.window_size - 1) ** 2:
            return True
        if key.endswith("embeddings.absolute_pos_embed") and shape[1] != grid[0] * grid[1]:
            return True
        if reinitialise_head and key == "classifier.weight" and shape[0] != config.num_labels:
            return True
    return False


def load_transformers_swin(model_class, path, kwargs: dict):
    """Kept for callers of the first version: see `prepare_pretrained`."""
    return prepare_pretrained(model_class, path, kwargs)


def _read_weights(path, hub_kwargs, cached_file) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    def find(name):
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    if (file := find("model.safetensors")) is not None:
        return load_file(file)
    if (index := find("model.safetensors.index.json")) is not None:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        if os.path.isdir(path):  # shard names come from a file: they must lead inside the model folder
            from .training.data import path_inside

            for shard in shards:
                path_inside(os.path.join(path, shard), path, index, f"weight_map entry {shard!r}")
        state_dict = {}
        for shard in shards:
            state_dict.update(load_file(find(shard)))
        return state_dict
    if (file := find("pytorch_model.bin")) is not None:
        return torch.load(file, map_location="cpu", weights_only=True)
    raise OSError(f"No model.safetensors or pytorch_model.bin found in {os.fspath(path)!r}.")
