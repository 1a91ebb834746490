"""Weights from other Swin implementations -> swin_hf, as pure, strict state-dict conversions.

swin_hf's own names (prefix `swin.` on the task models, as in transformers):
    embeddings.proj / embeddings.norm / embeddings.absolute_pos_embed
    stages.{s}.blocks.{b}.norm1 | attn.qkv | attn.proj | attn.relative_position_bias_table | norm2 | mlp.fc1 | mlp.fc2
    stages.{s}.downsample.norm | downsample.reduction
    norm, classifier (image classification head), hidden_states_norms.{stage} (backbone)

Strict means: every source key is either renamed or deliberately dropped (derived buffers such as
`relative_position_index` and `attn_mask`), and anything else raises an error listing the keys.
"""

from __future__ import annotations

import json
import os
import re

import torch

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

_SOURCES = ("transformers",)

# q, k and v projections (separate in transformers) become one fused `qkv` linear, in that order.
_QKV_PARTS = {"q": 0, "query": 0, "k": 1, "key": 1, "v": 2, "value": 2}


class ConversionError(ValueError):
    """A state dict that does not convert: unknown keys, missing parts or wrong shapes."""


def convert_state_dict(state_dict: dict[str, torch.Tensor], source: str = "transformers") -> dict[str, torch.Tensor]:
    """A new state dict in swin_hf's names from one in `source`'s names. The input is not modified.

    Raises ConversionError naming every key that is neither converted nor a known derived buffer.
    """
    if source not in _SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {_SOURCES}.")
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
        raise ConversionError(
            f"{len(unknown)} key(s) of the {source} state dict are not Swin weights: {', '.join(sorted(unknown)[:20])}"
            + (" ..." if len(unknown) > 20 else "")
            + ". Is this checkpoint a Swin Transformer (v1)?"
        )
    for fused, parts in qkv_parts.items():
        if sorted(parts) != [0, 1, 2]:
            raise ConversionError(f"{fused}: found only parts {sorted(parts)} of q, k, v.")
        out[fused] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


def _rename(key: str, head_rules, body_rules) -> str | None | bool:
    """The converted key, None to drop it, False if no rule applies."""
    for pattern, replacement in head_rules:
        if re.match(pattern, key):
            return None if replacement is None else re.sub(pattern, replacement, key, count=1)
    prefix, body = ("swin.", key[5:]) if key.startswith("swin.") else ("", key)
    for pattern, replacement in body_rules:
        if re.match(pattern, body):
            return None if replacement is None else prefix + re.sub(pattern, replacement, body, count=1)
    return False


# --------------------------------------------------------------------------------------------------
# transformers' config.json (model_type "swin") -> SwinConfig
# --------------------------------------------------------------------------------------------------

_DROPPED_CONFIG_KEYS = {"model_type", "transformers_version", "architectures", "auto_map", "num_layers", "hidden_size"}


def config_from_transformers(config_dict: dict, config_class, **overrides):
    """A swin_hf config from the dict of a transformers `SwinConfig` (same field names)."""
    values = {k: v for k, v in config_dict.items() if k not in _DROPPED_CONFIG_KEYS and not k.startswith("_")}
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


def load_transformers_swin(model_class, path, kwargs: dict):
    """(config, state_dict) for `model_class.from_pretrained(path)` when `path` (a folder or Hub id)
    holds a checkpoint of transformers' own Swin; None otherwise. Config-field entries of `kwargs`
    (e.g. num_labels=10) are moved into the config."""
    from transformers import PretrainedConfig
    from transformers.utils import cached_file

    hub_kwargs = {
        k: kwargs[k]
        for k in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")
        if k in kwargs
    }
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path, **hub_kwargs)
    except (OSError, ValueError):
        return None  # not a readable folder/repo: let from_pretrained report it
    if config_dict.get("model_type") != "swin":
        return None

    user_config = kwargs.pop("config", None)
    config_fields = set(model_class.config_class().to_dict())
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in config_fields or k in ("num_labels",)}
    config = user_config or config_from_transformers(config_dict, model_class.config_class, **overrides)

    state_dict = _read_weights(path, hub_kwargs, cached_file)
    return config, convert_state_dict(state_dict, source="transformers")


def _read_weights(path, hub_kwargs, cached_file) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    def find(name):
        return cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)

    if (file := find("model.safetensors")) is not None:
        return load_file(file)
    if (index := find("model.safetensors.index.json")) is not None:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state_dict = {}
        for shard in shards:
            state_dict.update(load_file(find(shard)))
        return state_dict
    if (file := find("pytorch_model.bin")) is not None:
        return torch.load(file, map_location="cpu", weights_only=True)
    raise OSError(f"No model.safetensors or pytorch_model.bin found in {os.fspath(path)!r}.")
