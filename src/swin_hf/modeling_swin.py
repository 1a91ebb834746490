"""Swin Transformer (Liu et al., ICCV 2021) and Swin V2 (Liu et al., CVPR 2022), read top to bottom:

  1. window geometry  - partition / reverse, cyclic shift, relative position index, SW-MSA mask
  2. window attention - W-MSA / SW-MSA with the relative position bias B (V2: cosine, continuous bias)
  3. MLP and block    - LN -> (S)W-MSA -> residual, LN -> MLP -> residual (V2: res-post-norm)
  4. patch merging, stage
  5. patch partition + linear embedding
  6. the model: SwinPreTrainedModel (Hugging Face plumbing), SwinModel
  7. heads: SwinForImageClassification, SwinBackbone

Feature maps stay channels-last, (B, H, W, C), inside the encoder. V2 pieces are small subclasses of V1's,
picked by `config.version`. Code that exists only for speed lives in fast_paths.py, chosen per model with
`model.set_fast_paths(...)`. save_pretrained copies this file, configuration_swin.py and fast_paths.py next
to the weights (the only package modules it imports), so `trust_remote_code=True` works without swin_hf.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput
from transformers.utils import ModelOutput

from .configuration_swin import SwinConfig, to_pair
from .fast_paths import (
    FastPaths, TokenLinear, auto_attention_implementation, can_skip_dropped, in_token_tiles, residual_on_kept_samples,
    sample_groups,
)  # fmt: skip

MASKED_LOGIT = -100.0  # added to SW-MSA logits across regions (the official value; exp(-100) is 0 in fp32/bf16)


# ---- 1. Window geometry: functions of sizes, cached per size and device, never in checkpoints -------


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, window*window, C), windows in row-major order; H, W multiples of window."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.transpose(2, 3).reshape(B, (H // window) * (W // window), window * window, C)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """(B, nW, window*window, C) -> (B, H, W, C); the inverse of window_partition."""
    B, _, _, C = windows.shape
    x = windows.view(B, height // window, width // window, window, window, C)
    return x.transpose(2, 3).reshape(B, height, width, C)


def cyclic_shift(x: torch.Tensor, shift: int) -> torch.Tensor:
    """(B, H, W, C) rolled by -shift along H and W: torch.roll(x, (-shift, -shift), (1, 2)); a negative
    shift rolls back. Spelled as slices and concatenations because Inductor's CPU code generation fails on
    a graph that rolls a map of symbolic size there and back (torch 2.13, torch.compile(dynamic=True))."""
    x = torch.cat([x[:, shift:], x[:, :shift]], dim=1)
    return torch.cat([x[:, :, shift:], x[:, :, :shift]], dim=2)


def window_geometry(height: int, width: int, window_size: int, always_partition: bool) -> tuple[int, int]:
    """(window, shift) for a stage whose feature map is height x width: M and floor(M/2). As in the official
    code, a map not larger than the window is attended as one window of its smaller side, unshifted.
    `always_partition` (the official detection code, transformers' SwinBackbone) pads the map instead."""
    if not always_partition and min(height, width) <= window_size:
        return min(height, width), 0
    return window_size, window_size // 2


def cached_geometry(build):
    """Cache a tensor builder per (sizes, device), outside inference mode (a mask made under it can serve a
    training step later). Under torch.compile / export the builder is traced instead."""
    cached = functools.lru_cache(maxsize=128)(build)

    @functools.wraps(build)
    def get(*args):
        if torch.compiler.is_compiling():
            return build(*args)
        with torch.inference_mode(False), torch.no_grad():
            return cached(*args)

    get.cache_clear, get.cache_info = cached.cache_clear, cached.cache_info
    return get


@cached_geometry
def relative_position_index(window, table_window, device: torch.device) -> torch.Tensor:
    """Index into the (2M-1)^2 bias table (M = table_window) of every (query, key) pair of a window: (N, N). A
    smaller window reads its centre: exactly the offsets that occur. Sides per axis too: Video Swin's (T, M, M)."""
    window, table_window = ((s, s) if isinstance(s, int) else s for s in (window, table_window))
    coords = torch.stack(torch.meshgrid(*(torch.arange(w, device=device) for w in window), indexing="ij")).flatten(1)
    index = 0  # row-major over the axes' offsets, each in [0, 2M_i - 2]: (N, N)
    for offset, M in zip(coords[:, :, None] - coords[:, None, :], table_window):  # offset: (N, N) on one axis
        index = index * (2 * M - 1) + offset + (M - 1)
    return index


@cached_geometry
def log_spaced_offsets(window: int, normaliser: int, device: torch.device) -> torch.Tensor:
    """Swin V2's continuous-bias inputs: each offset (dy, dx) of a window, over normaliser - 1 (the pre-training
    window), scaled to [-8, 8], mapped by sign(t) log2(1 + |t|) / log2(8): (2w-1, 2w-1, 2), as V1's table."""
    offsets = torch.arange(-(window - 1), window, device=device, dtype=torch.float32)
    t = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1)  # (2w-1, 2w-1, 2)
    t = t / max(normaliser - 1, 1) * 8.0  # divided, then scaled: the references' rounding (a window of 1: offset 0)
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8.0)


