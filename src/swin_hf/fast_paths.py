"""Speed paths beside the model: each computes exactly what the plain code in modeling_swin.py computes.

Which of them run is a per-model setting, `FastPaths`, held by the modules that use one and changed with
`model.set_fast_paths(...)` (also on a copy loaded with trust_remote_code: this file travels with it).
Every path calls the modules it stands in for (so PEFT adapters, accelerate's offload hooks and forward
hooks see each call), keeps no state, and steps aside under torch.compile / export where the compiler
does better (or the path cannot be traced).

The default (`FastPaths.for_this_cpu()`) turns a path on only where the CPU can run it and where
BENCHMARKS.md shows that it pays on CPUs of the same instruction-set family; `python
benchmarks/fast_paths.py` measures each one against the plain code on the machine at
hand. On other devices (CUDA, MPS) no path runs: each checks that its tensors are on the CPU.

  onednn_products        per-token products as oneDNN 1x1 convolutions (where MKL's sgemm is the slower)
  mlp_tile_tokens        the MLP branch over tiles of this many tokens, so intermediates stay in cache
  inference_group_size   CPU inference runs a large stage on groups of samples (same reason)
  tiles_in_bf16          the two above also in bf16 (False: fp32 only)
  skip_dropped_branches  stochastic depth computes a residual branch on the kept samples only
"""

from __future__ import annotations

import dataclasses
import functools
import platform

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class FastPaths:
    """Which speed paths a model uses. All off is the plain model."""

    onednn_products: bool = False
    onednn_min_macs: int = 1 << 24  # smaller products stay on F.linear (oneDNN's set-up costs more there)
    mlp_tile_tokens: int = 0  # 0: one tile
    inference_group_size: int = 0  # floats of a (b, H, W, C) group's input; 0: the whole batch at once
    tiles_in_bf16: bool = True  # tiles and groups under bf16 (autocast or bf16 weights) too
    skip_dropped_branches: bool = False

    @classmethod
    def plain(cls) -> "FastPaths":
        return cls()

    @classmethod
    def for_this_cpu(cls) -> "FastPaths":
        """The paths that measured faster than the plain code on CPUs like this one (BENCHMARKS.md)."""
        return cls.for_cpu(CpuFeatures.of_this_machine())

    @classmethod
    def for_cpu(cls, cpu: "CpuFeatures") -> "FastPaths":
        """The measured paths of the instruction-set family `cpu` belongs to; plain for a family not measured.

        Chosen by what the CPU can run, never by its vendor: the products on oneDNN need its convolutions
        (x86 with oneDNN) and, since autocast may hand them bf16, oneDNN's bf16 kernels (AVX-512 BW/VL/DQ or
        AVX-NE-CONVERT); the other paths are plain PyTorch and run everywhere.
        """
        if not cpu.x86_onednn:
            return cls()
        if cpu.amx_bf16 or cpu.isa == "AVX2":
            # AMX (bf16 products in hardware) and AVX2 without AVX-512: sample groups pay in fp32 inference
            # and skipping dropped branches in training; oneDNN's products and the MLP tiles do not
            return cls(inference_group_size=1 << 20, tiles_in_bf16=False, skip_dropped_branches=True)
        if cpu.avx512_bf16 and cpu.onednn_bf16:
            return cls(
                onednn_products=True, mlp_tile_tokens=4096, inference_group_size=1 << 20, skip_dropped_branches=True
            )
        return cls()  # a family not measured yet


@dataclasses.dataclass(frozen=True)
class CpuFeatures:
    """What this CPU can run that the speed paths care about (a test builds one to stand for another CPU)."""

    x86_onednn: bool  # an x86 CPU and a torch built with oneDNN: the oneDNN products can run
    onednn_bf16: bool  # oneDNN has bf16 kernels here (AVX-512 BW/VL/DQ or AVX-NE-CONVERT)
    avx512_bf16: bool  # bf16 dot products in AVX-512
    amx_bf16: bool  # bf16 tile products (AMX)
    isa: str = ""  # torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", ...

    @classmethod
    @functools.lru_cache(maxsize=None)
    def of_this_machine(cls) -> "CpuFeatures":
        flags = cpu_flags()
        x86_onednn = torch.backends.mkldnn.is_available() and platform.machine().lower() in ("x86_64", "amd64")
        return cls(
            x86_onednn=x86_onednn,
            onednn_bf16=x86_onednn and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            avx512_bf16="avx512_bf16" in flags,
            amx_bf16="amx_bf16" in flags,
            isa=torch.backends.cpu.get_cpu_capability(),
        )


@functools.lru_cache(maxsize=None)
def _cpuinfo(field: str) -> str:
    """The first value of `field` in /proc/cpuinfo; '' where it cannot be read (not Linux, say)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo ('avx512_bf16', 'amx_bf16', ...); empty where unreadable."""
    return set(_cpuinfo("flags").split())


