"""SwinConfig: the hyper-parameters of a Swin Transformer (Liu et al., ICCV 2021) or Swin V2 (Liu et al.,
"Swin Transformer V2: Scaling Up Capacity and Resolution", CVPR 2022).

Self-contained on purpose (it imports nothing from swin_hf): `save_pretrained` copies this file
next to the weights so that `trust_remote_code=True` works where swin_hf is not installed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.backbone_utils import BackboneConfigMixin


class Preset(NamedTuple):
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    image_size: int
    version: int = 1
    pretrained_window_sizes: tuple[int, ...] | None = None
    num_labels: int | None = None  # the released checkpoint's head, where it is not ImageNet-1k's


_T, _S = (2, 2, 6, 2), (2, 2, 18, 2)
_HEADS = {96: (3, 6, 12, 24), 128: (4, 8, 16, 32), 192: (6, 12, 24, 48)}
_V2_FT = (12, 12, 12, 6)  # the window of each stage when pre-trained on ImageNet-22k at 192²

# The paper's models (Table 1 of the paper; 384² variants from its fine-tuning section), and Swin V2's
# released models (its paper's Table 2 and the official repository's model zoo).
PRESETS: dict[str, Preset] = {
    "swin-tiny-patch4-window7-224": Preset(96, _T, _HEADS[96], 7, 224),
    "swin-small-patch4-window7-224": Preset(96, _S, _HEADS[96], 7, 224),
    "swin-base-patch4-window7-224": Preset(128, _S, _HEADS[128], 7, 224),
    "swin-base-patch4-window12-384": Preset(128, _S, _HEADS[128], 12, 384),
    "swin-large-patch4-window7-224": Preset(192, _S, _HEADS[192], 7, 224),
    "swin-large-patch4-window12-384": Preset(192, _S, _HEADS[192], 12, 384),
    "swinv2-tiny-patch4-window8-256": Preset(96, _T, _HEADS[96], 8, 256, 2),
    "swinv2-tiny-patch4-window16-256": Preset(96, _T, _HEADS[96], 16, 256, 2),
    "swinv2-small-patch4-window8-256": Preset(96, _S, _HEADS[96], 8, 256, 2),
    "swinv2-small-patch4-window16-256": Preset(96, _S, _HEADS[96], 16, 256, 2),
    "swinv2-base-patch4-window8-256": Preset(128, _S, _HEADS[128], 8, 256, 2),
    "swinv2-base-patch4-window16-256": Preset(128, _S, _HEADS[128], 16, 256, 2),
    "swinv2-base-patch4-window12-192-22k": Preset(128, _S, _HEADS[128], 12, 192, 2, None, 21841),
    "swinv2-large-patch4-window12-192-22k": Preset(192, _S, _HEADS[192], 12, 192, 2, None, 21841),
    "swinv2-base-patch4-window12to16-192to256-22kto1k-ft": Preset(128, _S, _HEADS[128], 16, 256, 2, _V2_FT),
    "swinv2-base-patch4-window12to24-192to384-22kto1k-ft": Preset(128, _S, _HEADS[128], 24, 384, 2, _V2_FT),
    "swinv2-large-patch4-window12to16-192to256-22kto1k-ft": Preset(192, _S, _HEADS[192], 16, 256, 2, _V2_FT),
    "swinv2-large-patch4-window12to24-192to384-22kto1k-ft": Preset(192, _S, _HEADS[192], 24, 384, 2, _V2_FT),
}


# Where each Auto class finds swin_hf's code inside a saved folder (`trust_remote_code=True` without
# swin_hf installed). The model's save_pretrained copies these files next to the weights.
AUTO_MAP = {
    "AutoConfig": "configuration_swin.SwinConfig",
    "AutoModel": "modeling_swin.SwinModel",
    "AutoModelForImageClassification": "modeling_swin.SwinForImageClassification",
    "AutoBackbone": "modeling_swin.SwinBackbone",
    "AutoImageProcessor": "image_processing_swin.SwinImageProcessor",
}


def to_pair(value) -> tuple[int, int]:
    """An image or patch size as (height, width): 224 -> (224, 224), [224, 192] -> (224, 192)."""
    return (value, value) if isinstance(value, int) else tuple(value)


class SwinConfig(BackboneConfigMixin, PretrainedConfig):
    r"""Configuration of a Swin Transformer.

    Args:
        image_size: the resolution the model is trained at (int or (H, W)). Any input size works at
            run time; this one sizes the absolute position embeddings and is the processor's default.
        patch_size: side of the square patches of the patch partition (4 in the paper).
        num_channels: input image channels.
        embed_dim: C, the width of stage 1; stage i has width C * 2**(i-1).
        depths: number of Swin blocks per stage (Swin-T: 2, 2, 6, 2).
        num_heads: attention heads per stage (Swin-T: 3, 6, 12, 24).
        window_size: M, the side of the attention windows (7 at 224², 12 at 384²).
        mlp_ratio: hidden width of the MLP relative to the stage width.
        qkv_bias: learn biases for the query/key/value projection.
        hidden_dropout_prob: dropout after the attention projection and inside the MLP.
        attention_probs_dropout_prob: dropout on the attention probabilities.
        drop_path_rate: stochastic depth; rises linearly from 0 to this value over all blocks.
        hidden_act: activation of the MLP (GELU in the paper).
        use_absolute_embeddings: add a learned absolute position embedding after patch embedding.
        layer_norm_eps: epsilon of every LayerNorm.
        initializer_range: std of the truncated-normal initialisation of linear layers and tables.
        version: 1 (the paper) or 2 (Swin V2: res-post-norm, scaled cosine attention, log-spaced
            continuous position bias, patch merging that normalises after the reduction).
        pretrained_window_sizes: Swin V2 only: per stage, the window the weights were pre-trained with
            (0: this model's own window); the continuous position bias normalises offsets by it.
        out_features / out_indices: which of "stem", "stage1".."stage4" `SwinBackbone` returns.

    Example:
        >>> from swin_hf import SwinConfig
        >>> config = SwinConfig.from_preset("swin-tiny-patch4-window7-224", num_labels=10)
        >>> config.hidden_size
        768
    """

    model_type = "swin_hf"
    attribute_map = {"num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int | list[int] | tuple[int, int] = 4
    num_channels: int = 3
    embed_dim: int = 96
    depths: list[int] | tuple[int, ...] = (2, 2, 6, 2)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    encoder_stride: int = 32
    version: int = 1
    pretrained_window_sizes: list[int] | tuple[int, ...] | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self._validate()
        self.depths, self.num_heads = list(self.depths), list(self.num_heads)
        if self.pretrained_window_sizes is not None:
            self.pretrained_window_sizes = list(self.pretrained_window_sizes)
        self.num_layers = len(self.depths)
        # Width after the last stage; the name other transformers models (e.g. VisionEncoderDecoder) read.
        self.hidden_size = int(self.embed_dim * 2 ** (self.num_layers - 1))
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_layers + 1)]
        if not getattr(self, "auto_map", None):
            self.auto_map = dict(AUTO_MAP)
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        """Raise a ValueError naming the field, what it holds and what to use, for any value the model
        cannot be built from (a config.json edited by hand included)."""

        def fail(field: str, problem: str, fix: str) -> None:
            raise ValueError(f"SwinConfig.{field}: {problem}. {fix}")

        def positive_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        def number(value) -> bool:
            """A finite int or float (NaN and infinities are refused: they make every output NaN)."""
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        for field in ("image_size", "patch_size"):
            value = getattr(self, field)
            size = to_pair(value) if isinstance(value, (int, list, tuple)) else ()
            if len(size) != 2 or not all(positive_int(s) for s in size):
                fail(field, f"got {value!r}", "Use a positive int or a pair of positive ints.")
        for field in ("num_channels", "embed_dim", "window_size", "encoder_stride"):
            if not positive_int(getattr(self, field)):
                fail(field, f"got {getattr(self, field)!r}", "Use a positive integer.")
        for field, example in (("depths", "[2, 2, 6, 2]"), ("num_heads", "[3, 6, 12, 24]")):
            value = getattr(self, field)
            if not isinstance(value, (list, tuple)) or not value or not all(positive_int(v) for v in value):
                fail(field, f"got {value!r}", f"Use a non-empty list of positive integers, one per stage, e.g. {example}.")
        if len(self.num_heads) != len(self.depths):
            fail("num_heads", f"has {len(self.num_heads)} entries but depths has {len(self.depths)}", "Give one head count per stage.")
        for stage, heads in enumerate(self.num_heads):
            width = self.embed_dim * 2**stage
            if width % heads:
                fail(
                    "num_heads",
                    f"stage {stage + 1} has width {width} (embed_dim * 2**{stage}), not divisible by {heads!r} heads",
                    "Choose head counts that divide each stage width, or change embed_dim.",
                )
        if not number(self.mlp_ratio) or self.mlp_ratio <= 0:
            fail("mlp_ratio", f"got {self.mlp_ratio!r}", "Use a positive, finite ratio (4.0 in the paper).")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, field)
            if not number(value) or not 0.0 <= value < 1.0:
                fail(field, f"got {value!r}", "Use a probability in [0, 1).")
        for field, example in (("layer_norm_eps", "1e-5"), ("initializer_range", "0.02")):
            value = getattr(self, field)
            if not number(value) or value <= 0:
                fail(field, f"got {value!r}", f"Use a positive, finite number, e.g. {example}.")
        for field in ("qkv_bias", "use_absolute_embeddings"):
            if not isinstance(getattr(self, field), bool):
                fail(field, f"got {getattr(self, field)!r}", "Use true or false.")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            fail("hidden_act", f"got {self.hidden_act!r}", "Use an activation name transformers knows, e.g. \"gelu\".")
        if self.version not in (1, 2) or isinstance(self.version, bool):
            fail("version", f"got {self.version!r}", "Use 1 (Swin) or 2 (Swin V2).")
        windows = self.pretrained_window_sizes
        if windows is not None:
            if self.version != 2:
                fail("pretrained_window_sizes", "is a Swin V2 setting", "Set version=2, or leave it out.")
            valid = isinstance(windows, (list, tuple)) and all(isinstance(w, int) and w >= 0 for w in windows)
            if not valid or len(windows) != len(self.depths):
                fail("pretrained_window_sizes", f"got {windows!r}", "Give one window (0 = this model's) per stage.")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SwinConfig":
        """A config of one of the released models (`PRESETS`), e.g. ``"swin-tiny-patch4-window7-224"`` or
        ``"swinv2-tiny-patch4-window8-256"``. Keyword overrides (``num_labels=10``, ``drop_path_rate=0.2``,
        ...) replace preset values.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown Swin preset {name!r}. Available presets: {', '.join(PRESETS)}.")
        preset = PRESETS[name]
        # stochastic depth of the official training configs
        drop_path = {"tiny": 0.2, "small": 0.3, "base": 0.5, "large": 0.2}[name.split("-")[1]]
        values = dict(
            embed_dim=preset.embed_dim,
            depths=list(preset.depths),
            num_heads=list(preset.num_heads),
            window_size=preset.window_size,
            image_size=preset.image_size,
            patch_size=4,
            drop_path_rate=drop_path,
        )
        if preset.num_labels is not None:
            values["num_labels"] = preset.num_labels
        if preset.version == 2:
            windows = preset.pretrained_window_sizes or (0,) * len(preset.depths)
            values.update(version=2, pretrained_window_sizes=list(windows))
        values.update(overrides)
        return cls(**values)