@cached_geometry
def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive SW-MSA mask, (nW, N, N): 0 within a region, MASKED_LOGIT across regions. After the cyclic
    shift, the last row/column band of windows holds tokens from up to three regions per axis that were not
    adjacent in the image: [0, H-window), [H-window, H-shift), [H-shift, H)."""

    def region(n: int) -> torch.Tensor:  # (n,): 0, 1 or 2
        return (torch.arange(n, device=device) >= n - window).long() + (torch.arange(n, device=device) >= n - shift).long()

    label = region(height)[:, None] * 3 + region(width)[None, :]  # (H, W)
    label = window_partition(label[None, :, :, None], window)[0, :, :, 0]  # (nW, N)
    different = label[:, None, :] != label[:, :, None]  # (nW, N, N)
    return different.float() * MASKED_LOGIT


# ---- 2. Window attention (W-MSA, and SW-MSA when given the shift mask) ----------------------------


def eager_attention(q, k, v, bias, dropout: float, training: bool):
    """softmax(q k^T + bias) v, spelled out; q already scaled. Returns (output, probabilities). The softmax
    keeps the logits' dtype (CUDA's autocast would keep an fp32 copy for backward beside the bf16 one)."""
    logits = q @ k.transpose(-2, -1) + bias  # (..., N, N)
    probs = logits.softmax(-1, dtype=logits.dtype)
    return F.dropout(probs, dropout, training) @ v, probs


def sdpa_attention(q, k, v, bias, dropout: float, training: bool):
    """The same through torch's scaled_dot_product_attention (no probabilities)."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout if training else 0.0, scale=1.0)
    return out, None


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, plus a learned relative position bias B:
    Attention(Q, K, V) = SoftMax(QK^T / sqrt(d) + B [+ mask]) V, B gathered from a (2M-1)^2 x heads table.
    `config._attn_implementation`: "eager" (spelled out), "sdpa" (torch's scaled_dot_product_attention) or
    "auto" (the default: the faster of the two for the call, fast_paths.auto_attention_implementation).
    Asking for the attention probabilities runs "eager", since SDPA does not return them."""

    def __init__(self, config: SwinConfig, dim: int, num_heads: int, pretrained_window: int = 0):
        super().__init__()
        self.config = config  # read at call time: `attn_implementation` can change after construction
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.window_size = config.window_size
        self.qkv = TokenLinear(dim, 3 * dim, bias=config.qkv_bias and not self.separate_qkv_bias)
        self.proj = TokenLinear(dim, dim)
        self.attn_drop, self.proj_drop = config.attention_probs_dropout_prob, nn.Dropout(config.hidden_dropout_prob)
        self.init_position_bias(num_heads, pretrained_window)

    separate_qkv_bias = False  # V2: biases for q and v only, outside the qkv product

    def init_position_bias(self, num_heads: int, pretrained_window: int) -> None:
        M = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * M - 1) ** 2, num_heads))

    def relative_position_bias(self, window: int) -> torch.Tensor:
        """B for windows of side `window`: (heads, N, N)."""
        table = self.relative_position_bias_table
        index = relative_position_index(window, self.window_size, table.device)
        return table[index.view(-1)].view(window * window, window * window, -1).permute(2, 0, 1)

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., 3C): queries, keys and values of every token, in one product."""
        return self.qkv(x)

    def queries_and_keys(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k (..., heads, N, d) -> the pair whose product is the logits: (q / sqrt(d), k)."""
        return q * self.head_dim**-0.5, k

    def forward(self, x: torch.Tensor, window: int, mask: torch.Tensor | None = None, output_attentions: bool = False):
        """x: (B, nW, N, C) windows; mask: (nW, N, N) for SW-MSA. Returns (B, nW, N, C) and, if asked, the
        attention probabilities (B*nW, heads, N, N)."""
        B, nW, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self.project_qkv(x).view(B, nW, N, 3, h, d).permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, nW, h, N, d)
        q, k = self.queries_and_keys(q, k)
        bias = self.relative_position_bias(window).unsqueeze(0)  # (1, h, N, N)
        if mask is None:  # W-MSA: the same bias in every window -> windows join the batch
            q, k, v = (t.reshape(B * nW, h, N, d) for t in (q, k, v))
        else:  # SW-MSA: bias + mask differ per window, not per sample -> windows join the heads
            q, k, v = (t.reshape(B, nW * h, N, d) for t in (q, k, v))
            bias = (bias + mask.unsqueeze(1)).reshape(1, nW * h, N, N)
        implementation = "eager" if output_attentions else self.config._attn_implementation
        if implementation == "auto":
            implementation = auto_attention_implementation(q, bias_is_trained=bias.requires_grad)
        attend = ATTENTION_FUNCTIONS.get(implementation, sdpa_attention)
        out, probs = attend(q, k, v, bias.to(q.dtype), self.attn_drop, self.training)
        out = out.view(B, nW, h, N, d).transpose(2, 3).reshape(B, nW, N, C)
        weights = probs.reshape(B * nW, h, N, N) if output_attentions else None
        return self.proj_drop(self.proj(out)), weights


class WindowAttentionV2(WindowAttention):
    """Swin V2: scaled cosine attention, cos(q, k) * tau with a learned tau = exp(logit_scale) <= 100 per head,
    and a continuous relative position bias 16 * sigmoid(MLP(log-spaced offsets)): no table tied to a window
    size, any window works. q and v have biases, k none."""

    separate_qkv_bias = True

    def __init__(self, config: SwinConfig, dim: int, num_heads: int, pretrained_window: int = 0):
        super().__init__(config, dim, num_heads, pretrained_window)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if config.qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if config.qkv_bias else None

    def init_position_bias(self, num_heads: int, pretrained_window: int) -> None:
        self.pretrained_window = pretrained_window
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))

    def relative_position_bias(self, window: int) -> torch.Tensor:
        """16 * sigmoid(MLP(log-spaced offsets)) for windows of side `window`: (heads, N, N)."""
        weight = self.cpb_mlp[0].weight
        coords = log_spaced_offsets(window, self.pretrained_window or window, weight.device).to(weight.dtype)
        table = self.cpb_mlp(coords.view(-1, 2))  # ((2w-1)^2, heads)
        index = relative_position_index(window, window, weight.device)
        bias = table[index.view(-1)].view(window * window, window * window, -1).permute(2, 0, 1)
        return 16 * torch.sigmoid(bias)

    def queries_and_keys(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tau = self.logit_scale.clamp(max=math.log(100.0)).exp()  # (h, 1, 1)
        return F.normalize(q, dim=-1) * tau, F.normalize(k, dim=-1)

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)  # (..., 3C), no bias
        if self.q_bias is None:
            return qkv
        return qkv + torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))  # (q_bias, 0, v_bias)


# ---- 3. MLP and Swin block ------------------------------------------------------------------------


class SwinMLP(nn.Module):
    """fc1 (C -> mlp_ratio * C), activation, fc2 (back to C), with hidden dropout."""

    def __init__(self, config: SwinConfig, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1, self.act, self.fc2 = TokenLinear(dim, hidden), ACT2FN[config.hidden_act], TokenLinear(hidden, dim)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(GradientCheckpointingLayer):
    """z' = (S)W-MSA(LN(z)) + z;  z = MLP(LN(z')) + z'.  Odd blocks of a stage (shifted=True) use SW-MSA."""

    fast_paths: FastPaths = FastPaths()
    attention_class, norm_class = WindowAttention, nn.LayerNorm

    def __init__(self, config: SwinConfig, dim: int, num_heads: int, drop_path: float, shifted: bool, pretrained_window=0):
        super().__init__()
        self.shifted, self.drop_path = shifted, drop_path
        self.norm1 = self.norm_class(dim, eps=config.layer_norm_eps)
        self.attn = self.attention_class(config, dim, num_heads, pretrained_window)
        self.norm2 = self.norm_class(dim, eps=config.layer_norm_eps)
        self.mlp = SwinMLP(config, dim)

    def forward(self, x: torch.Tensor, window: int, shift: int, mask, output_attentions: bool = False):
        """x: (B, H, W, C) -> (B, H, W, C), probabilities or None. `window`, `shift` and the SW-MSA `mask`
        come from the stage (shift and mask apply only if this block is a shifted one)."""
        shift = shift if self.shifted else 0
        weights = None

        def attention(x: torch.Tensor) -> torch.Tensor:
            nonlocal weights
            x, weights = self.attention_branch(x, window, shift, mask if shift else None, output_attentions)
            return x

        mlp = self.mlp_branch
        if self.fast_paths.mlp_tile_tokens:
            mlp = functools.partial(in_token_tiles, self.mlp_branch, paths=self.fast_paths)
        x = self.residual(x, attention, may_skip=not output_attentions)  # (probabilities for every sample)
        return self.residual(x, mlp), weights

    def attention_branch(self, x, window: int, shift: int, mask, output_attentions: bool):
        """(S)W-MSA(LN(x)): (b, H, W, C) -> (b, H, W, C), and the probabilities if asked."""
        return self.shifted_window_attention(self.norm1(x), window, shift, mask, output_attentions)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """MLP(LN(x)), per token: (..., C) -> (..., C)."""
        return self.mlp(self.norm2(x))

    def shifted_window_attention(self, x, window: int, shift: int, mask, output_attentions: bool):
        _, H, W, _ = x.shape
        pad_h, pad_w = (-H) % window, (-W) % window  # bottom/right to whole windows, as the references do
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        if shift:  # cyclic shift: SW-MSA's windows straddle W-MSA's window borders
            x = cyclic_shift(x, shift)
        windows, weights = self.attn(window_partition(x, window), window, mask, output_attentions)  # (b, nW, N, C)
        x = window_reverse(windows, window, H + pad_h, W + pad_w)  # (b, Hp, Wp, C)
        if shift:
            x = cyclic_shift(x, -shift)
        return (x[:, :H, :W] if pad_h or pad_w else x), weights

    def residual(self, x: torch.Tensor, branch, may_skip: bool = True) -> torch.Tensor:
        """x + DropPath(branch(x)): stochastic depth (Huang et al., 2016). In training each sample's branch
        is dropped with probability p = drop_path, and kept ones are scaled by 1/(1-p)."""
        p = self.drop_path
        if p == 0.0 or not self.training:
            return x + branch(x)
        keep = x.new_empty(x.shape[0]).bernoulli_(1.0 - p)  # (B,) 1 = kept
        if self.fast_paths.skip_dropped_branches and may_skip and can_skip_dropped(x):
            return residual_on_kept_samples(x, branch, keep, 1.0 / (1.0 - p))
        return x + branch(x) * keep.div_(1.0 - p).view(-1, *(1,) * (x.ndim - 1))