def auto_attention_implementation(q: torch.Tensor, bias_is_trained: bool) -> str:
    """What attn_implementation="auto" (the model's default) runs: SDPA, except where it is slow for Swin.
    With a trained bias, SDPA has no kernel for the mask's gradient and falls back to its slower math path;
    on CUDA its kernels are made for long sequences, not 49-token windows. BENCHMARKS.md has the numbers."""
    return "eager" if bias_is_trained or q.is_cuda else "sdpa"


def _on_cpu_eagerly(x: torch.Tensor) -> bool:
    """On the CPU and neither compiled nor exported (torch.export's non-strict tracing runs the Python
    eagerly, with is_compiling() False: a path that splits the batch would fix its size in the graph)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling() and not _exporting()


# --------------------------------------------------------------------------------------------------
# Per-token products on oneDNN
# --------------------------------------------------------------------------------------------------
# Every product of a Swin block maps channels-last tokens (..., K) -> (..., N). On CPU, F.linear goes to
# MKL's sgemm, which on some CPUs runs well below oneDNN's rate (BENCHMARKS.md). A 1x1 convolution
# over the same memory seen as a channels-last image is the same product on oneDNN.


class TokenLinear(nn.Linear):
    """nn.Linear (same parameters, same checkpoints); with `onednn_products`, its CPU product is a oneDNN
    1x1 convolution."""

    fast_paths: FastPaths = FastPaths()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        paths = self.fast_paths
        # (export traces F.linear: checking the size first would put a guard on the batch into its graph)
        if paths.onednn_products and x.device.type == "cpu" and not _exporting() and _large(x, self.weight, paths.onednn_min_macs):
            return token_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def _large(x: torch.Tensor, weight: torch.Tensor, min_macs: int) -> bool:
    return x.numel() // max(x.shape[-1], 1) * weight.numel() >= min_macs


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(..., K) tokens -> (1, K, tokens, 1), the same memory as a channels-last image (a view if contiguous)."""
    return x.reshape(1, -1, 1, x.shape[-1]).permute(0, 3, 1, 2)


def _onednn_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype the oneDNN product runs in; None where oneDNN has no kernel for it on this CPU."""
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype == torch.bfloat16:
        return dtype if CpuFeatures.of_this_machine().onednn_bf16 else None
    return dtype if dtype == torch.float32 else None


def token_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T + bias over the last dim on oneDNN: (..., K) -> (..., N). Same math as F.linear."""
    if torch.compiler.is_compiling():
        # traced, a convolution would become Inductor's own; the opaque op keeps oneDNN while Inductor
        # fuses what is around it. Export and autocast trace F.linear (a plain MatMul; autocast casts it).
        if _TOKEN_LINEAR is None or _exporting() or torch.is_autocast_enabled("cpu"):
            return F.linear(x, weight, bias)
        return _TOKEN_LINEAR(x, weight, bias)
    return _onednn_linear(x, weight, bias)


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    dtype = _onednn_dtype(x)
    if dtype is None:
        return F.linear(x, weight, bias)
    w = weight.to(dtype)[:, :, None, None]  # (N, K, 1, 1)
    b = None if bias is None else bias.to(dtype)
    # oneDNN's convolution directly: conv2d's own dispatch picks a slower kernel for it at 1 thread
    out = torch.ops.aten.mkldnn_convolution(_as_map(x.to(dtype)), w, b, [0, 0], [1, 1], [1, 1], 1)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])  # (1, N, tokens, 1) channels-last


def _token_linear_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool):
    """(dL/dx, dL/dweight, dL/dbias or None) of _onednn_linear, in grad's dtype, on oneDNN."""
    x, weight = x.to(grad.dtype), weight.to(grad.dtype)
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        _as_map(grad), _as_map(x), weight[:, :, None, None], [weight.shape[0]] if has_bias else None,
        [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, has_bias],
    )  # fmt: skip
    return grad_x.permute(0, 2, 3, 1).reshape(x.shape), grad_w.view(weight.shape), grad_b


