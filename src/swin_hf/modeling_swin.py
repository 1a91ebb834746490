"""Swin Transformer: Hierarchical Vision Transformer using Shifted Windows (Liu et al., ICCV 2021).

Read top to bottom:
  0. TokenLinear       - the per-token linear layer, routed to oneDNN on CPU (in inference on weights
                         reordered once)
  1. window geometry   - window_partition / window_reverse, the relative position index, the SW-MSA mask
  2. WindowAttention   - W-MSA / SW-MSA with the learned relative position bias B (on CUDA spelled out;
                         in CPU inference spelled out over cache-sized chunks of windows)
  3. SwinBlock         - LN -> (S)W-MSA -> residual, LN -> MLP -> residual
  4. PatchMerging      - 2x2 neighbourhood concat, LN, linear 4C -> 2C
  5. SwinStage         - blocks alternating W-MSA / SW-MSA, then patch merging
  6. SwinModel         - patch partition + linear embedding, four stages, final LN + average pool
  7. heads             - SwinForImageClassification, SwinBackbone

Inside the encoder, feature maps stay channels-last, (B, H, W, C); sequences (B, H*W, C) appear only at
the API boundary. Self-contained on purpose (it imports only configuration_swin from this package):
`save_pretrained` copies it next to the weights so `trust_remote_code=True` works without swin_hf.
"""

from __future__ import annotations

import functools
import math
import platform
import shutil
import weakref
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN, GELUActivation
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput
from transformers.utils import ModelOutput

from .configuration_swin import SwinConfig

# SW-MSA: logits between tokens from different regions of a cyclically shifted window get this added
# (the official code's value; exp(-100) is zero in fp32 and bf16 alike).
MASKED_LOGIT = -100.0


def _cpu_inference(x: torch.Tensor) -> bool:
    """A CPU forward with autograd off, outside torch.compile / export tracing: where the CPU-only choices
    below (sample groups, chunked attention) apply. Callers also require eval mode."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()


# --------------------------------------------------------------------------------------------------
# 0. The per-token linear layer. Every matrix product of a Swin block (qkv, proj, fc1, fc2, patch
#    merging's reduction) maps (..., K) -> (..., N) over channels-last tokens.
# --------------------------------------------------------------------------------------------------


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(..., K) tokens -> (1, K, tokens, 1): the same memory seen as a channels-last image (a view when
    x is contiguous), the layout in which a 1x1 convolution is exactly a per-token matrix product."""
    return x.reshape(1, -1, 1, x.shape[-1]).permute(0, 3, 1, 2)


# On CPU, PyTorch sends F.linear to MKL's sgemm, which on AMD Zen 5 runs at under half the speed of
# oneDNN (fp32, 2 threads: 180-210 vs 360-470 GFLOP/s; on Zen 4, whose AVX-512 units are half as wide,
# both reach ~190 and oneDNN is 1.0-1.3x faster; BENCHMARKS.md). A 1x1 convolution over channels-last
# memory is the same product and runs on oneDNN. Products smaller than this many multiply-adds stay on
# F.linear (oneDNN's per-call set-up costs more than it saves there: 8 tokens x 768 -> 1000 is 1.4x
# (2 threads) to 2.5x (1 thread) faster on F.linear). Measured on x86 only; other CPUs keep F.linear.
ONEDNN_MIN_MACS = 1 << 24
_ONEDNN_CPU = torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64")


def _onednn_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype in which x @ weight^T runs on oneDNN (autocast's, if on), or None: use F.linear."""
    if not _ONEDNN_CPU or x.device.type != "cpu":
        return None
    if x.numel() // max(x.shape[-1], 1) * weight.numel() < ONEDNN_MIN_MACS:
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    return dtype if dtype in (torch.float32, torch.bfloat16) else None


# oneDNN reorders a plain weight into its own blocked layout on every call; for a product over few tokens
# that costs as much as the product (Swin-T at batch 1: stage 4 fc1, 49 tokens x 768 -> 3072, 1.8 ms
# plain, 1.1 ms with the weight reordered beforehand). In inference (eval mode, autograd off) each
# weight is therefore reordered once and the copy kept until the weight changes (in-place update, new
# storage, other dtype) or the model trains again (drop_inference_caches). It costs one extra copy of
# the product weights while a model serves; False turns it off.
PACK_INFERENCE_WEIGHTS = True
_PACKED: WeakIdKeyDictionary = WeakIdKeyDictionary()  # weight -> ((version, address, dtype), packed)


def _packed_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """weight in oneDNN's layout for the matmul, made on first use and cached; None where not applicable."""
    if not PACK_INFERENCE_WEIGHTS or weight.is_inference():  # (inference tensors carry no version counter)
        return None
    stamp = (weight._version, weight.data_ptr(), dtype)
    entry = _PACKED.get(weight)
    if entry is None or entry[0] != stamp:
        with torch.inference_mode(False), torch.no_grad():
            entry = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), 1024))
        _PACKED[weight] = entry
    return entry[1]


def token_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, pack: bool = False
) -> torch.Tensor:
    """x @ weight^T + bias over the last dim: (..., K) -> (..., N), weight (N, K). Same math as F.linear.

    `pack`: an inference product (a model in eval mode, autograd off), which may use the weight's cached
    reordered copy; never in training, where the weights change every step.
    """
    if torch.compiler.is_compiling():
        return _traced_token_linear(x, weight, bias, pack)
    return _eager_token_linear(x, weight, bias, pack)


def _eager_token_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool = False):
    """token_linear's product: oneDNN (a 1x1 convolution, or with `pack` the matmul on a cached reordered
    weight) or F.linear, as _onednn_dtype and _packed_weight decide."""
    dtype = _onednn_dtype(x, weight)
    if dtype is None:
        return F.linear(x, weight, bias)
    b = None if bias is None else bias.to(dtype)
    packed = _packed_weight(weight, dtype) if pack else None
    if packed is not None:
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).to(dtype), packed, b, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])
    w = weight.to(dtype)[:, :, None, None]  # (N, K, 1, 1)
    # oneDNN's convolution directly: conv2d's own dispatch picks a slower kernel for it at 1 thread
    out = torch.ops.aten.mkldnn_convolution(_as_map(x.to(dtype)), w, b, [0, 0], [1, 1], [1, 1], 1)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])  # (1, N, tokens, 1) channels-last


