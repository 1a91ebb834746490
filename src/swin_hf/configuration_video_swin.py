"""VideoSwinConfig: the hyper-parameters of a Video Swin Transformer (Liu et al., "Video Swin Transformer",
CVPR 2022): Swin's shifted windows over (time, height, width).

Self-contained on purpose (it imports nothing from swin_hf): `save_pretrained` copies this file next to the
weights so that `trust_remote_code=True` works where swin_hf is not installed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from transformers import PretrainedConfig
from transformers.activations import ACT2FN


class VideoPreset(NamedTuple):
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    drop_path_rate: float  # the official Kinetics-400 training configs'


# The Kinetics-400 models of the paper (Table 1 and the official configs), the sizes of torchvision's swin3d_t/s/b:
# patch 2x4x4, window 8x7x7, 32 frames of 224x224 sampled every 2nd frame.
VIDEO_PRESETS: dict[str, VideoPreset] = {
    "video-swin-tiny": VideoPreset(96, (2, 2, 6, 2), (3, 6, 12, 24), 0.1),
    "video-swin-small": VideoPreset(96, (2, 2, 18, 2), (3, 6, 12, 24), 0.1),
    "video-swin-base": VideoPreset(128, (2, 2, 18, 2), (4, 8, 16, 32), 0.3),
}

# Where each Auto class finds swin_hf's code inside a saved folder (`trust_remote_code=True`).
VIDEO_AUTO_MAP = {
    "AutoConfig": "configuration_video_swin.VideoSwinConfig",
    "AutoModel": "modeling_video_swin.VideoSwinModel",
    "AutoModelForVideoClassification": "modeling_video_swin.VideoSwinForVideoClassification",
    "AutoImageProcessor": "image_processing_video_swin.VideoSwinImageProcessor",
}


def to_triple(value) -> tuple[int, int, int]:
    """A (time, height, width) size: 7 -> (7, 7, 7), [8, 7, 7] -> (8, 7, 7)."""
    return (value,) * 3 if isinstance(value, int) else tuple(value)


class VideoSwinConfig(PretrainedConfig):
    r"""Configuration of a Video Swin Transformer.

    Args:
        image_size: the frame resolution the model is trained at (int or (H, W)); the video processor's default.
            Any size works at run time.
        num_frames: the clip length the model is trained at (32 in the paper's Kinetics models); any works at run time.
        patch_size: (time, height, width) of the 3D patches (2, 4, 4 in the paper), or one int for all three.
        num_channels: input channels per frame.
        embed_dim: C, the width of stage 1; stage i has width C * 2**(i-1).
        depths / num_heads: blocks and attention heads per stage (tiny: [2, 2, 6, 2] / [3, 6, 12, 24]).
        window_size: (T, M, M) of the 3D attention windows, in tokens ((8, 7, 7) for Kinetics, (16, 7, 7) for SSv2).
        mlp_ratio, qkv_bias, hidden_dropout_prob, attention_probs_dropout_prob, drop_path_rate, hidden_act,
        layer_norm_eps, initializer_range: as in SwinConfig.
        patch_norm: a LayerNorm after the patch embedding (the paper's models, torchvision's swin3d).

    Example:
        >>> from swin_hf import VideoSwinConfig
        >>> config = VideoSwinConfig.from_preset("video-swin-tiny", num_labels=400)
        >>> config.hidden_size, config.window_size
        (768, [8, 7, 7])
    """

    model_type = "video_swin_hf"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}

    image_size: int | list[int] | tuple[int, int] = 224
    num_frames: int = 32
    patch_size: int | list[int] | tuple[int, int, int] = (2, 4, 4)
    num_channels: int = 3
    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: int | list[int] | tuple[int, int, int] = (8, 7, 7)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    patch_norm: bool = True

    def __post_init__(self, **kwargs):
        self._validate()
        self.depths, self.num_heads = list(self.depths), list(self.num_heads)
        self.patch_size, self.window_size = list(to_triple(self.patch_size)), list(to_triple(self.window_size))
        self.num_layers = len(self.depths)
        self.hidden_size = int(self.embed_dim * 2 ** (self.num_layers - 1))  # width after the last stage
        if not getattr(self, "auto_map", None):
            self.auto_map = dict(VIDEO_AUTO_MAP)
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        """A ValueError naming the field, what it holds and what to use, for any value the model cannot be built from."""

        def fail(field: str, problem: str, fix: str) -> None:
            raise ValueError(f"VideoSwinConfig.{field}: {problem}. {fix}")

        def positive_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for field, length, example in (("image_size", 2, "224"), ("patch_size", 3, "[2, 4, 4]"), ("window_size", 3, "[8, 7, 7]")):
            value = getattr(self, field)
            sizes = (value,) * length if isinstance(value, int) else value
            if not isinstance(sizes, (list, tuple)) or len(sizes) != length or not all(positive_int(s) for s in sizes):
                fail(field, f"got {value!r}", f"Use a positive int or {length} positive ints, e.g. {example}.")
        for field in ("num_frames", "num_channels", "embed_dim"):
            if not positive_int(getattr(self, field)):
                fail(field, f"got {getattr(self, field)!r}", "Use a positive integer.")
        for field, example in (("depths", "[2, 2, 6, 2]"), ("num_heads", "[3, 6, 12, 24]")):
            value = getattr(self, field)
            if not isinstance(value, (list, tuple)) or not value or not all(positive_int(v) for v in value):
                fail(field, f"got {value!r}", f"Use a non-empty list of positive integers, one per stage, e.g. {example}.")
        if len(self.num_heads) != len(self.depths):
            fail("num_heads", f"has {len(self.num_heads)} entries but depths has {len(self.depths)}", "Give one head count per stage.")
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                fail("num_heads", f"stage {stage + 1} has width {self.embed_dim * 2**stage}, not divisible by {heads} heads", "Choose head counts that divide each stage width.")
        if not number(self.mlp_ratio) or self.mlp_ratio <= 0:
            fail("mlp_ratio", f"got {self.mlp_ratio!r}", "Use a positive, finite ratio (4.0 in the paper).")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, field)
            if not number(value) or not 0.0 <= value < 1.0:
                fail(field, f"got {value!r}", "Use a probability in [0, 1).")
        for field in ("layer_norm_eps", "initializer_range"):
            if not number(getattr(self, field)) or getattr(self, field) <= 0:
                fail(field, f"got {getattr(self, field)!r}", "Use a positive, finite number.")
        for field in ("qkv_bias", "patch_norm"):
            if not isinstance(getattr(self, field), bool):
                fail(field, f"got {getattr(self, field)!r}", "Use true or false.")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            fail("hidden_act", f"got {self.hidden_act!r}", 'Use an activation name transformers knows, e.g. "gelu".')

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VideoSwinConfig":
        """A config of one of the paper's Kinetics models (`VIDEO_PRESETS`); keyword overrides replace preset values,
        e.g. ``window_size=[16, 7, 7]`` (the Something-Something v2 window) or ``num_labels=400``."""
        if name not in VIDEO_PRESETS:
            raise ValueError(f"Unknown Video Swin preset {name!r}. Available presets: {', '.join(VIDEO_PRESETS)}.")
        preset = VIDEO_PRESETS[name]
        values = dict(
            embed_dim=preset.embed_dim, depths=list(preset.depths), num_heads=list(preset.num_heads),
            drop_path_rate=preset.drop_path_rate, patch_size=[2, 4, 4], window_size=[8, 7, 7], image_size=224, num_frames=32,
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)


__all__ = ["VIDEO_AUTO_MAP", "VIDEO_PRESETS", "VideoPreset", "VideoSwinConfig", "to_triple"]
