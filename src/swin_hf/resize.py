"""Fit a checkpoint to a config with another window size, image size or number of labels.

The paper fine-tunes 224² / window 7 models at 384² / window 12. What changes shape:
  - relative position bias tables, ((2M-1)^2, heads): resized bicubically on the (2M-1) x (2M-1) grid of
    offsets, align_corners=False, as the official fine-tuning code does;
  - the absolute position embedding (when used), (1, H*W, C): resized bicubically on the patch grid;
  - the classifier, (num_labels, C): a new number of labels cannot reuse it, so (when the caller allows it:
    `from_pretrained(..., ignore_mismatched_sizes=True)`) it is dropped and re-initialised by the model.
Everything is logged, one line per kind of change.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from .configuration_swin import to_pair

logger = logging.getLogger(__name__)


def resize_relative_position_bias_table(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """((2M-1)^2, heads) -> ((2M'-1)^2, heads) for the window M' = window_size, bicubic."""
    rows, heads = table.shape
    side, new_side = math.isqrt(rows), 2 * window_size - 1
    if side * side != rows:
        raise ValueError(f"A relative position bias table has (2M-1)^2 rows; got {rows}.")
    if side == new_side:
        return table
    grid = table.T.reshape(1, heads, side, side).float()  # (1, heads, 2M-1, 2M-1)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(heads, new_side * new_side).T.contiguous().to(table.dtype)  # ((2M'-1)^2, heads)


def resize_absolute_position_embedding(
    embedding: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """(1, H*W, C) on an H x W patch grid -> (1, H'*W', C) on `new_grid`, bicubic."""
    _, tokens, channels = embedding.shape
    if tokens != grid[0] * grid[1]:
        raise ValueError(f"An absolute position embedding of {tokens} tokens does not fit a {grid[0]}x{grid[1]} grid.")
    if tuple(grid) == tuple(new_grid):
        return embedding
    x = embedding.reshape(1, grid[0], grid[1], channels).permute(0, 3, 1, 2).float()  # (1, C, H, W)
    x = F.interpolate(x, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], channels).to(embedding.dtype)


def adapt_state_dict(
    state_dict: dict[str, torch.Tensor], config, reinitialise_head: bool = True
) -> dict[str, torch.Tensor]:
    """A copy of a swin_hf-named state dict whose tables and position embedding fit `config`, and (with
    `reinitialise_head`) without a classifier whose number of labels differs from config.num_labels, so
    that the model initialises a new one. Logs what it changed."""
    window = config.window_size
    patch = to_pair(config.patch_size)
    new_grid = tuple(-(-s // p) for s, p in zip(to_pair(config.image_size), patch))
    out: dict[str, torch.Tensor] = {}
    resized_tables: list[int] = []  # old window sizes
    for key, tensor in state_dict.items():
        if key.endswith("attn.relative_position_bias_table") and tensor.shape[0] != (2 * window - 1) ** 2:
            resized_tables.append((math.isqrt(tensor.shape[0]) + 1) // 2)
            tensor = resize_relative_position_bias_table(tensor, window)
        elif key.endswith("embeddings.absolute_pos_embed") and tensor.shape[1] != new_grid[0] * new_grid[1]:
            old = math.isqrt(tensor.shape[1])
            if old * old != tensor.shape[1]:
                raise ValueError(
                    f"{key} has {tensor.shape[1]} tokens, not a square grid; cannot resize it to {new_grid}."
                )
            tensor = resize_absolute_position_embedding(tensor, (old, old), new_grid)
            logger.warning(
                "Resized the absolute position embedding %s from a %dx%d to a %dx%d patch grid (bicubic) for "
                "image_size=%s.", key, old, old, new_grid[0], new_grid[1], config.image_size,
            )
        elif reinitialise_head and key.startswith("classifier.") and _head_labels(state_dict) not in (None, config.num_labels):
            continue
        out[key] = tensor
    if resized_tables:
        old = sorted(set(resized_tables))
        logger.warning(
            "Resized %d relative position bias table(s) from window %s ((2M-1)^2 = %s rows) to window %d "
            "(%d rows), bicubic as in the official fine-tuning code.",
            len(resized_tables), "/".join(map(str, old)), "/".join(str((2 * m - 1) ** 2) for m in old),
            window, (2 * window - 1) ** 2,
        )
    labels = _head_labels(state_dict)
    if reinitialise_head and labels not in (None, config.num_labels):
        logger.warning(
            "The checkpoint's classifier has %d labels but the config asks for %d: the classifier is "
            "re-initialised and must be trained.", labels, config.num_labels,
        )
    return out


def _head_labels(state_dict) -> int | None:
    weight = state_dict.get("classifier.weight")
    return None if weight is None else int(weight.shape[0])




__all__ = ["adapt_state_dict", "resize_absolute_position_embedding", "resize_relative_position_bias_table"]