class ResPostNorm(nn.LayerNorm):
    """The LayerNorm ending a Swin V2 residual branch; zero-initialised (officially): new blocks add nothing."""


class SwinBlockV2(SwinBlock):
    """Swin V2's res-post-norm block: z' = LN((S)W-MSA(z)) + z;  z = LN(MLP(z')) + z'."""

    attention_class, norm_class = WindowAttentionV2, ResPostNorm

    def attention_branch(self, x, window: int, shift: int, mask, output_attentions: bool):
        x, weights = self.shifted_window_attention(x, window, shift, mask, output_attentions)
        return self.norm1(x), weights

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.mlp(x))


# ---- 4. Patch merging and stages ------------------------------------------------------------------


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (official order), LayerNorm, linear 4C -> 2C: halves H and W."""

    norm_width = 4  # the norm comes before the reduction, on 4C channels

    def __init__(self, config: SwinConfig, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(self.norm_width * dim, eps=config.layer_norm_eps)
        self.reduction = TokenLinear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); odd sizes are zero-padded bottom/right."""
        return self.reduction(self.norm(self.neighbourhoods(x)))

    @staticmethod
    def neighbourhoods(x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C): each 2x2 neighbourhood's tokens side by side."""
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        B, H, W, C = x.shape
        # neighbours in the order (row, col) = (0,0), (1,0), (0,1), (1,1): the one pretrained weights expect
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)  # (B, H/2, W/2, col, row, C)
        return x.reshape(B, H // 2, W // 2, 4 * C)


class PatchMergingV2(PatchMerging):
    """Swin V2's patch merging: the linear 4C -> 2C first, then LayerNorm on 2C."""

    norm_width = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(self.neighbourhoods(x)))


