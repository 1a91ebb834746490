"""SwinConfig: the hyper-parameters of a Swin Transformer (Liu et al., ICCV 2021).

Self-contained on purpose (it imports nothing from swin_hf): `save_pretrained` copies this file
next to the weights so that `trust_remote_code=True` works where swin_hf is not installed.
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.backbone_utils import BackboneConfigMixin

# The paper's models (Table 1 of the paper; 384² variants from its fine-tuning section).
# name -> (embed_dim C, depths, num_heads, window M, image size)
PRESETS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], int, int]] = {
    "swin-tiny-patch4-window7-224": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin-small-patch4-window7-224": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "swin-base-patch4-window7-224": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224),
    "swin-base-patch4-window12-384": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
    "swin-large-patch4-window7-224": (192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224),
    "swin-large-patch4-window12-384": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
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
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        self._validate()
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
        def fail(field: str, problem: str, fix: str) -> None:
            raise ValueError(f"SwinConfig.{field}: {problem}. {fix}")

        for field in ("image_size", "patch_size"):
            size = to_pair(getattr(self, field))
            if len(size) != 2 or any(not isinstance(s, int) or s <= 0 for s in size):
                fail(field, f"got {getattr(self, field)!r}", "Use a positive int or a pair of positive ints.")
        for field in ("num_channels", "embed_dim", "window_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                fail(field, f"got {value!r}", "Use a positive integer.")
        if not self.depths or any(not isinstance(d, int) or d <= 0 for d in self.depths):
            fail("depths", f"got {self.depths!r}", "Use a non-empty list of positive block counts, e.g. [2, 2, 6, 2].")
        if len(self.num_heads) != len(self.depths):
            fail(
                "num_heads",
                f"has {len(self.num_heads)} entries but depths has {len(self.depths)}",
                "Give one head count per stage.",
            )
        for stage, heads in enumerate(self.num_heads):
            width = self.embed_dim * 2**stage
            if not isinstance(heads, int) or heads <= 0 or width % heads:
                fail(
                    "num_heads",
                    f"stage {stage + 1} has width {width} (embed_dim * 2**{stage}), not divisible by {heads!r} heads",
                    "Choose head counts that divide each stage width, or change embed_dim.",
                )
        if self.mlp_ratio <= 0:
            fail("mlp_ratio", f"got {self.mlp_ratio!r}", "Use a positive ratio (4.0 in the paper).")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                fail(field, f"got {value!r}", "Use a probability in [0, 1).")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            fail("layer_norm_eps/initializer_range", "must be positive", "Use e.g. 1e-5 and 0.02.")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SwinConfig":
        """A config of one of the paper's models, e.g. ``"swin-tiny-patch4-window7-224"``.

        Keyword overrides (``num_labels=10``, ``drop_path_rate=0.2``, ...) replace preset values.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown Swin preset {name!r}. Available presets: {', '.join(PRESETS)}.")
        embed_dim, depths, num_heads, window, image_size = PRESETS[name]
        # stochastic depth of the official training configs
        drop_path = {"tiny": 0.2, "small": 0.3, "base": 0.5, "large": 0.2}[name.split("-")[1]]
        values = dict(
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=window,
            image_size=image_size,
            patch_size=4,
            drop_path_rate=drop_path,
        )
        values.update(overrides)
        return cls(**values)
