"""Test helpers for the interop tests: tiny configs, and an independent functional Swin (V1 and V2) forward
pass that reads the OFFICIAL checkpoint layout (written for these tests from the papers' descriptions and
the official layout's semantics; it shares no code with swin_hf)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from swin_hf import SwinConfig, SwinForImageClassification

EPS = 1e-5
# A Swin V2 in miniature of the 12to16 fine-tuned releases: stage maps 16, 8, 4 at 64 pixels with window 8 (a
# shifted stage, one window, a map smaller than the window), pre-trained with windows 6, 6, 3
V2_FINE_TUNED = dict(version=2, depths=[2, 2, 2], num_heads=[1, 2, 4], window_size=8, image_size=64,
                     pretrained_window_sizes=[6, 6, 3])


def tiny_config(**overrides) -> SwinConfig:
    values = dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, image_size=32, num_labels=5)
    values.update(overrides)
    return SwinConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> SwinForImageClassification:
    """A tiny model whose every parameter (LayerNorms and tables included) is perturbed, so a misplaced
    tensor changes the outputs."""
    torch.manual_seed(seed)
    model = SwinForImageClassification(tiny_config(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def reference_index(M: int) -> torch.Tensor:
    """(M*M, M*M) index into a (2M-1)^2 table: (dy + M-1) * (2M-1) + (dx + M-1)."""
    ys, xs = torch.meshgrid(torch.arange(M), torch.arange(M), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + M - 1
    dx = xs[:, None] - xs[None, :] + M - 1
    return dy * (2 * M - 1) + dx


def reference_mask(H: int, W: int, M: int, s: int) -> torch.Tensor:
    """(nW, N, N) SW-MSA mask: label the 3x3 regions of the shifted map, -100 between different labels."""
    label = torch.zeros(H, W)
    n = 0
    for hs in (slice(0, -M), slice(-M, -s), slice(-s, None)):
        for ws in (slice(0, -M), slice(-M, -s), slice(-s, None)):
            label[hs, ws] = n
            n += 1
    windows = label.view(H // M, M, W // M, M).permute(0, 2, 1, 3).reshape(-1, M * M)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def reference_coords_table(M: int, pretrained: int = 0) -> torch.Tensor:
    """Swin V2's (1, 2M-1, 2M-1, 2) relative_coords_table as the official code builds it: offsets divided
    by (pretrained window - 1), or (M - 1) without one, times 8, then sign(t) * log2(1 + |t|) / log2(8)."""
    n = pretrained if pretrained > 0 else M
    offsets = torch.arange(-(M - 1), M, dtype=torch.float32)
    table = torch.stack(torch.meshgrid([offsets, offsets], indexing="ij")).permute(1, 2, 0).contiguous().unsqueeze(0)
    table[:, :, :, 0] /= n - 1
    table[:, :, :, 1] /= n - 1
    table *= 8
    return torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)


def _windows(x, B, H, W, M, C):  # (B, H, W, C) -> (B*nW, M*M, C)
    return x.view(B, H // M, M, W // M, M, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, M * M, C)


def _attention_logits(sd: dict, pre: str, q, k, heads: int, M: int) -> torch.Tensor:
    """(B*nW, heads, N, N) logits of one window attention, with its position bias.
    V1: q k^T / sqrt(d) + table[index]. V2: cos(q, k) * exp(min(logit_scale, log 100)) + 16 sigmoid(cpb_mlp(coords)),
    the coordinates read from the checkpoint's own relative_coords_table."""
    N = M * M
    if pre + "attn.logit_scale" in sd:
        tau = torch.clamp(sd[pre + "attn.logit_scale"], max=math.log(100.0)).exp()
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * tau
        coords = sd[pre + "attn.relative_coords_table"].reshape(-1, 2)
        hidden = F.relu(F.linear(coords, sd[pre + "attn.cpb_mlp.0.weight"], sd[pre + "attn.cpb_mlp.0.bias"]))
        table = F.linear(hidden, sd[pre + "attn.cpb_mlp.2.weight"])  # ((2M-1)^2, heads)
        bias = table[reference_index(M).reshape(-1)].view(N, N, heads).permute(2, 0, 1)
        return attn + 16 * torch.sigmoid(bias)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    table = sd[pre + "attn.relative_position_bias_table"]
    return attn + table[reference_index(M).reshape(-1)].view(N, N, heads).permute(2, 0, 1)