def token_linear_backward(
    grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients of token_linear(x, weight, bias) given grad = dL/d(output), (..., N):
    (dL/dx (..., K), dL/dweight (N, K), dL/dbias (N,) or None), computed in grad's dtype."""
    x, weight = x.to(grad.dtype), weight.to(grad.dtype)
    if _onednn_dtype(x, weight) is None:
        g, t = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])  # (tokens, N), (tokens, K)
        return grad @ weight, g.t() @ t, g.sum(0) if has_bias else None
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        _as_map(grad), _as_map(x), weight[:, :, None, None], [weight.shape[0]] if has_bias else None,
        [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, has_bias],
    )  # fmt: skip
    return grad_x.permute(0, 2, 3, 1).reshape(x.shape), grad_w.view(weight.shape), grad_b


def _traced_token_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool = False
) -> torch.Tensor:
    """token_linear as torch.compile / torch.export see it.

    Traced, F.linear becomes Inductor's MKL sgemm and a 1x1 convolution Inductor's own convolution
    (compiled Swin-T inference on Zen 5: 16.2 and 12.6 images/s, against eager's 25). So torch.compile on
    an x86 CPU gets the opaque op swin_hf::token_linear, which runs the eager oneDNN product (or F.linear,
    by size) while Inductor fuses everything around it (28-30 images/s); for `pack` (inference: eval mode,
    autograd off, which the compiled graph is guarded on) swin_hf::token_linear_inference, the same on
    the weight's cached reordered copy (compiled Swin-T at batch 1 on Zen 4: 102 -> 81 ms). Export,
    autocast and other devices trace F.linear, which exports as a plain MatMul and which autocast knows
    how to cast.
    """
    if _TOKEN_LINEAR_OPS is None or _exporting() or x.device.type != "cpu":
        return F.linear(x, weight, bias)
    if torch.is_autocast_enabled("cpu") or x.dtype not in (torch.float32, torch.bfloat16):
        return F.linear(x, weight, bias)
    return _TOKEN_LINEAR_OPS[pack](x, weight, bias)


def _exporting() -> bool:
    """torch.export is tracing (not torch.compile). Dynamo folds torch.compiler.is_exporting() to True
    under torch.compile too in torch 2.7-2.8 (not in 2.13), so the flag it returns is read directly where
    that flag exists. (In torch 2.7 a strict export does not see the flag either: one reason pyproject.toml
    asks for torch >= 2.8.)"""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else flag


def _define_token_linear_ops():
    """Register swin_hf::token_linear (forward, shapes for tracing, gradient) and
    swin_hf::token_linear_inference (no gradient) once per process: (token_linear, token_linear_inference).

    A second copy of this file (a checkpoint loaded with trust_remote_code next to an installed
    swin_hf) reuses the registered ops instead of registering them again. Their schemas never change:
    a copy saved by another version of swin_hf may be the one that registered them.
    """
    if not _ONEDNN_CPU:
        return None
    ops = []
    for name, pack in (("token_linear", False), ("token_linear_inference", True)):
        if hasattr(torch.ops.swin_hf, name):
            ops.append(getattr(torch.ops.swin_hf, name))
            continue
        op = torch.library.custom_op(
            f"swin_hf::{name}", functools.partial(_token_linear_impl, pack=pack), mutates_args=(),
            schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
        )  # fmt: skip
        op.register_fake(lambda x, weight, bias: x.new_empty(*x.shape[:-1], weight.shape[0]))
        if not pack:
            _register_token_linear_gradient(op)
        ops.append(getattr(torch.ops.swin_hf, name))
    return tuple(ops)


def _token_linear_impl(x, weight, bias, pack: bool):
    # the forward of a compiled graph runs with autograd off in training too: `pack` comes from the trace
    return _eager_token_linear(x, weight, bias, pack)