class SwinStage(nn.Module):
    """`depth` Swin blocks alternating W-MSA and SW-MSA, then (except in the last stage) patch merging."""

    fast_paths: FastPaths = FastPaths()

    def __init__(self, config: SwinConfig, stage: int, drop_paths: list[float]):
        super().__init__()
        dim = config.embed_dim * 2**stage
        self.window_size = config.window_size
        block, merging = (SwinBlockV2, PatchMergingV2) if config.version == 2 else (SwinBlock, PatchMerging)
        pretrained_window = (config.pretrained_window_sizes or [0] * len(config.depths))[stage]
        self.blocks = nn.ModuleList(
            block(config, dim, config.num_heads[stage], p, shifted=i % 2 == 1, pretrained_window=pretrained_window)
            for i, p in enumerate(drop_paths)
        )
        self.downsample = merging(config, dim) if stage < len(config.depths) - 1 else None

    def forward(self, x: torch.Tensor, always_partition: bool = False, output_attentions: bool = False):
        """x: (B, H, W, C) -> (downsampled output, output before downsampling, last block's attention)."""
        H, W = x.shape[1:3]
        window, shift = window_geometry(H, W, self.window_size, always_partition)
        mask = None
        if shift and len(self.blocks) > 1:  # one mask per stage, shared by its SW-MSA blocks
            mask = shifted_window_mask(H + (-H) % window, W + (-W) % window, window, shift, x.device)
        if self.fast_paths.inference_group_size and not (self.training or output_attentions):
            groups = sample_groups(x, self.fast_paths)
            x, weights = torch.cat([self.run_blocks(x[g], window, shift, mask, False)[0] for g in groups]), None
        else:
            x, weights = self.run_blocks(x, window, shift, mask, output_attentions)
        before_downsampling = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, before_downsampling, weights

    def run_blocks(self, x, window: int, shift: int, mask, output_attentions: bool):
        weights = None
        for i, block in enumerate(self.blocks):
            x, weights = block(x, window, shift, mask, output_attentions and i == len(self.blocks) - 1)
        return x, weights