def reference_forward(sd: dict, config: SwinConfig, images: torch.Tensor) -> torch.Tensor:
    """Logits of an official-layout state dict `sd` (keys `patch_embed.*`, `layers.*`, `norm.*`, `head.*`), of
    Swin V1 or, when the blocks have a `logit_scale`, Swin V2: res-post-norm blocks (LN after each branch),
    q and v biases, patch merging that reduces and then normalises."""
    v2 = "layers.0.blocks.0.attn.logit_scale" in sd
    p = config.patch_size
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    B, C, H, W = x.shape
    x = x.flatten(2).transpose(1, 2)  # (B, L, C)
    x = F.layer_norm(x, (C,), sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"], EPS)
    if "absolute_pos_embed" in sd:
        x = x + sd["absolute_pos_embed"]
    for i, depth in enumerate(config.depths):
        heads = config.num_heads[i]
        M, shift = config.window_size, config.window_size // 2
        if min(H, W) <= M:
            M, shift = min(H, W), 0
        N = M * M
        for j in range(depth):
            pre = f"layers.{i}.blocks.{j}."
            s = shift if j % 2 == 1 else 0
            shortcut = x
            h = x if v2 else F.layer_norm(x, (C,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], EPS)
            h = h.view(B, H, W, C)
            if s:
                h = torch.roll(h, (-s, -s), (1, 2))
            win = _windows(h, B, H, W, M, C)
            if v2:
                qkv_bias = None
                if pre + "attn.q_bias" in sd:
                    q_bias = sd[pre + "attn.q_bias"]
                    qkv_bias = torch.cat([q_bias, torch.zeros_like(q_bias), sd[pre + "attn.v_bias"]])
            else:
                qkv_bias = sd.get(pre + "attn.qkv.bias")
            qkv = F.linear(win, sd[pre + "attn.qkv.weight"], qkv_bias)
            q, k, v = qkv.reshape(-1, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
            attn = _attention_logits(sd, pre, q, k, heads, M)  # (B*nW, heads, N, N)
            if s:
                mask = reference_mask(H, W, M, s)
                nW = mask.shape[0]
                attn = (attn.view(B, nW, heads, N, N) + mask[None, :, None]).view(-1, heads, N, N)
            out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, N, C)
            out = F.linear(out, sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
            out = out.view(B, H // M, W // M, M, M, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
            if s:
                out = torch.roll(out, (s, s), (1, 2))
            out = out.reshape(B, H * W, C)
            if v2:
                out = F.layer_norm(out, (C,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], EPS)
            x = shortcut + out
            h = x if v2 else F.layer_norm(x, (C,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], EPS)
            h = F.linear(F.gelu(F.linear(h, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"])),
                         sd[pre + "mlp.fc2.weight"], sd[pre + "mlp.fc2.bias"])
            if v2:
                h = F.layer_norm(h, (C,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], EPS)
            x = x + h
        pre = f"layers.{i}.downsample."
        if pre + "reduction.weight" in sd:
            h = x.view(B, H, W, C)
            h = torch.cat([h[:, 0::2, 0::2], h[:, 1::2, 0::2], h[:, 0::2, 1::2], h[:, 1::2, 1::2]], -1)
            h = h.reshape(B, -1, 4 * C)
            if v2:  # reduction first, then the norm over 2C
                h = F.linear(h, sd[pre + "reduction.weight"])
                x = F.layer_norm(h, (2 * C,), sd[pre + "norm.weight"], sd[pre + "norm.bias"], EPS)
            else:
                h = F.layer_norm(h, (4 * C,), sd[pre + "norm.weight"], sd[pre + "norm.bias"], EPS)
                x = F.linear(h, sd[pre + "reduction.weight"])
            H, W, C = H // 2, W // 2, 2 * C
    x = F.layer_norm(x, (C,), sd["norm.weight"], sd["norm.bias"], EPS).mean(1)
    return F.linear(x, sd["head.weight"], sd["head.bias"])


def official_to_timm_by_hand(sd: dict) -> dict:
    """The timm layout written independently of swin_hf's table: patch merging moves from the end of
    stage i to the start of stage i+1, the head becomes head.fc, derived buffers are not persistent."""
    out = {}
    for key, value in sd.items():
        if key.endswith(("relative_position_index", "relative_coords_table", "attn_mask")):
            continue
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) + 1)
        if parts[0] == "head":
            parts = ["head", "fc"] + parts[1:]
        out[".".join(parts)] = value
    return out
