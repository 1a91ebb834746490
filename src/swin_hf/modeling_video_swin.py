"""Video Swin Transformer (Liu et al., "Video Swin Transformer", CVPR 2022): Swin's shifted windows over
(time, height, width), read top to bottom:

  1. 3D window geometry - per-axis window and shift, partition / reverse, the 3D SW-MSA mask
  2. 3D window attention and block - Swin's WindowAttention with a (2T-1)(2M-1)(2M-1) bias table, Swin's block
  3. spatial patch merging, stage
  4. 3D patch partition + linear embedding
  5. the model: VideoSwinPreTrainedModel, VideoSwinModel
  6. head: VideoSwinForVideoClassification, and its initialisation from an image model (the paper's inflation)

Everything that is the same in 2D is Swin's own code (modeling_swin.py): the attention (with its relative position
index written over any number of axes), the MLP, the pre-norm block and its stochastic depth, the 2x2 patch merging.
Feature maps stay channels-last, (B, T, H, W, C), inside the encoder. `pixel_values` has VideoMAE's layout,
(batch, frames, channels, height, width).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_video_swin import VideoSwinConfig
from .modeling_swin import (
    MASKED_LOGIT, PatchMerging, SwinBlock, SwinForImageClassification, SwinModel, SwinPreTrainedModel, WindowAttention,
    cached_geometry, classification_loss, relative_position_index,
)  # fmt: skip

Size3 = tuple[int, int, int]


# ---- 1. 3D window geometry ------------------------------------------------------------------------


def video_window_geometry(size: Size3, window_size: Size3) -> tuple[Size3, Size3 | int]:
    """(window, shift) for a stage whose map is size = (T, H, W): per axis M_i and floor(M_i / 2); as in the official
    code, an axis not longer than its window is attended whole and unshifted. The shift is 0 when no axis shifts."""
    window = tuple(min(s, w) for s, w in zip(size, window_size))
    shift = tuple(0 if s <= w else w // 2 for s, w in zip(size, window_size))
    return window, (shift if any(shift) else 0)


def window_partition_3d(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """(B, T, H, W, C) -> (B, nW, t*h*w, C), windows in (time, row, column) order; T, H, W multiples of the window."""
    B, T, H, W, C = x.shape
    t, h, w = window
    x = x.view(B, T // t, t, H // h, h, W // w, w, C).permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T/t, H/h, W/w, t, h, w, C)
    return x.reshape(B, (T // t) * (H // h) * (W // w), t * h * w, C)


def window_reverse_3d(windows: torch.Tensor, window: Size3, size: Size3) -> torch.Tensor:
    """(B, nW, t*h*w, C) -> (B, T, H, W, C); the inverse of window_partition_3d."""
    B, _, _, C = windows.shape
    (t, h, w), (T, H, W) = window, size
    x = windows.view(B, T // t, H // h, W // w, t, h, w, C).permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, T/t, t, H/h, h, W/w, w, C)
    return x.reshape(B, T, H, W, C)


@cached_geometry
def shifted_window_mask_3d(size: Size3, window: Size3, shift: Size3, device: torch.device) -> torch.Tensor:
    """Additive 3D SW-MSA mask, (nW, N, N): 0 within a region, MASKED_LOGIT across regions. On each shifted axis the
    last band of windows holds up to three regions that were not adjacent before the cyclic shift: [0, n-window),
    [n-window, n-shift), [n-shift, n); an unshifted axis is one region. size: the padded (T, H, W)."""

    def region(n: int, window: int, shift: int) -> torch.Tensor:  # (n,): 0, 1 or 2
        r = torch.arange(n, device=device)
        return ((r >= n - window).long() + (r >= n - shift).long()) if shift else torch.zeros_like(r)

    (T, H, W), regions = size, [region(*axis) for axis in zip(size, window, shift)]
    label = regions[0].view(T, 1, 1) * 9 + regions[1].view(1, H, 1) * 3 + regions[2].view(1, 1, W)  # (T, H, W)
    label = window_partition_3d(label[None, ..., None], window)[0, :, :, 0]  # (nW, N)
    return (label[:, None, :] != label[:, :, None]).float() * MASKED_LOGIT


# ---- 2. 3D window attention and block -------------------------------------------------------------


class WindowAttention3D(WindowAttention):
    """Swin's window attention over (t, h, w) windows: the bias B is gathered from a (2T-1)(2M-1)(2M-1) x heads
    table, one entry per 3D offset."""

    def init_position_bias(self, num_heads: int, pretrained_window: int) -> None:
        self.window_size = tuple(self.window_size)  # (T, M, M)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(math.prod(2 * w - 1 for w in self.window_size), num_heads))

    def relative_position_bias(self, window: Size3) -> torch.Tensor:
        """B for windows of sides `window` (each at most the table's): (heads, N, N), N = t*h*w."""
        table, N = self.relative_position_bias_table, math.prod(window)
        index = relative_position_index(tuple(window), self.window_size, table.device)
        return table[index.view(-1)].view(N, N, -1).permute(2, 0, 1)


class VideoSwinBlock(SwinBlock):
    """Swin's block, z' = (S)W-MSA(LN(z)) + z; z = MLP(LN(z')) + z', on (B, T, H, W, C) maps with 3D windows."""

    attention_class = WindowAttention3D

    def shifted_window_attention(self, x, window: Size3, shift: Size3 | int, mask, output_attentions: bool):
        _, T, H, W, _ = x.shape
        pads = [(-n) % w for n, w in zip((T, H, W), window)]  # end of each axis to whole windows, as the references do
        if any(pads):
            x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        if shift:  # cyclic shift by half a window on every shifted axis
            x = torch.roll(x, [-s for s in shift], (1, 2, 3))
        windows, weights = self.attn(window_partition_3d(x, window), window, mask, output_attentions)  # (b, nW, N, C)
        x = window_reverse_3d(windows, window, (T + pads[0], H + pads[1], W + pads[2]))
        if shift:
            x = torch.roll(x, list(shift), (1, 2, 3))
        return (x[:, :T, :H, :W] if any(pads) else x), weights


# ---- 3. Spatial patch merging and stages ----------------------------------------------------------


class VideoPatchMerging(PatchMerging):
    """Swin's 2x2 patch merging on every frame (time is never merged): (B, T, H, W, C) -> (B, T, H/2, W/2, 2C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        x = super().forward(x.flatten(0, 1))  # (B*T, H/2, W/2, 2C)
        return x.view(B, T, *x.shape[1:])


class VideoSwinStage(nn.Module):
    """`depth` blocks alternating 3D W-MSA and SW-MSA, then (except in the last stage) spatial patch merging."""

    def __init__(self, config: VideoSwinConfig, stage: int, drop_paths: list[float]):
        super().__init__()
        dim = config.embed_dim * 2**stage
        self.window_size = tuple(config.window_size)
        self.blocks = nn.ModuleList(
            VideoSwinBlock(config, dim, config.num_heads[stage], p, shifted=i % 2 == 1) for i, p in enumerate(drop_paths)
        )
        self.downsample = VideoPatchMerging(config, dim) if stage < len(config.depths) - 1 else None

    def forward(self, x: torch.Tensor, output_attentions: bool = False):
        """x: (B, T, H, W, C) -> (downsampled output, last block's attention probabilities or None)."""
        size = tuple(x.shape[1:4])
        window, shift = video_window_geometry(size, self.window_size)  # per call: nothing stored changes
        mask = None
        if shift and len(self.blocks) > 1:  # one mask per stage, shared by its SW-MSA blocks
            padded = tuple(n + (-n) % w for n, w in zip(size, window))
            mask = shifted_window_mask_3d(padded, window, shift, x.device)
        weights = None
        for i, block in enumerate(self.blocks):
            x, weights = block(x, window, shift, mask, output_attentions and i == len(self.blocks) - 1)
        if self.downsample is not None:
            x = self.downsample(x)
        return x, weights


# ---- 4. 3D patch partition + linear embedding -----------------------------------------------------


class VideoSwinEmbeddings(nn.Module):
    """3D patch partition + linear embedding (one strided Conv3d), LayerNorm (`patch_norm`), dropout."""

    def __init__(self, config: VideoSwinConfig):
        super().__init__()
        self.patch_size, self.num_channels = tuple(config.patch_size), config.num_channels
        self.proj = nn.Conv3d(config.num_channels, config.embed_dim, self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps) if config.patch_norm else nn.Identity()
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, frames, C_in, H, W) -> (B, ceil(frames/pt), ceil(H/ph), ceil(W/pw), C); every axis zero-padded at
        its end to whole patches."""
        check_video_pixel_values(pixel_values, self.num_channels, self.patch_size)
        x = pixel_values.transpose(1, 2)  # (B, C_in, T, H, W)
        pads = [(-n) % p for n, p in zip(x.shape[2:], self.patch_size)]
        if any(pads):
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        x = self.proj(x.to(self.proj.weight.dtype)).permute(0, 2, 3, 4, 1)  # (B, T', H', W', C)
        return self.drop(self.norm(x))


def check_video_pixel_values(pixel_values: torch.Tensor, channels: int, patch_size: Size3) -> None:
    """Raise a ValueError that names the expected shape when pixel_values cannot be the model's input."""
    expected = f"(batch, frames, {channels}, height, width)"
    shape = tuple(pixel_values.shape)
    if pixel_values.ndim != 5:
        hint = " (one video: add the batch axis with pixel_values[None])" if pixel_values.ndim == 4 else ""
        raise ValueError(f"Video Swin expects pixel_values of shape {expected}, got {pixel_values.ndim}-D {shape}{hint}.")
    if shape[2] != channels:
        if shape[-1] == channels:
            fix = "it looks channels-last: use pixel_values.permute(0, 1, 4, 2, 3)"
        elif shape[1] == channels:
            fix = "it looks like torchvision's (batch, channels, frames, H, W): use pixel_values.transpose(1, 2)"
        else:
            fix = "set `num_channels` in the config if the frames really have another channel count"
        raise ValueError(f"Video Swin expects pixel_values of shape {expected}, got {shape}; {fix}.")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values has dtype {pixel_values.dtype}; Video Swin expects normalised floating-point pixels.")
    frames, height, width = shape[1], shape[3], shape[4]
    if frames < patch_size[0] or height < patch_size[1] or width < patch_size[2]:
        raise ValueError(
            f"Video Swin expects pixel_values of shape {expected} with at least {patch_size[0]} frames of "
            f"{patch_size[1]}x{patch_size[2]} pixels (one patch), got {shape}; repeat frames or resize up."
        )
    if shape[0] == 0:
        raise ValueError("pixel_values is a batch of 0 videos; pass at least one.")


# ---- 5. The model ---------------------------------------------------------------------------------


@dataclass
class VideoSwinModelOutput(ModelOutput):
    """last_hidden_state: (B, L, C) last-stage tokens after the final LayerNorm, L = T/2 * H/32 * W/32.
    pooler_output: (B, C), their average. hidden_states: with `output_hidden_states`, (B, L_i, C_i) for the patch
    embedding and each stage's output (after its patch merging); reshaped_hidden_states: the same as
    (B, C_i, T_i, H_i, W_i). attentions: with `output_attentions`, each stage's last block's probabilities,
    (B * num_windows, heads, N, N), N = t*h*w."""

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class VideoSwinClassifierOutput(ModelOutput):
    """loss: with `labels`, as SwinForImageClassification's. logits: (B, num_labels). The rest as in VideoSwinModelOutput."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.FloatTensor, ...] | None = None


class VideoSwinPreTrainedModel(SwinPreTrainedModel):
    """Swin's PreTrainedModel plumbing (initialisation, attention implementations, speed paths) for video."""

    config_class = VideoSwinConfig
    input_modalities = ("video",)
    _no_split_modules = ["VideoSwinBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Swin's initialisation; the Conv3d of the patch embedding as Swin's Conv2d (truncated normal, zero bias)."""
        if isinstance(module, nn.Conv3d):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """save_pretrained (transformers copies the model's code files), plus the video processor's code (every
        auto_map entry loads without swin_hf)."""
        PreTrainedModel.save_pretrained(self, save_directory, *args, **kwargs)
        folder = Path(save_directory)
        for name in ("image_processing_video_swin.py", "image_processing_swin.py"):
            if Path(__file__).with_name(name).exists():
                shutil.copy(Path(__file__).with_name(name), folder / name)
        for weights in folder.glob("*.safetensors"):  # safetensors writes them 0600: the other files' mode
            weights.chmod((folder / "config.json").stat().st_mode & 0o777)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """A saved Video Swin folder or Hub id (no image-Swin conversion applies)."""
        return PreTrainedModel.from_pretrained.__func__(cls, pretrained_model_name_or_path, *args, **kwargs)


class VideoSwinModel(VideoSwinPreTrainedModel):
    """The Video Swin encoder: 3D patch embedding, stages, final LayerNorm and average pooling.

    Example:
        >>> import torch
        >>> from swin_hf import VideoSwinConfig, VideoSwinModel
        >>> config = VideoSwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[2, 4, 4])
        >>> out = VideoSwinModel(config).eval()(torch.randn(1, 8, 3, 32, 32))
        >>> tuple(out.last_hidden_state.shape), tuple(out.pooler_output.shape)
        ((1, 64, 32), (1, 32))
    """

    def __init__(self, config: VideoSwinConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.num_features, self.add_pooling_layer = config.hidden_size, add_pooling_layer
        self.embeddings = VideoSwinEmbeddings(config)
        total = sum(config.depths)  # stochastic depth rises linearly from 0 to drop_path_rate over all blocks
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = [sum(config.depths[:s]) for s in range(len(config.depths))]
        self.stages = nn.ModuleList(
            VideoSwinStage(config, s, rates[start : start + depth]) for s, (start, depth) in enumerate(zip(starts, config.depths))
        )
        self.norm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.proj

    def forward(
        self, pixel_values: torch.Tensor, output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None, **kwargs,
    ) -> VideoSwinModelOutput | tuple:  # fmt: skip
        """pixel_values: (B, frames, num_channels, H, W) floats, any frame count and size of at least one patch."""
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict

        x = self.embeddings(pixel_values)  # (B, T/2, H/4, W/4, C)
        maps, attentions = [x], []
        for stage in self.stages:
            x, weights = stage(x, output_attentions)
            maps.append(x)
            attentions.append(weights)
        B, C = x.shape[0], x.shape[-1]
        last_hidden_state = self.norm(x.reshape(B, -1, C))  # (B, L, C)
        pooled = last_hidden_state.mean(dim=1) if self.add_pooling_layer else None  # (B, C)
        hidden_states = tuple(m.reshape(B, -1, m.shape[-1]) for m in maps) if output_hidden_states else None
        reshaped = tuple(m.permute(0, 4, 1, 2, 3) for m in maps) if output_hidden_states else None  # (B, C_i, T_i, H_i, W_i)
        attentions = tuple(attentions) if output_attentions else None
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled, hidden_states, attentions, reshaped) if v is not None)
        return VideoSwinModelOutput(last_hidden_state, pooled, hidden_states, attentions, reshaped)


# ---- 6. Head --------------------------------------------------------------------------------------


class VideoSwinForVideoClassification(VideoSwinPreTrainedModel):
    """VideoSwinModel + a linear classifier on the pooled features.

    Example:
        >>> import torch
        >>> from swin_hf import VideoSwinConfig, VideoSwinForVideoClassification
        >>> config = VideoSwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[2, 4, 4], num_labels=3)
        >>> out = VideoSwinForVideoClassification(config).eval()(torch.randn(2, 8, 3, 32, 32), labels=torch.tensor([0, 2]))
        >>> tuple(out.logits.shape), out.loss.ndim
        ((2, 3), 0)
    """

    def __init__(self, config: VideoSwinConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.swin = VideoSwinModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None, **kwargs,
    ) -> VideoSwinClassifierOutput | tuple:  # fmt: skip
        """labels and `num_items_in_batch` as in SwinForImageClassification."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.swin(pixel_values, output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(out.pooler_output)  # (B, num_labels)
        loss = None if labels is None else classification_loss(logits, labels, self.config, num_items_in_batch)
        rest = (out.hidden_states, out.attentions, out.reshaped_hidden_states)
        if not return_dict:
            return tuple(v for v in (loss, logits, *rest) if v is not None)
        return VideoSwinClassifierOutput(loss, logits, *rest)

    @classmethod
    def from_image_model(
        cls, model_or_path, num_frames: int = 32, temporal_patch_size: int = 2, temporal_window_size: int = 8, **overrides
    ) -> "VideoSwinForVideoClassification":
        """The paper's initialisation: a Video Swin whose weights are inflated from a swin_hf V1 image model (a model
        or a saved folder / Hub id: classification, backbone, SimMIM or converted). The patch-embedding kernel is
        repeated `temporal_patch_size` times over time and divided by it (a still video embeds as its frame does);
        each relative position bias table is repeated over the 2T-1 time offsets; everything else is copied, the
        classifier too when `num_labels` is not changed by `overrides` (otherwise it is freshly initialised).
        `overrides`: other VideoSwinConfig fields (num_labels, drop_path_rate, id2label...)."""
        image = _load_image_encoder(model_or_path)
        source = image.config
        if source.version != 1:
            raise ValueError("from_image_model inflates Swin V1 weights; this image model is Swin V2 (config.version=2).")
        if source.use_absolute_embeddings:
            raise ValueError("from_image_model: the image model has an absolute position embedding, which Video Swin has no place for.")
        patch, window = (source.patch_size,) * 2 if isinstance(source.patch_size, int) else tuple(source.patch_size), source.window_size
        values = dict(
            image_size=source.image_size, num_frames=num_frames, patch_size=[temporal_patch_size, *patch], num_channels=source.num_channels,
            embed_dim=source.embed_dim, depths=list(source.depths), num_heads=list(source.num_heads),
            window_size=[temporal_window_size, window, window], mlp_ratio=source.mlp_ratio, qkv_bias=source.qkv_bias,
            hidden_act=source.hidden_act, layer_norm_eps=source.layer_norm_eps, drop_path_rate=source.drop_path_rate,
            num_labels=source.num_labels, id2label=source.id2label, label2id=source.label2id,
        )  # fmt: skip
        values.update(overrides)
        video = cls(VideoSwinConfig(**values))
        state = {f"swin.{k}": v for k, v in image.swin.state_dict().items()}
        head = image.classifier
        if head is not None and tuple(head.weight.shape) == tuple(getattr(video.classifier, "weight", torch.empty(0)).shape):
            state.update({f"classifier.{k}": v for k, v in head.state_dict().items()})
        missing, unexpected = video.load_state_dict(inflate_state_dict(state, video.config), strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise ValueError(f"from_image_model: the image weights do not fit the video model (missing {missing}, unexpected {unexpected}).")
        return video


def _load_image_encoder(model_or_path) -> nn.Module:
    """An object with `.config` (a SwinConfig), `.swin` (its encoder) and `.classifier` (a head or None)."""
    if isinstance(model_or_path, nn.Module):
        encoder = model_or_path if hasattr(model_or_path, "embeddings") else getattr(model_or_path, "swin", None)
        if encoder is None or not hasattr(encoder, "stages"):
            raise ValueError(f"from_image_model takes a swin_hf Swin image model; got a {type(model_or_path).__name__}.")
        head = getattr(model_or_path, "classifier", None)
        return _Image(encoder.config, encoder, head if isinstance(head, nn.Linear) else None)
    config = AutoConfig.from_pretrained(model_or_path)
    if getattr(config, "model_type", None) != "swin_hf":
        raise ValueError(f"from_image_model: {model_or_path!r} is not a swin_hf Swin image checkpoint (model_type {config.model_type!r}).")
    if "SwinForImageClassification" in (config.architectures or []):
        model = SwinForImageClassification.from_pretrained(model_or_path)
        return _Image(model.config, model.swin, model.classifier)
    model = SwinModel.from_pretrained(model_or_path)
    return _Image(model.config, model, None)


@dataclass
class _Image:
    config: object
    swin: nn.Module
    classifier: nn.Module | None


def inflate_state_dict(state_dict: dict[str, torch.Tensor], config: VideoSwinConfig) -> dict[str, torch.Tensor]:
    """An image Swin V1 state dict (swin_hf names, `swin.` body, `classifier` head) as Video Swin weights for `config`:
    the Conv2d kernel (C, C_in, p, p) -> (C, C_in, pt, p, p) repeated over time / pt, each bias table
    ((2M-1)^2, heads) -> ((2T-1)(2M-1)^2, heads) repeated over the time offsets; every other tensor as it is.
    Keys the video model has no place for (a mask token, backbone norms) raise a ValueError naming them."""
    T = config.window_size[0]
    pt = config.patch_size[0]
    out = {}
    for key, value in state_dict.items():
        if key == "swin.embeddings.proj.weight":
            value = value.unsqueeze(2).repeat(1, 1, pt, 1, 1) / pt  # (C, C_in, pt, p, p)
        elif key.endswith("relative_position_bias_table"):
            value = value.repeat(2 * T - 1, 1)  # offset index dt * (2M-1)^2 + spatial: the table once per dt
        elif key == "swin.embeddings.mask_token":
            continue  # SimMIM's mask token: pre-training only
        out[key] = value
    return out


__all__ = [
    "VideoSwinBlock", "VideoSwinClassifierOutput", "VideoSwinEmbeddings", "VideoSwinForVideoClassification", "VideoSwinModel",
    "VideoSwinModelOutput", "VideoSwinPreTrainedModel", "WindowAttention3D", "check_video_pixel_values", "inflate_state_dict",
    "shifted_window_mask_3d", "video_window_geometry", "window_partition_3d", "window_reverse_3d",
]  # fmt: skip