def _register_token_linear_gradient(forward) -> None:
    def backward_impl(grad, x, weight, has_bias):
        grad_x, grad_w, grad_b = token_linear_backward(grad, x, weight, has_bias)
        return grad_x, grad_w, grad_b if has_bias else grad.new_empty(0)

    backward = torch.library.custom_op(
        "swin_hf::token_linear_backward", backward_impl, mutates_args=(),
        schema="(Tensor grad, Tensor x, Tensor weight, bool has_bias) -> (Tensor, Tensor, Tensor)",
    )  # fmt: skip

    @backward.register_fake
    def _(grad, x, weight, has_bias):
        return grad.new_empty(x.shape), grad.new_empty(weight.shape), grad.new_empty(weight.shape[0] if has_bias else 0)

    def save(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    def gradient(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_w, grad_b = backward(grad, x, weight, ctx.has_bias)
        return grad_x, grad_w, grad_b if ctx.has_bias else None

    forward.register_autograd(gradient, setup_context=save)


_TOKEN_LINEAR_OPS = _define_token_linear_ops()


class TokenLinear(nn.Linear):
    """nn.Linear (same parameters, same checkpoints) whose product runs through token_linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return token_linear(x, self.weight, self.bias, pack=not (self.training or torch.is_grad_enabled()))


# --------------------------------------------------------------------------------------------------
# 1. Window geometry. Pure functions of sizes; cached per size, never stored in checkpoints.
# --------------------------------------------------------------------------------------------------


def window_partition(x: torch.Tensor, window: int, shift: int = 0) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, window*window, C), windows in row-major order. H, W multiples of window.

    With `shift`, the map is first cyclically shifted by -shift along H and W (SW-MSA). Either way this
    is a single copy: the shift and the partition are one gather of tokens in the order
    `shifted_window_order` gives (torch.roll over two dims alone would copy twice).
    """
    B, H, W, C = x.shape
    if shift:
        order = shifted_window_order(H, W, window, shift, False, x.device)  # (H*W,)
        return x.reshape(B, H * W, C).index_select(1, order).view(B, -1, window * window, C)
    x = x.view(B, H // window, window, W // window, window, C)
    return x.transpose(2, 3).reshape(B, (H // window) * (W // window), window * window, C)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int, shift: int = 0) -> torch.Tensor:
    """(B, nW, window*window, C) -> (B, H, W, C); the inverse of window_partition (one copy)."""
    B, _, _, C = windows.shape
    if shift:
        order = shifted_window_order(height, width, window, shift, True, windows.device)  # (H*W,)
        return windows.reshape(B, height * width, C).index_select(1, order).view(B, height, width, C)
    x = windows.view(B, height // window, width // window, window, window, C)
    return x.transpose(2, 3).reshape(B, height, width, C)


def _cached_geometry(build):
    """Cache a tensor-building function per (sizes, device).

    Built tensors are ordinary (not inference-mode) tensors, so a mask made under `torch.inference_mode`
    can later serve a training step. Under torch.compile / export the builder is traced directly.
    """
    cached = functools.lru_cache(maxsize=128)(build)

    @functools.wraps(build)
    def get(*args):
        if torch.compiler.is_compiling():
            return build(*args)
        with torch.inference_mode(False), torch.no_grad():
            return cached(*args)

    get.cache_clear, get.cache_info = cached.cache_clear, cached.cache_info
    return get


@_cached_geometry
def relative_position_index(window: int, table_window: int, device: torch.device) -> torch.Tensor:
    """Index into the (2M-1)^2 bias table for every (query, key) pair of a window: (N, N), N = window^2.

    The table is learned for windows of side M = table_window; a smaller window (a feature map smaller
    than M) reads the centre of the table: exactly the offsets that occur.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window, device=device), torch.arange(window, device=device), indexing="ij")
    ).flatten(1)  # (2, N)
    offset = coords[:, :, None] - coords[:, None, :] + (table_window - 1)  # (2, N, N), each in [0, 2M-2]
    return offset[0] * (2 * table_window - 1) + offset[1]  # (N, N)


@_cached_geometry
def shifted_window_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive SW-MSA mask, (nW, N, N): 0 within a region, MASKED_LOGIT across regions.

    After the cyclic shift by `shift`, the last row/column band of windows holds tokens from up to three
    regions per axis that were not adjacent in the image: [0, H-window), [H-window, H-shift), [H-shift, H).
    """

    def region(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device)
        return (i >= n - window).long() + (i >= n - shift).long()

    label = region(height)[:, None] * 3 + region(width)[None, :]  # (H, W)
    label = window_partition(label[None, :, :, None], window)[0, :, :, 0]  # (nW, N)
    different = label[:, None, :] != label[:, :, None]  # (nW, N, N)
    return different.float() * MASKED_LOGIT


@_cached_geometry
def shifted_window_order(
    height: int, width: int, window: int, shift: int, inverse: bool, device: torch.device
) -> torch.Tensor:
    """(H*W,) token indices. Forward: the flat position in the image of each token of the shifted
    windows, in window order. Inverse: the place in window order of each image position."""
    if inverse:  # the inverse of a permutation is its argsort (materialised under torch.compile too:
        # Inductor fusing a rolled index into the gather fails for dynamic shapes, torch 2.13)
        return torch.argsort(shifted_window_order(height, width, window, shift, False, device))
    position = torch.arange(height * width, device=device).view(1, height, width, 1)
    position = torch.roll(position, shifts=(-shift, -shift), dims=(1, 2))
    return window_partition(position, window).flatten()


def window_geometry(height: int, width: int, window_size: int, always_partition: bool) -> tuple[int, int]:
    """(window, shift) for a stage whose feature map is height x width.

    As in the official code, a map not larger than the window is attended as one window of its
    smaller side, unshifted. `always_partition` (the official detection code, transformers'
    SwinBackbone) keeps the full window and the shift and pads the map instead.
    """
    if not always_partition and min(height, width) <= window_size:
        return min(height, width), 0
    return window_size, window_size // 2


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def residual(x: torch.Tensor, branch, drop_path: float, training: bool, skip_dropped: bool = True) -> torch.Tensor:
    """x + DropPath(branch(x)): a residual connection with stochastic depth (Huang et al., 2016).

    In training each sample's branch is dropped with probability p = drop_path, and kept ones are
    scaled by 1/(1-p). A dropped branch adds exactly zero and receives exactly zero gradient, so on CPU
    the branch runs on the kept samples only (`skip_dropped`): the same outputs and gradients for a
    fraction p less work. On other devices (choosing the samples there would wait for the device) and
    under torch.compile (which wants fixed shapes) every sample runs and dropped ones are zeroed.
    """
    if drop_path == 0.0 or not training:
        return x + branch(x)
    scale = 1.0 / (1.0 - drop_path)
    keep = x.new_empty(x.shape[0]).bernoulli_(1.0 - drop_path)  # (B,) 1 = kept
    if not skip_dropped or x.device.type != "cpu" or torch.compiler.is_compiling():
        return x + branch(x) * keep.mul_(scale).view(-1, *(1,) * (x.ndim - 1))
    kept = keep.nonzero().flatten()  # (k,)
    if len(kept) == len(x):
        return x.add(branch(x), alpha=scale)
    if len(kept) == 0:
        # every sample drops it: run it on one sample, times zero, so that its parameters still get
        # (zero) gradients as in the usual form; optimizers (momentum, weight decay) and DDP expect them
        return x + branch(x[:1]) * 0.0
    out = branch(x.index_select(0, kept))  # (k, ...)
    return x.index_add(0, kept, out.to(x.dtype), alpha=scale)


# --------------------------------------------------------------------------------------------------
# 2. Window attention (W-MSA, and SW-MSA when given the shift mask)
# --------------------------------------------------------------------------------------------------


class _SplitHeads(torch.autograd.Function):
    """Fused qkv (B, nW, N, 3*h*d) -> q * scale, k, v, each (B, nW, h, N, d), views of one new tensor.

    One copy, with the 1/sqrt(d) scaling folded into it (q is scaled instead of the N x N logits).
    Autograd's backward of permute + unbind would stack the three gradients into a new tensor and then
    copy the stack back to the token layout; here they are written into the token layout directly,
    q's scaled on the way: one pass over the largest activations of stage 1 instead of two.
    """

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int, scale: float):
        B, nW, N, C3 = qkv.shape
        ctx.shape, ctx.scale = (B, nW, N, 3, heads, C3 // (3 * heads)), scale
        tokens = qkv.view(ctx.shape).permute(3, 0, 1, 4, 2, 5)  # (3, B, nW, h, N, d) view
        split = qkv.new_empty(tokens.shape)
        _copy_scaled(split[0], tokens[0], scale)
        split[1:].copy_(tokens[1:])
        return split.unbind(0)

    @staticmethod
    def backward(ctx, *grads):
        # (autograd hands a Function zeros, never None, for an output that got no gradient)
        grad = grads[0].new_empty(ctx.shape)  # (B, nW, N, 3, h, d)
        for i, g in enumerate(grads):
            target = grad.select(3, i).transpose(2, 3)  # (B, nW, h, N, d) view
            _copy_scaled(target, g, ctx.scale) if i == 0 else target.copy_(g)
        return grad.flatten(3), None, None


def _copy_scaled(target: torch.Tensor, source: torch.Tensor, scale: float) -> None:
    """target[...] = source * scale, in one pass into a strided view (Dynamo refuses out= into a
    non-contiguous tensor, so traced it is two steps, which Inductor fuses)."""
    if torch.compiler.is_compiling():
        target.copy_(source * scale)
    else:
        torch.mul(source, scale, out=target)


# In CPU inference attention runs spelled out over chunks of windows whose N x N logits (fp32) fill about
# this many floats (1 MiB), so that logits and probabilities stay in cache between the three steps.
# PyTorch's CPU SDPA kernel does the same arithmetic, but its per-(window, head) set-up costs more than
# the 49 x 49 x 32 products it wraps (Swin-T, batch 8, all attention calls: 0.67-0.69x SDPA's time;
# whole inference step 0.92x in fp32, 0.94x in bf16; batch 1 unchanged). False: SDPA everywhere.
CHUNKED_INFERENCE_ATTENTION = True
ATTENTION_CHUNK_LOGITS = 1 << 18


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v, without autograd, in chunks along dim 0: q, k, v (A, h, N, d) with q already
    scaled, bias (1, h, N, N) -> (A, h, N, d). Logits, bias and softmax in fp32; the products in q's dtype
    (bf16 under autocast: its logits are rounded to bf16 before the fp32 softmax)."""
    A, h, N, _ = q.shape
    out = torch.empty_like(q)
    step = max(1, ATTENTION_CHUNK_LOGITS // (h * N * N))
    k_t, bias = k.transpose(-2, -1), bias.float()  # (WindowAttention passes an fp32 bias: no copy)
    for i in range(0, A, step):
        c = slice(i, i + step)
        logits = torch.matmul(q[c], k_t[c]).float().add_(bias)  # (c, h, N, N)
        torch.matmul(torch.softmax(logits, -1).to(q.dtype), v[c], out=out[c])
    return out


# On a CUDA GPU attention is spelled out (q k^T + bias, softmax, @ v), as in training: for 49-token
# windows with head dim 32, SDPA's kernels are built for long sequences. On an H200 (torch 2.11, Swin-T
# bf16 inference, batch 256) SDPA ran 5 of the 12 calls on cuDNN's flash kernel at ~1.1 ms each and 7 on its
# fp32 math fallback; spelled out, the whole step is 1.17x as fast eager (6420 vs 5468 images/s) and 1.10x
# compiled (11511 vs 10452; Inductor fuses the bias into the softmax). BENCHMARKS.md, "GPU". False: SDPA.
SPELLED_CUDA_ATTENTION = True


_BIAS_HOLDERS: weakref.WeakSet = weakref.WeakSet()  # WindowAttentions holding an inference bias


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, plus a learned relative position bias B.

    Attention(Q, K, V) = SoftMax(QK^T / sqrt(d) + B [+ mask]) V, B gathered from a (2M-1)^2 x heads table.
    """

    def __init__(self, config: SwinConfig, dim: int, num_heads: int):
        super().__init__()
        self.config = config  # read at call time: `attn_implementation` can change after construction
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.window_size = config.window_size
        self.qkv = TokenLinear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = TokenLinear(dim, dim)
        self.attn_drop = config.attention_probs_dropout_prob
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)
        M = config.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * M - 1) ** 2, num_heads))
        self._inference_bias = None  # (stamp, mask, bias): see attention_bias

    def relative_position_bias(self, window: int) -> torch.Tensor:
        """B for windows of side `window`: (heads, N, N)."""
        index = relative_position_index(window, self.window_size, self.relative_position_bias_table.device)
        N = window * window
        return self.relative_position_bias_table[index.view(-1)].view(N, N, -1).permute(2, 0, 1)

    def attention_bias(self, window: int, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """What is added to the logits: B, (1, h, N, N) for W-MSA; B + mask, (1, nW*h, N, N) for SW-MSA
        (bias and mask differ per window, not per sample: windows are folded into the heads, so it
        broadcasts over the batch instead of being copied per sample).

        In inference (eval mode, autograd off, not traced) it is built once and kept while the table,
        the window, the mask and the dtype stay the same (and until drop_inference_caches): a forward
        over sample groups (SwinStage) or a stream of same-size images reuses it instead of gathering and
        adding it again per call."""
        table = self.relative_position_bias_table
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling() or table.is_inference():
            return self._build_attention_bias(window, mask, dtype)
        stamp = (table._version, table.data_ptr(), window, dtype)
        cached = self._inference_bias
        if cached is None or cached[0] != stamp or cached[1] is not mask:
            cached = self._inference_bias = (stamp, mask, self._build_attention_bias(window, mask, dtype))
            _BIAS_HOLDERS.add(self)
        return cached[2]

    def _build_attention_bias(self, window: int, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        bias = self.relative_position_bias(window)  # (h, N, N)
        if mask is None:
            return bias.unsqueeze(0).to(dtype)
        N = window * window
        return (bias.unsqueeze(0) + mask.unsqueeze(1)).reshape(1, -1, N, N).to(dtype)  # (1, nW*h, N, N)

    def forward(
        self, x: torch.Tensor, window: int, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, nW, N, C) windows; mask: (nW, N, N) for SW-MSA. Returns (B, nW, N, C) and, if asked,
        the attention probabilities (B*nW, heads, N, N)."""
        B, nW, N, C = x.shape
        h, d = self.num_heads, self.head_dim
        # one fused projection, split into heads by one copy, so that every reshape below is a view
        q, k, v = _SplitHeads.apply(self.qkv(x), h, self.scale)  # each (B, nW, h, N, d), q scaled

        # W-MSA: one bias for every window -> fold windows into the batch; SW-MSA: into the heads
        q, k, v = (t.view(B * nW, h, N, d) if mask is None else t.view(B, nW * h, N, d) for t in (q, k, v))
        bias_needs_grad = torch.is_grad_enabled() and self.relative_position_bias_table.requires_grad
        explicit = (
            need_weights
            or bias_needs_grad
            or self.config._attn_implementation == "eager"
            or (q.is_cuda and SPELLED_CUDA_ATTENTION)
        )
        chunked = not explicit and CHUNKED_INFERENCE_ATTENTION and not self.training and _cpu_inference(q)
        bias = self.attention_bias(window, mask, torch.float32 if chunked else q.dtype)  # (1, h or nW*h, N, N)

        dropout = self.attn_drop if self.training else 0.0
        weights = None
        if explicit:
            # Spelled out: on a CUDA GPU (SPELLED_CUDA_ATTENTION), and whenever B is being trained. SDPA
            # cannot return the gradient of its additive mask, so it would fall back to a math path that
            # also saves scaled copies of q and k; here only q, k, v (one storage) and the probabilities
            # are saved, and the N x N logits are biased in place.
            logits = (q @ k.transpose(-2, -1)).add_(bias)  # (..., N, N)
            # in the logits' dtype: the kernels accumulate bf16/fp16 in fp32 anyway, and an fp32 result
            # would be kept for backward next to its cast (bf16 training on CPU: -14% step peak memory).
            # aten::_softmax is the op softmax runs; unlike softmax it is not on CUDA autocast's fp32 list.
            probs = torch._softmax(logits, -1, False)
            out = (F.dropout(probs, dropout, self.training) if dropout else probs) @ v
            weights = probs.view(B * nW, h, N, N) if need_weights else None
        elif chunked:
            out = chunked_attention(q, k, v, bias)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=1.0)  # q is scaled

        out = out.view(B, nW, h, N, d).transpose(2, 3).reshape(B, nW, N, C)
        return self.proj_drop(self.proj(out)), weights


# --------------------------------------------------------------------------------------------------
# 3. Swin block
# --------------------------------------------------------------------------------------------------


# On CPU the MLP runs over tiles of this many tokens, so that a tile's 4C-wide intermediates (fc1's
# output, the activation and their gradients: 4096 x 4C floats, 6-25 MB) stay in cache from one
# product to the next instead of going out to memory and back (Swin-T's stage-1 MLP, forward +
# backward at batch 8: 97 -> 59 ms). On other devices a single tile holds all tokens.
MLP_TILE_TOKENS = 4096


def _tiles(num_tokens: int, device: torch.device) -> list[slice]:
    step = MLP_TILE_TOKENS if device.type == "cpu" else max(num_tokens, 1)
    return [slice(i, i + step) for i in range(0, num_tokens, step)]


def _mlp_forward(tokens, norm, w1, b1, act, w2, b2, keep_hidden: bool, pack: bool = False):
    """fc2(act(fc1(norm(tokens)))) tile by tile: (T, C) -> (T, C), the tiles of h = fc1(norm(tokens)),
    (tile, 4C) each, if `keep_hidden`, and the dtype norm's output came in (under CUDA's autocast fp32,
    under CPU's the input's). Under autocast the outputs come in the autocast dtype, as from nn.Linear.
    `pack`: inference products (token_linear)."""
    out, hidden = None, []
    for t in _tiles(len(tokens), tokens.device):
        n = norm(tokens[t])  # (tile, C)
        h = token_linear(n, w1, b1, pack)  # (tile, 4C)
        out_t = token_linear(act(h), w2, b2, pack)  # (tile, C)
        if keep_hidden:
            hidden.append(h)
        if t.start == 0 and t.stop >= len(tokens):  # a single tile: its output is the output
            return out_t, hidden, n.dtype
        if out is None:  # the dtype is known now
            out = out_t.new_empty(len(tokens), out_t.shape[1])
        out[t] = out_t
    return out, hidden, n.dtype


def _activation_with_gradient(act: nn.Module, h: torch.Tensor, exact_gelu: bool):
    """act(h) recomputed, and the map from dL/d act(h) to dL/dh: exact GELU's own backward kernel, or
    autograd over a one-op graph for any other activation."""
    if exact_gelu:
        return F.gelu(h), lambda grad: torch.ops.aten.gelu_backward(grad, h)
    with torch.enable_grad():
        h_t = h.detach().requires_grad_()
        a = act(h_t)
    return a.detach(), lambda grad: torch.autograd.grad(a, h_t, grad)[0]


class _LeanMLP(torch.autograd.Function):
    """fc2(act(fc1(LayerNorm(x)))) in tiles, saving only x and h = fc1(LayerNorm(x)) for backward.

    Plain autograd keeps x (for the norm), LayerNorm(x) (for fc1), h (for act) and act(h) (for fc2):
    1 + 1 + 4 + 4 floats of width C per token, the largest activations of a Swin block. Here the
    two cheap elementwise results, LayerNorm(x) and act(h), are recomputed tile by tile in backward
    instead: the matrix products are never recomputed, and 5 of the 10 are not kept.
    """

    @staticmethod
    def forward(ctx, x, norm: nn.LayerNorm, norm_weight, norm_bias, w1, b1, act: nn.Module, w2, b2):
        tokens = x.reshape(-1, x.shape[-1])
        out, hidden, ctx.norm_dtype = _mlp_forward(tokens, norm, w1, b1, act, w2, b2, keep_hidden=True)
        ctx.eps, ctx.act = norm.eps, act
        ctx.exact_gelu = isinstance(act, GELUActivation) and act.act is F.gelu  # config.hidden_act "gelu"
        ctx.save_for_backward(x, norm_weight, norm_bias, w1, w2, *hidden)  # h kept as its tiles: no copy
        return out.view(*x.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad):
        x, norm_weight, norm_bias, w1, w2, *hidden = ctx.saved_tensors
        C = x.shape[-1]
        tokens, grad = x.reshape(-1, C), grad.reshape(-1, C)  # (T, C), (T, C)
        params = (norm_weight, norm_bias, w1, w1, w2, w2)  # dtypes of the gradients returned below
        tiles = _tiles(len(tokens), x.device)
        grad_x, param_grads = torch.empty_like(tokens) if len(tiles) > 1 else None, None
        # LayerNorm is recomputed in the dtype it ran in forward. Where that is not x's, an autocast ran it
        # in fp32 (CUDA's does; CPU's leaves it in x's dtype) and cast all its inputs: so is it here.
        weight, bias = norm_weight, norm_bias
        if ctx.norm_dtype != x.dtype:
            weight, bias = weight.to(ctx.norm_dtype), bias.to(ctx.norm_dtype)
        for t, h in zip(tiles, hidden):
            # recompute the two cheap intermediates, LayerNorm(x) and act(h). Their gradients come from the
            # ops' own backward kernels, the ones autograd would call, without building and walking a
            # graph per tile (Python that a GPU step waits for).
            x_t = tokens[t].to(ctx.norm_dtype)  # (tile, C)
            n, mean, rstd = torch.native_layer_norm(x_t, (C,), weight, bias, ctx.eps)
            a, act_backward = _activation_with_gradient(ctx.act, h, ctx.exact_gelu)  # (tile, 4C)
            # the products ran in grad's dtype in forward (autocast), so their gradients do too
            grad_a, grad_w2, grad_b2 = token_linear_backward(grad[t], a, w2, has_bias=True)
            grad_h = act_backward(grad_a.to(a.dtype))
            grad_n, grad_w1, grad_b1 = token_linear_backward(grad_h, n, w1, has_bias=True)
            grad_x_t, grad_nw, grad_nb = torch.ops.aten.native_layer_norm_backward(
                grad_n.to(n.dtype), x_t, (C,), mean, rstd, weight, bias, (True, True, True)
            )
            tile = [g.to(p.dtype) for g, p in zip((grad_nw, grad_nb, grad_w1, grad_b1, grad_w2, grad_b2), params)]
            param_grads = tile if param_grads is None else [s.add_(g) for s, g in zip(param_grads, tile)]
            if grad_x is None:
                grad_x = grad_x_t.to(x.dtype)
            else:
                grad_x[t] = grad_x_t
        grad_nw, grad_nb, grad_w1, grad_b1, grad_w2, grad_b2 = param_grads
        return grad_x.view(x.shape), None, grad_nw, grad_nb, grad_w1, grad_b1, None, grad_w2, grad_b2


# Training keeps 2 of the MLP's 5 large activations (_LeanMLP); False: plain modules, autograd keeps all 5.
# The lean form's backward is Python: on a tiny model, where only that overhead counts, a training step
# takes 20.6 ms lean against 17.7 ms plain (CPU, 1 thread; 26.8 against 22.7 when it still called
# autograd.grad twice per tile). A GPU step that waits for the host (Swin-T at batch 64 on an H200) may
# therefore prefer False: not yet measured.
LEAN_MLP = True


class SwinMLP(nn.Module):
    def __init__(self, config: SwinConfig, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = TokenLinear(dim, hidden)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = TokenLinear(hidden, dim)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """MLP(norm(x)): (..., C) -> (..., C) through a 4C hidden layer. The block's LayerNorm is passed
        in so that training can recompute its output instead of keeping it."""
        fc1, fc2 = self.fc1, self.fc2
        plain_training = torch.is_grad_enabled() and not LEAN_MLP
        if (self.training and self.drop.p > 0) or torch.compiler.is_compiling() or plain_training:
            # hidden dropout, torch.compile (which fuses and picks what to save itself), or LEAN_MLP off
            return self.drop(fc2(self.drop(self.act(fc1(norm(x))))))
        if torch.is_grad_enabled():  # keep only x and fc1's output for backward
            return _LeanMLP.apply(x, norm, norm.weight, norm.bias, fc1.weight, fc1.bias, self.act, fc2.weight, fc2.bias)
        weights = (fc1.weight, fc1.bias, self.act, fc2.weight, fc2.bias)
        out, _, _ = _mlp_forward(x.reshape(-1, x.shape[-1]), norm, *weights, keep_hidden=False, pack=not self.training)
        return out.view(*x.shape[:-1], -1)


class SwinBlock(GradientCheckpointingLayer):
    """z' = (S)W-MSA(LN(z)) + z;  z = MLP(LN(z')) + z'.  Odd blocks of a stage (shifted=True) use SW-MSA."""

    def __init__(self, config: SwinConfig, dim: int, num_heads: int, drop_path: float, shifted: bool):
        super().__init__()
        self.shifted = shifted
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = WindowAttention(config, dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = SwinMLP(config, dim)

    def forward(
        self, x: torch.Tensor, window: int, shift: int, mask: torch.Tensor | None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, H, W, C). `window`, `shift` and the SW-MSA `mask` come from the stage (shift/mask
        are used only if this block is a shifted one)."""
        shift = shift if self.shifted else 0
        weights = None

        def attention(x: torch.Tensor) -> torch.Tensor:  # (S)W-MSA(LN(x)): (b, H, W, C) -> (b, H, W, C)
            nonlocal weights
            _, H, W, _ = x.shape
            x = self.norm1(x)
            # pad bottom/right to whole windows (as the references do; padded tokens are zeros)
            pad_h, pad_w = (-H) % window, (-W) % window
            if pad_h or pad_w:
                x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            # cyclic shift (SW-MSA) + window partition, one gather
            windows, weights = self.attn(
                window_partition(x, window, shift), window, mask if shift else None, need_weights
            )  # (b, nW, N, C)
            x = window_reverse(windows, window, H + pad_h, W + pad_w, shift)  # (b, Hp, Wp, C), shifted back
            return x[:, :H, :W] if pad_h or pad_w else x

        # attention weights are returned for every sample, so with need_weights no branch is skipped
        x = residual(x, attention, self.drop_path, self.training, skip_dropped=not need_weights)
        x = residual(x, lambda x: self.mlp(x, self.norm2), self.drop_path, self.training)  # MLP(LN(x))
        return x, weights


# --------------------------------------------------------------------------------------------------
# 4. Patch merging and 5. stages
# --------------------------------------------------------------------------------------------------


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (official order), LayerNorm, linear 4C -> 2C: halves H and W."""

    def __init__(self, config: SwinConfig, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)
        self.reduction = TokenLinear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C); odd sizes are zero-padded bottom/right."""
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        B, H, W, C = x.shape
        # the 2x2 neighbours in the order (row, col) = (0,0), (1,0), (0,1), (1,1), the order pretrained
        # reduction weights expect: col-major within the neighbourhood. One copy (and one in backward).
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)  # (B, H/2, W/2, col, row, C)
        return self.reduction(self.norm(x.reshape(B, H // 2, W // 2, 4 * C)))


# In CPU inference a stage whose map is large runs its blocks on groups of samples of at most about this
# many activations (floats of the (b, H, W, C) block input), so that a group's intermediates stay in
# cache from one op to the next (Swin-T stage 1 at batch 8, in groups of 3 images: 147 -> 112 ms).
# Exact: in inference the samples of a batch never interact.
INFERENCE_GROUP_ACTIVATIONS = 1 << 20


def _inference_groups(x: torch.Tensor) -> list[slice]:
    """Even groups of samples of x (B, H, W, C) for a CPU forward without autograd; [all] otherwise."""
    if not _cpu_inference(x):
        return [slice(None)]  # (before reading the batch size, which a trace must keep symbolic)
    B = len(x)
    count = -(-B // max(1, INFERENCE_GROUP_ACTIVATIONS // max(x[0].numel(), 1)))  # ceil(B / per group)
    size = -(-B // count)
    return [slice(i, i + size) for i in range(0, B, size)]


class SwinStage(nn.Module):
    """`depth` Swin blocks alternating W-MSA and SW-MSA, then (except in the last stage) patch merging."""

    def __init__(self, config: SwinConfig, stage: int, drop_paths: list[float]):
        super().__init__()
        dim = config.embed_dim * 2**stage
        self.window_size = config.window_size
        self.blocks = nn.ModuleList(
            SwinBlock(config, dim, config.num_heads[stage], p, shifted=i % 2 == 1) for i, p in enumerate(drop_paths)
        )
        self.downsample = PatchMerging(config, dim) if stage < len(config.depths) - 1 else None

    def forward(
        self, x: torch.Tensor, always_partition: bool = False, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: (B, H, W, C) -> (downsampled output, output before downsampling, last block's attention)."""
        H, W = x.shape[1:3]
        window, shift = window_geometry(H, W, self.window_size, always_partition)
        mask = None
        if shift and len(self.blocks) > 1:  # one mask per stage, shared by its SW-MSA blocks
            mask = shifted_window_mask(H + (-H) % window, W + (-W) % window, window, shift, x.device)
        weights = None
        groups = _inference_groups(x) if not (need_weights or self.training) else [slice(None)]
        outputs = []
        for group in groups:
            y = x[group]
            for i, block in enumerate(self.blocks):
                last = i == len(self.blocks) - 1
                y, weights = block(y, window, shift, mask, need_weights and last)
            outputs.append(y)
        x = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        before_downsampling = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, before_downsampling, weights


# --------------------------------------------------------------------------------------------------
# 6. The model
# --------------------------------------------------------------------------------------------------


@dataclass
class SwinModelOutput(ModelOutput):
    """Output of SwinModel.

    Args:
        last_hidden_state: (B, L, C) tokens of the last stage after the final LayerNorm, L = H/32 * W/32.
        pooler_output: (B, C) average of `last_hidden_state` over tokens.
        hidden_states: with `output_hidden_states`, (B, L_i, C_i) for the patch embedding and each stage's
            output (after its patch merging).
        reshaped_hidden_states: the same maps as (B, C_i, H_i, W_i).
        attentions: with `output_attentions`, the attention probabilities of each stage's last block,
            (B * num_windows, heads, M*M, M*M).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SwinImageClassifierOutput(ModelOutput):
    """Output of SwinForImageClassification.

    Args:
        loss: with `labels`, cross-entropy (single label), BCE-with-logits (multi label) or MSE (regression).
        logits: (B, num_labels) scores before softmax.
        hidden_states, reshaped_hidden_states, attentions: as in SwinModelOutput.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.FloatTensor, ...] | None = None