# ---- 5. Patch partition + linear embedding --------------------------------------------------------


class SwinEmbeddings(nn.Module):
    """Patch partition + linear embedding (one strided conv), LayerNorm, optional absolute position embedding;
    with `use_mask_token` (masked image modeling), a learned token replaces the embedding of masked patches."""

    def __init__(self, config: SwinConfig, use_mask_token: bool = False):
        super().__init__()
        self.patch_size = to_pair(config.patch_size)
        self.num_channels = config.num_channels
        self.proj = nn.Conv2d(config.num_channels, config.embed_dim, self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.grid = tuple(math.ceil(s / p) for s, p in zip(to_pair(config.image_size), self.patch_size))
        self.absolute_pos_embed = None
        if config.use_absolute_embeddings:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], config.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim)) if use_mask_token else None
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, ceil(H/p), ceil(W/p), C), H and W padded bottom/right to whole patches.
        bool_masked_pos: (B, Hp*Wp) or (B, Hp, Wp), True where the mask token replaces the patch."""
        check_pixel_values(pixel_values, self.num_channels, self.patch_size)
        H, W = pixel_values.shape[2:]
        p_h, p_w = self.patch_size
        if H % p_h or W % p_w:
            pixel_values = F.pad(pixel_values, (0, (-W) % p_w, 0, (-H) % p_h))
        x = self.proj(pixel_values.to(self.proj.weight.dtype)).permute(0, 2, 3, 1)  # (B, Hp, Wp, C)
        x = self.norm(x)
        if bool_masked_pos is not None:
            x = self.apply_mask(x, bool_masked_pos)
        if self.absolute_pos_embed is not None:
            x = x + self.position_embedding(x.shape[1], x.shape[2])
        return self.drop(x)

    def apply_mask(self, x: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """x: (B, Hp, Wp, C) with masked patches replaced by the mask token (SimMIM)."""
        if self.mask_token is None:
            raise ValueError("bool_masked_pos was given but this model has no mask token: use SwinForMaskedImageModeling (or use_mask_token=True).")
        B, Hp, Wp, _ = x.shape
        if bool_masked_pos.numel() != B * Hp * Wp:
            raise ValueError(
                f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)} but the input has {B} x {Hp} x {Wp} patches; "
                "give one flag per patch, shape (batch, num_patches) or (batch, Hp, Wp)."
            )
        mask = bool_masked_pos.reshape(B, Hp, Wp, 1).to(x.dtype)
        return x * (1.0 - mask) + self.mask_token.to(x.dtype).view(1, 1, 1, -1) * mask

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """(1, height, width, C): the learned table, bicubically resized when the grid differs."""
        pos = self.absolute_pos_embed.view(1, *self.grid, -1)
        if (height, width) != self.grid:
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1)
        return pos


def check_pixel_values(pixel_values: torch.Tensor, channels: int, patch_size: tuple[int, int]) -> None:
    """Raise a ValueError that says what to do when pixel_values cannot be the input of the model."""
    if pixel_values.ndim != 4 or pixel_values.shape[1] != channels:
        raise ValueError(
            f"Swin expects pixel_values of shape (batch, {channels}, height, width), got {tuple(pixel_values.shape)}. Convert "
            f"images to {channels} channels (e.g. PIL `image.convert('RGB')`) or set `num_channels` in the config."
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values has dtype {pixel_values.dtype}; Swin expects normalised floating-point pixels. Run the "
            "images through the model's image processor (SwinImageProcessor), which rescales and normalises them."
        )
    H, W = pixel_values.shape[2:]
    if H < patch_size[0] or W < patch_size[1]:
        raise ValueError(f"Image of {H}x{W} pixels is smaller than one {patch_size[0]}x{patch_size[1]} patch; resize it up.")
    if pixel_values.shape[0] == 0:  # (not len(): that would fix a symbolic batch size under torch.export)
        raise ValueError("pixel_values is a batch of 0 images; pass at least one image.")


# ---- 6. The model ---------------------------------------------------------------------------------


@dataclass
class SwinModelOutput(ModelOutput):
    """last_hidden_state: (B, L, C) last-stage tokens after the final LayerNorm, L = H/32 * W/32.
    pooler_output: (B, C), their average. hidden_states: with `output_hidden_states`, (B, L_i, C_i) for the
    patch embedding and each stage's output (after its patch merging); reshaped_hidden_states: the same as
    (B, C_i, H_i, W_i). attentions: with `output_attentions`, the probabilities of each stage's last block,
    (B * num_windows, heads, M*M, M*M)."""

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SwinImageClassifierOutput(ModelOutput):
    """loss: with `labels`, cross-entropy (single label), BCE-with-logits (multi label) or MSE (regression).
    logits: (B, num_labels) scores before softmax. The rest as in SwinModelOutput."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.FloatTensor, ...] | None = None