def _exporting() -> bool:
    """torch.export is tracing (not torch.compile). torch 2.7-2.8 fold is_exporting() to True under every
    torch.compile, so the flag it returns is read directly where it exists."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else flag


def _register_token_linear():
    """swin_hf::token_linear (forward, shapes for tracing, gradient), once per process. A second copy of
    this file (a folder loaded with trust_remote_code beside an installed swin_hf) reuses the registered
    op; its schema never changes, since a copy saved by another version may be the one registering it."""
    if not CpuFeatures.of_this_machine().x86_onednn:
        return None
    if hasattr(torch.ops.swin_hf, "token_linear"):
        return torch.ops.swin_hf.token_linear
    op = torch.library.custom_op(
        "swin_hf::token_linear", _onednn_linear, mutates_args=(), schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor"
    )
    op.register_fake(lambda x, weight, bias: x.new_empty(*x.shape[:-1], weight.shape[0]))

    def backward_impl(grad, x, weight, has_bias):
        grad_x, grad_w, grad_b = _token_linear_backward(grad, x, weight, has_bias)
        return grad_x, grad_w, grad_b if has_bias else grad.new_empty(0)

    backward = torch.library.custom_op(
        "swin_hf::token_linear_backward", backward_impl, mutates_args=(),
        schema="(Tensor grad, Tensor x, Tensor weight, bool has_bias) -> (Tensor, Tensor, Tensor)",
    )  # fmt: skip
    backward.register_fake(
        lambda grad, x, weight, has_bias: (
            grad.new_empty(x.shape), grad.new_empty(weight.shape), grad.new_empty(weight.shape[0] if has_bias else 0)
        )
    )

    def save(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    def gradient(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_w, grad_b = backward(grad, x, weight, ctx.has_bias)
        return grad_x, grad_w, grad_b if ctx.has_bias else None

    op.register_autograd(gradient, setup_context=save)
    return torch.ops.swin_hf.token_linear


_TOKEN_LINEAR = _register_token_linear()


# --------------------------------------------------------------------------------------------------
# Cache-sized pieces of work
# --------------------------------------------------------------------------------------------------


def _tiled(x: torch.Tensor, paths: FastPaths) -> bool:
    """Whether the cache-sized paths run for x: on the CPU, eagerly, and in fp32 unless tiles_in_bf16."""
    low_precision = x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
    return _on_cpu_eagerly(x) and (paths.tiles_in_bf16 or not low_precision)


def in_token_tiles(branch, x: torch.Tensor, paths: FastPaths) -> torch.Tensor:
    """branch(x) for a per-token branch (the MLP with its LayerNorm), computed paths.mlp_tile_tokens tokens
    at a time so that the 4C-wide intermediates of a tile stay in cache from op to op: (..., C) -> (..., C)."""
    tile = paths.mlp_tile_tokens
    if not tile or not _tiled(x, paths):  # (first: a traced graph must not compare its symbolic sizes)
        return branch(x)
    tokens = x.reshape(-1, x.shape[-1])  # (T, C)
    if len(tokens) <= tile:
        return branch(x)
    out = torch.cat([branch(tokens[i : i + tile]) for i in range(0, len(tokens), tile)])  # (T, C)
    return out.view(*x.shape[:-1], out.shape[-1])


def sample_groups(x: torch.Tensor, paths: FastPaths) -> list[slice]:
    """Even groups of samples of x (B, H, W, C), each with at most about paths.inference_group_size floats,
    for CPU inference (autograd off): a group's intermediates stay in cache through a stage. [all] otherwise."""
    group_size = paths.inference_group_size
    if not group_size or torch.is_grad_enabled() or not _tiled(x, paths):
        return [slice(None)]
    B = len(x)
    count = -(-B // max(1, group_size // max(x[0].numel(), 1)))  # ceil(B / samples per group)
    size = -(-B // count)
    return [slice(i, i + size) for i in range(0, B, size)]


# --------------------------------------------------------------------------------------------------
# Stochastic depth without the dropped work
# --------------------------------------------------------------------------------------------------


def residual_on_kept_samples(x: torch.Tensor, branch, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """x + branch(x) * keep * scale, keep (B,) of 0/1, with branch run on the kept samples only.

    A dropped branch adds exactly zero and gets exactly zero gradient, so the result and the gradients are
    those of the plain form. Every sample dropped: the branch runs on one sample, times zero, so that its
    parameters still get (zero) gradients as optimizers and DDP expect.
    """
    kept = keep.nonzero().flatten()  # (k,)
    if len(kept) == len(x):
        return x.add(branch(x), alpha=scale)
    if len(kept) == 0:
        return x + branch(x[:1]) * 0.0
    out = branch(x.index_select(0, kept))  # (k, ...)
    return x.index_add(0, kept, out.to(x.dtype), alpha=scale)


def can_skip_dropped(x: torch.Tensor) -> bool:
    """Choosing the kept samples reads `keep` on the host: on the CPU and eagerly only (on a GPU it would
    wait for the device; torch.compile wants shapes that do not depend on data)."""
    return _on_cpu_eagerly(x)


__all__ = ["FastPaths", "TokenLinear", "auto_attention_implementation", "can_skip_dropped", "CpuFeatures", "cpu_flags", "in_token_tiles", "residual_on_kept_samples", "sample_groups", "token_linear"]