def drop_inference_caches(module: nn.Module) -> None:
    """Forget what inference keeps from one forward to the next: the reordered weights
    (PACK_INFERENCE_WEIGHTS) and the attention biases (WindowAttention.attention_bias).

    Both are stamped with their tensor's version counter, but AdamW(fused=True) updates the weights in
    place without bumping it (torch 2.13). So they are also dropped whenever the model may be training:
    when it goes back to training mode, and on every eager forward with autograd on (a fine-tune run in
    eval mode with a fused optimizer still passes there before each step). Compiled graphs never use
    these caches, and do not drop them either: a compiled training step in eval mode with a fused
    optimizer, between eager inference calls, needs `model.train()` (or this function) after it.

    With nothing cached anywhere (every training step that follows a training step) it returns at once
    instead of walking the modules (0.5 ms of Python per Swin-T training step, which a GPU would wait for)."""
    if not _PACKED and not _BIAS_HOLDERS:
        return
    for param in module.parameters():
        _PACKED.pop(param, None)
    for attention in module.modules():
        if isinstance(attention, WindowAttention):
            attention._inference_bias = None
            _BIAS_HOLDERS.discard(attention)


class SwinPreTrainedModel(PreTrainedModel):
    """Weight initialisation, checkpoint loading and the PreTrainedModel plumbing shared by all heads."""

    config_class = SwinConfig
    base_model_prefix = "swin"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SwinBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _can_compile_fullgraph = True

    if not hasattr(PreTrainedModel, "activation_checkpointing_enable"):  # transformers < 5.24

        def activation_checkpointing_enable(self, **kwargs) -> None:
            """Per-block activation checkpointing: transformers 5.24's name for gradient_checkpointing_enable,
            so that one spelling works with every transformers this package supports."""
            self.gradient_checkpointing_enable(**kwargs)

    def train(self, mode: bool = True):
        """nn.Module.train; back in training mode, what inference cached is freed (drop_inference_caches)."""
        if mode:
            drop_inference_caches(self)
        return super().train(mode)

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        # WindowAttention reads config._attn_implementation on every call, so switching is always safe
        return True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The official initialisation: truncated normal (std = initializer_range) for linear/conv weights,
        the relative position tables and the absolute position embedding; zero biases; LayerNorm = identity."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, WindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=std)
        elif isinstance(module, SwinEmbeddings):
            if module.absolute_pos_embed is not None:
                init.trunc_normal_(module.absolute_pos_embed, std=std)
            if module.mask_token is not None:
                init.trunc_normal_(module.mask_token, std=std)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """save_pretrained, plus the image processor's code, so that every entry of `config.auto_map`
        (models, config and image processor) loads with trust_remote_code where swin_hf is not installed."""
        super().save_pretrained(save_directory, *args, **kwargs)
        processor_code = Path(__file__).with_name("image_processing_swin.py")
        if processor_code.exists():
            shutil.copy(processor_code, Path(save_directory) / processor_code.name)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a swin_hf checkpoint, or one written by transformers' own Swin (`model_type: "swin"`),
        whose config and weights are converted on the way in."""
        if pretrained_model_name_or_path is not None and "state_dict" not in kwargs:
            from_transformers = _load_transformers_swin(cls, pretrained_model_name_or_path, kwargs)
            if from_transformers is not None:
                config, state_dict = from_transformers
                kwargs.setdefault("config", config)
                kwargs["state_dict"] = state_dict
                pretrained_model_name_or_path = None
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class SwinEmbeddings(nn.Module):
    """Patch partition + linear embedding (one strided conv), LayerNorm, optional absolute position embedding.

    With `use_mask_token` (masked image modeling), a learned token replaces the embedding of masked patches.
    """

    def __init__(self, config: SwinConfig, use_mask_token: bool = False):
        super().__init__()
        self.patch_size = _pair(config.patch_size)
        self.num_channels = config.num_channels
        self.proj = nn.Conv2d(config.num_channels, config.embed_dim, self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.grid = tuple(math.ceil(s / p) for s, p in zip(_pair(config.image_size), self.patch_size))
        self.absolute_pos_embed = None
        if config.use_absolute_embeddings:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], config.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim)) if use_mask_token else None
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, ceil(H/p), ceil(W/p), C); H, W padded bottom/right to whole patches.

        bool_masked_pos: (B, Hp*Wp) or (B, Hp, Wp), True where the patch is replaced by the mask token.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"Swin expects pixel_values of shape (batch, {self.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}. Convert images to {self.num_channels} channels (e.g. PIL "
                "`image.convert('RGB')`) or set `num_channels` in the config."
            )
        H, W = pixel_values.shape[2:]
        p_h, p_w = self.patch_size
        if H < p_h or W < p_w:
            raise ValueError(f"Image of {H}x{W} pixels is smaller than one {p_h}x{p_w} patch; resize it up.")
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
            raise ValueError(
                "bool_masked_pos was given but this model has no mask token; use SwinForMaskedImageModeling "
                "(or SwinModel(config, use_mask_token=True))."
            )
        B, Hp, Wp, _ = x.shape
        if bool_masked_pos.numel() != B * Hp * Wp:
            raise ValueError(
                f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)} but the input has {B} x {Hp} x {Wp} "
                "patches; give one flag per patch, shape (batch, num_patches) or (batch, Hp, Wp)."
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
        self.num_features = config.hidden_size
        self.add_pooling_layer = add_pooling_layer
        self.embeddings = SwinEmbeddings(config, use_mask_token=use_mask_token)
        # stochastic depth rises linearly from 0 to drop_path_rate over all blocks
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(config.depths[:s]) for s in range(len(config.depths))]
        self.stages = nn.ModuleList(
            SwinStage(config, s, rates[start : start + depth])
            for s, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.norm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.proj

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        always_partition: bool = False,
        hidden_states_before_downsampling: bool = False,
        interpolate_pos_encoding: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs,
    ) -> SwinModelOutput | tuple:
        """pixel_values: (B, num_channels, H, W), any H and W of at least one patch.

        `always_partition` never shrinks the window to a small feature map (detection-style padding).
        `hidden_states_before_downsampling` records each stage's map before its patch merging (backbones).
        `interpolate_pos_encoding` is accepted for transformers compatibility: the absolute position
        embedding is always resized to the input's grid.
        `bool_masked_pos` (B, num_patches): patches replaced by the mask token (needs `use_mask_token`).
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict

        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            drop_inference_caches(self)  # the weights may be about to change (see there)
        x = self.embeddings(pixel_values, bool_masked_pos)  # (B, H/4, W/4, C)
        maps = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for stage in self.stages:
            x, before_downsampling, weights = stage(x, always_partition, output_attentions)
            if output_hidden_states:
                maps.append(before_downsampling if hidden_states_before_downsampling else x)
            if output_attentions:
                attentions.append(weights)

        B, H, W, C = x.shape
        last_hidden_state = self.norm(x.reshape(B, H * W, C))  # (B, L, C)
        pooled = last_hidden_state.mean(dim=1) if self.add_pooling_layer else None  # (B, C)
        hidden_states = reshaped = None
        if output_hidden_states:
            hidden_states = tuple(m.reshape(B, -1, m.shape[-1]) for m in maps)  # (B, L_i, C_i)
            reshaped = tuple(m.permute(0, 3, 1, 2) for m in maps)  # (B, C_i, H_i, W_i)
        attentions = tuple(attentions) if output_attentions else None

        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled, hidden_states, attentions, reshaped) if v is not None)
        return SwinModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled,
            hidden_states=hidden_states,
            attentions=attentions,
            reshaped_hidden_states=reshaped,
        )