class SwinPreTrainedModel(PreTrainedModel):
    """Initialisation, checkpoint loading, speed-path settings: the PreTrainedModel plumbing of all heads."""

    config_class = SwinConfig
    base_model_prefix = "swin"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SwinBlock"]
    _supports_sdpa, _supports_flash_attn, _supports_flex_attn, _can_compile_fullgraph = True, False, False, True
    fast_paths: FastPaths = FastPaths()
    # swin_hf installs its converter of other formats here (convert.prepare_pretrained: (cls, path, kwargs) ->
    # (config, state_dict) or None). A folder's own copy of this file (trust_remote_code) has none.
    checkpoint_adapter = None

    if not hasattr(PreTrainedModel, "activation_checkpointing_enable"):  # transformers < 5.24

        def activation_checkpointing_enable(self, **kwargs) -> None:
            """transformers 5.24's name for gradient_checkpointing_enable (per block), on older versions too."""
            self.gradient_checkpointing_enable(**kwargs)

    def post_init(self) -> None:
        super().post_init()
        self.set_fast_paths(FastPaths.for_this_cpu())  # the paths that pay on this machine's CPU

    def set_fast_paths(self, paths: FastPaths | None = None, **changes) -> FastPaths:
        """This model's speed paths (fast_paths.py): a FastPaths and/or fields to change, e.g.
        `set_fast_paths(FastPaths.plain())`, `set_fast_paths(mlp_tile_tokens=4096)`. Returns those in force."""
        paths = dataclasses.replace(paths or self.fast_paths, **changes)
        for module in self.modules():
            if hasattr(type(module), "fast_paths"):
                module.fast_paths = paths
        return paths

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        """"auto" (also when none is asked for), or what transformers resolves for "eager" / "sdpa"."""
        if requested_attention in (None, "auto"):
            return "auto"
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        return True  # WindowAttention reads config._attn_implementation on every call

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation: truncated normal (std = initializer_range) for linear/conv weights, bias
        tables, position embedding; zero biases; LayerNorm = identity (V2's res-post-norms: zero)."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            (init.zeros_ if isinstance(module, ResPostNorm) else init.ones_)(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, WindowAttentionV2):
            init.constant_(module.logit_scale, math.log(10.0))
            for bias in (module.q_bias, module.v_bias):
                if bias is not None:
                    init.zeros_(bias)
        elif isinstance(module, WindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=std)
        elif isinstance(module, SwinEmbeddings):
            for param in (module.absolute_pos_embed, module.mask_token):
                if param is not None:
                    init.trunc_normal_(param, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """save_pretrained, plus the image processor's code (every auto_map entry loads without swin_hf)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        folder, code = Path(save_directory), Path(__file__).with_name("image_processing_swin.py")
        if code.exists():
            shutil.copy(code, folder / code.name)
        for weights in folder.glob("*.safetensors"):  # safetensors writes them 0600: the other files' mode
            weights.chmod((folder / "config.json").stat().st_mode & 0o777)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A swin_hf checkpoint; with swin_hf installed also transformers' Swin / Swinv2 ones (converted)."""
        adapter = SwinPreTrainedModel.checkpoint_adapter
        if adapter is not None and pretrained_model_name_or_path is not None and "state_dict" not in kwargs:
            converted = adapter(cls, pretrained_model_name_or_path, kwargs)
            if converted is not None:
                config, kwargs["state_dict"] = converted
                kwargs.setdefault("config", config)
                pretrained_model_name_or_path = None
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class SwinModel(SwinPreTrainedModel):
    """The Swin encoder: embeddings, stages, final LayerNorm and (optionally) average pooling.

    Example:
        >>> import torch
        >>> from swin_hf import SwinConfig, SwinModel
        >>> model = SwinModel(SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)).eval()
        >>> out = model(torch.randn(1, 3, 64, 48))
        >>> tuple(out.last_hidden_state.shape), tuple(out.pooler_output.shape)
        ((1, 48, 32), (1, 32))
    """

    def __init__(self, config: SwinConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config)
        self.num_features, self.add_pooling_layer = config.hidden_size, add_pooling_layer
        self.embeddings = SwinEmbeddings(config, use_mask_token=use_mask_token)
        total = sum(config.depths)  # stochastic depth rises linearly from 0 to drop_path_rate over all blocks
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(config.depths[:s]) for s in range(len(config.depths))]
        self.stages = nn.ModuleList(
            SwinStage(config, s, rates[start : start + depth]) for s, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.norm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.proj

    def forward(
        self, pixel_values: torch.Tensor, output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None, always_partition: bool = False, hidden_states_before_downsampling: bool = False,
        interpolate_pos_encoding: bool | None = None, bool_masked_pos: torch.Tensor | None = None, **kwargs,
    ) -> SwinModelOutput | tuple:  # fmt: skip
        """pixel_values: (B, num_channels, H, W) floats, any H and W of at least one patch.
        `always_partition` never shrinks the window to a small map (detection-style padding);
        `hidden_states_before_downsampling` records each stage's map before its patch merging (backbones);
        `interpolate_pos_encoding` is accepted for transformers compatibility (the absolute position
        embedding is always resized to the input's grid); `bool_masked_pos` (B, num_patches): patches
        replaced by the mask token (needs `use_mask_token`)."""
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict

        x = self.embeddings(pixel_values, bool_masked_pos)  # (B, H/4, W/4, C)
        maps, attentions = [x], []
        for stage in self.stages:
            x, before_downsampling, weights = stage(x, always_partition, output_attentions)
            maps.append(before_downsampling if hidden_states_before_downsampling else x)
            attentions.append(weights)
        B, H, W, C = x.shape
        last_hidden_state = self.norm(x.reshape(B, H * W, C))  # (B, L, C)
        pooled = last_hidden_state.mean(dim=1) if self.add_pooling_layer else None  # (B, C)
        hidden_states = tuple(m.reshape(B, -1, m.shape[-1]) for m in maps) if output_hidden_states else None  # (B, L_i, C_i)
        reshaped = tuple(m.permute(0, 3, 1, 2) for m in maps) if output_hidden_states else None  # (B, C_i, H_i, W_i)
        attentions = tuple(attentions) if output_attentions else None
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled, hidden_states, attentions, reshaped) if v is not None)
        return SwinModelOutput(last_hidden_state, pooled, hidden_states, attentions, reshaped)