# --------------------------------------------------------------------------------------------------
# 7. Heads
# --------------------------------------------------------------------------------------------------


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
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SwinImageClassifierOutput | tuple:
        """labels: (B,) class indices (single label), (B, num_labels) multi-hot floats (multi label), or
        (B,) / (B, num_labels) targets (regression); see `config.problem_type`."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.swin(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(out.pooler_output)  # (B, num_labels)
        loss = None if labels is None else classification_loss(logits, labels, self.config)
        if not return_dict:
            rest = (out.hidden_states, out.attentions, out.reshaped_hidden_states)
            return tuple(v for v in (loss, logits, *rest) if v is not None)
        return SwinImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            reshaped_hidden_states=out.reshaped_hidden_states,
        )


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: SwinConfig) -> torch.Tensor:
    """The loss `config.problem_type` names; inferred from num_labels and the label dtype when unset
    (the config is not modified)."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    labels = labels.to(logits.device)
    if problem == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    if problem == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    raise ValueError(
        f"config.problem_type={problem!r} is not supported; use 'single_label_classification', "
        "'multi_label_classification' or 'regression'."
    )


class SwinBackbone(BackboneMixin, SwinPreTrainedModel):
    """Multi-scale NCHW feature maps (strides 4, 8, 16, 32) for dense heads (UperNet, Mask2Former, DETR...).

    Each stage in `config.out_features` ("stem", "stage1".."stage4") is taken before its patch merging
    and normalised by its own LayerNorm. Windows are never shrunk (detection-style padding).

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
        # The encoder's final LayerNorm feeds only the classification path; the maps returned here are
        # normalised by hidden_states_norms. Trainable, it would be a parameter that never gets a gradient
        # (DDP's "unused parameters" error when training a dense head). It stays in the state dict
        # (checkpoints of either library keep loading) but is frozen.
        self.swin.norm.requires_grad_(False)
        self.hidden_states_norms = nn.ModuleDict(
            {stage: nn.LayerNorm(c, eps=config.layer_norm_eps) for stage, c in zip(self.out_features, self.channels)}
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BackboneOutput | tuple:
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        out = self.swin(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=True,
            return_dict=True,
            always_partition=True,
            hidden_states_before_downsampling=True,
        )
        feature_maps = tuple(
            self.hidden_states_norms[stage](m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            for stage, m in zip(self.stage_names, out.reshaped_hidden_states)
            if stage in self.out_features
        )  # each (B, C_i, H_i, W_i)
        hidden_states = out.reshaped_hidden_states if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (feature_maps, hidden_states, out.attentions) if v is not None)
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=out.attentions)


def _load_transformers_swin(cls, path, kwargs) -> tuple[SwinConfig, dict] | None:
    """(config, state_dict) prepared by swin_hf for `path` - a transformers Swin checkpoint (converted), or
    one whose position tables / head must be resized or re-initialised for the requested config - or None
    to let transformers load `path` as is. Lives in convert.py (imported lazily so this file stays
    loadable on its own with trust_remote_code)."""
    try:
        from .convert import prepare_pretrained
    except ImportError:
        return None
    return prepare_pretrained(cls, path, kwargs)


__all__ = [
    "SwinPreTrainedModel",
    "SwinModel",
    "SwinForImageClassification",
    "SwinBackbone",
    "SwinModelOutput",
    "SwinImageClassifierOutput",
]