# ---- 7. Heads -------------------------------------------------------------------------------------


class SwinForImageClassification(SwinPreTrainedModel):
    """SwinModel + a linear classifier on the pooled features.

    Example:
        >>> import torch
        >>> from swin_hf import SwinConfig, SwinForImageClassification
        >>> config = SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=3)
        >>> model = SwinForImageClassification(config).eval()
        >>> out = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2]))
        >>> tuple(out.logits.shape), out.loss.ndim
        ((2, 3), 0)
    """

    def __init__(self, config: SwinConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.swin = SwinModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None, **kwargs,
    ) -> SwinImageClassifierOutput | tuple:  # fmt: skip
        """labels: (B,) class indices (single label), (B, num_labels) multi-hot floats (multi label), or
        (B,) / (B, num_labels) targets (regression); see `config.problem_type`. `num_items_in_batch`
        (transformers' Trainer under gradient accumulation): the loss is summed and divided by it
        instead of averaged over this batch."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.swin(pixel_values, output_attentions, output_hidden_states, return_dict=True, **kwargs)
        logits = self.classifier(out.pooler_output)  # (B, num_labels)
        loss = None if labels is None else classification_loss(logits, labels, self.config, num_items_in_batch)
        rest = (out.hidden_states, out.attentions, out.reshaped_hidden_states)
        if not return_dict:
            return tuple(v for v in (loss, logits, *rest) if v is not None)
        return SwinImageClassifierOutput(loss, logits, *rest)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: SwinConfig, num_items_in_batch=None):
    """The loss `config.problem_type` names (inferred from num_labels and the label dtype when unset; the
    config is not modified), averaged over the batch's items, or summed and divided by `num_items_in_batch`
    (the label elements of all the batches of one accumulated step)."""
    problem = config.problem_type
    if problem is None:
        integer = labels.dtype in (torch.long, torch.int)
        problem = "regression" if config.num_labels == 1 else f"{'single' if integer else 'multi'}_label_classification"
    labels = labels.to(logits.device)
    reduction = "mean" if num_items_in_batch is None else "sum"
    if problem == "regression":  # (one label: logits (B, 1) against labels (B,))
        prediction = logits.squeeze(-1) if config.num_labels == 1 else logits
        loss = F.mse_loss(prediction, labels.to(logits.dtype).view_as(prediction), reduction=reduction)
    elif problem == "single_label_classification":
        loss = F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1), reduction=reduction)
    elif problem == "multi_label_classification":
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction=reduction)
    else:
        raise ValueError(f"config.problem_type={problem!r}: use 'single_label_classification', 'multi_label_classification' or 'regression'.")
    if num_items_in_batch is not None:
        loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device).to(loss.dtype)
    return loss


class SwinBackbone(BackboneMixin, SwinPreTrainedModel):
    """Multi-scale NCHW feature maps (strides 4, 8, 16, 32) for dense heads (UperNet, Mask2Former, DETR...).

    Each stage in `config.out_features` ("stem", "stage1".."stage4") is taken before its patch merging
    and normalised by its own LayerNorm. Windows are never shrunk (detection-style padding). Swin V2: the
    maps as the blocks leave them, windows as in the classifier (transformers' Swinv2Backbone does so).

    Example:
        >>> import torch
        >>> from swin_hf import SwinBackbone, SwinConfig
        >>> config = SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
        ...                     out_features=["stage1", "stage2"])
        >>> maps = SwinBackbone(config)(torch.randn(1, 3, 64, 64)).feature_maps
        >>> [tuple(m.shape) for m in maps]
        [(1, 16, 16, 16), (1, 32, 8, 8)]
    """

    def __init__(self, config: SwinConfig):
        super().__init__(config)
        self.num_features = [config.embed_dim] + [config.embed_dim * 2**i for i in range(len(config.depths))]
        self.swin = SwinModel(config, add_pooling_layer=False)
        # The final LayerNorm feeds only the classification path: it stays in the state dict (checkpoints of
        # either library keep loading) but is frozen, since DDP refuses a parameter that gets no gradient.
        self.swin.norm.requires_grad_(False)
        norm = (lambda c: nn.Identity()) if config.version == 2 else (lambda c: nn.LayerNorm(c, eps=config.layer_norm_eps))
        self.hidden_states_norms = nn.ModuleDict({stage: norm(c) for stage, c in zip(self.out_features, self.channels)})
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
        output_attentions: bool | None = None, return_dict: bool | None = None, **kwargs,
    ) -> BackboneOutput | tuple:  # fmt: skip
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        out = self.swin(
            pixel_values, output_attentions, output_hidden_states=True, return_dict=True,
            always_partition=self.config.version == 1,  # as transformers' SwinBackbone / Swinv2Backbone
            hidden_states_before_downsampling=True,
        )  # fmt: skip
        maps = zip(self.stage_names, out.reshaped_hidden_states)
        norms = self.hidden_states_norms
        feature_maps = tuple(norms[s](m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous() for s, m in maps if s in norms)
        hidden_states = out.reshaped_hidden_states if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (feature_maps, hidden_states, out.attentions) if v is not None)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=out.attentions)


__all__ = ["MASKED_LOGIT", "PatchMerging", "SwinBackbone", "SwinBlock", "SwinForImageClassification", "SwinModel",
           "SwinImageClassifierOutput", "SwinModelOutput", "SwinPreTrainedModel", "WindowAttention", "cached_geometry",
           "classification_loss", "log_spaced_offsets", "relative_position_index", "shifted_window_mask", "window_geometry"]
