"""Instance segmentation with Swin: transformers' Mask2Former (`Mask2FormerForUniversalSegmentation`) on a
swin_hf backbone.

Mask2Former takes its backbone through `backbone_config`; after ``import swin_hf`` that can be a
`swin_hf.SwinConfig` with `out_features`, which `load_backbone` builds into a `SwinBackbone` and
`from_pretrained` rebuilds. Its pixel decoder reads the channels of the maps from the backbone itself,
but their strides from `feature_strides`, and its multi-scale deformable encoder works on the three
coarsest maps while the finer ones (down to `common_stride`) join through an FPN; `mask2former_config`
derives those from the Swin config so that the wiring is right by construction. The deformable
attention runs as plain PyTorch (`grid_sample`): no custom kernels, no timm, no torchvision.

`mask2former_from_encoder` builds one whose backbone starts from any swin_hf checkpoint (classification,
SimMIM, backbone, converted official/timm/transformers weights; V1 or V2), through `load_swin_encoder`.
`instance_processor` is the image processor saved beside it: `pipeline("image-segmentation",
subtask="instance")` resizes with it and turns the queries into masks at the input image's size.
"""

from __future__ import annotations

import copy
import logging
import os

from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation

from ..configuration_swin import SwinConfig
from ..detection import feature_geometry
from . import load_swin_encoder

logger = logging.getLogger(__name__)

# the three coarsest maps feed Mask2Former's deformable pixel decoder; it needs at least one finer map too
MIN_STAGES = 4


def mask2former_config(
    backbone_config: SwinConfig,
    id2label: dict[int, str] | None = None,
    num_labels: int | None = None,
    out_features: list[str] | tuple[str, ...] | None = None,
    **head_kwargs,
) -> Mask2FormerConfig:
    """The `Mask2FormerConfig` of a Mask2Former on a Swin backbone, its maps wired in.

    `out_features` defaults to every stage (the paper's stage1-4, strides 4-32, as Mask2Former reads a
    Swin's). Derived: `feature_strides` (the strides of those maps) and `common_stride` (the finest of
    them: the mask features' stride). Other `Mask2FormerConfig` fields pass through (`head_kwargs`:
    hidden_dim, num_queries, decoder_layers, train_num_points...).

    Example:
        >>> from swin_hf import SwinConfig
        >>> from swin_hf.segmentation.instance import mask2former_config
        >>> swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, patch_size=2)
        >>> config = mask2former_config(swin, {0: "cat", 1: "dog"})
        >>> config.backbone_config.out_features, config.feature_strides, config.common_stride, config.num_labels
        (['stage1', 'stage2', 'stage3', 'stage4'], [2, 4, 8, 16], 2, 2)
    """
    backbone_config = copy.deepcopy(backbone_config)
    stages = backbone_config.stage_names[1:]
    out_features = list(out_features) if out_features is not None else list(stages)
    if len(out_features) < MIN_STAGES:
        raise ValueError(
            f"Mask2Former reads {MIN_STAGES} feature maps (three for its deformable encoder, a finer one for the mask "
            f"features); out_features {out_features} has {len(out_features)}. Use a Swin of {MIN_STAGES} stages or more."
        )
    backbone_config.out_features = out_features  # the setter re-derives out_indices
    _, strides = feature_geometry(backbone_config, out_features)
    kwargs = dict(head_kwargs)
    kwargs.update(feature_strides=strides)
    kwargs.setdefault("common_stride", min(strides))
    if id2label is not None:
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"id2label has {len(id2label)} entries but num_labels={num_labels}; make them agree.")
        kwargs["id2label"] = {int(k): v for k, v in id2label.items()}
        kwargs["label2id"] = {v: int(k) for k, v in id2label.items()}
    elif num_labels is not None:
        kwargs["num_labels"] = num_labels
    # (transformers warns that "swin_hf" is not its "swin"; the models are the same family and it builds ours)
    logging.getLogger("transformers.models.mask2former.configuration_mask2former").setLevel(logging.ERROR)
    return Mask2FormerConfig(backbone_config=backbone_config, **kwargs)


def head_settings(hidden_size: int = 256, num_queries: int = 100, encoder_layers: int = 6, decoder_layers: int = 10,
                  train_num_points: int = 12544, head_dim: int = 32, ffn_ratio: int = 4) -> dict:
    """A Mask2Former head's size in its config's words: one width for the pixel decoder's features, the mask
    features and the transformer decoder (`feature_size`, `mask_feature_size`, `hidden_dim`), feed-forward
    widths `ffn_ratio` x width, attention heads width / `head_dim`, the queries, the pixel decoder's encoder
    layers and the transformer decoder's layers, and the points sampled per mask in the loss.

    Example:
        >>> from swin_hf.segmentation.instance import head_settings
        >>> head_settings(64, num_queries=10)["num_attention_heads"]
        2
    """
    return dict(feature_size=hidden_size, mask_feature_size=hidden_size, hidden_dim=hidden_size,
                encoder_feedforward_dim=ffn_ratio * hidden_size, dim_feedforward=ffn_ratio * hidden_size,
                num_attention_heads=max(1, hidden_size // head_dim), num_queries=num_queries,
                encoder_layers=encoder_layers, decoder_layers=decoder_layers, train_num_points=train_num_points)


def mask2former_from_encoder(
    pretrained: str | os.PathLike | SwinConfig,
    id2label: dict[int, str] | None = None,
    num_labels: int | None = None,
    out_features: list[str] | tuple[str, ...] | None = None,
    **head_kwargs,
) -> Mask2FormerForUniversalSegmentation:
    """A transformers Mask2Former on a Swin backbone, in one call (see `mask2former_config`).

    `pretrained` is a swin_hf checkpoint (its encoder weights are loaded into the backbone: a classifier, a
    SimMIM model, a backbone, a converted official/timm/transformers Swin; V1 or V2) or a `SwinConfig`
    (random initialisation).

    Example:
        >>> import torch
        >>> from swin_hf import SwinConfig
        >>> from swin_hf.segmentation.instance import head_settings, mask2former_from_encoder
        >>> swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4)
        >>> model = mask2former_from_encoder(swin, {0: "cat", 1: "dog"}, **head_settings(32, 5, 1, 2)).eval()
        >>> out = model(pixel_values=torch.randn(1, 3, 64, 96))
        >>> tuple(out.class_queries_logits.shape), tuple(out.masks_queries_logits.shape)
        ((1, 5, 3), (1, 5, 16, 24))
    """
    if isinstance(pretrained, SwinConfig):
        backbone_config, checkpoint = pretrained, None
    else:
        backbone_config, checkpoint = SwinConfig.from_pretrained(pretrained), pretrained
    config = mask2former_config(backbone_config, id2label, num_labels, out_features, **head_kwargs)
    model = Mask2FormerForUniversalSegmentation(config)
    if checkpoint is not None:
        load_swin_encoder(model, checkpoint)
    return model


def instance_processor(size: int | tuple[int, int], image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)):
    """The Mask2Former image processor that `pipeline("image-segmentation")` uses with the model: resize to
    the fixed `size` (height, width) without keeping the aspect ratio and without padding, rescale to 0-1,
    normalise; its `post_process_instance_segmentation` gives masks at each input image's own size. The
    torchvision-backed class when torchvision loads, else its PIL twin (same preprocessing)."""
    height, width = (size, size) if isinstance(size, int) else size
    try:
        import torchvision  # noqa: F401  (the default backend needs it)
        from transformers import Mask2FormerImageProcessor as processor_class
    except ImportError:
        from transformers.models.mask2former.image_processing_pil_mask2former import (
            Mask2FormerImageProcessorPil as processor_class,
        )
    return processor_class(size={"height": height, "width": width}, do_resize=True, do_rescale=True, do_normalize=True,
                           image_mean=list(image_mean), image_std=list(image_std), do_pad=False,
                           ignore_index=255, do_reduce_labels=False)


__all__ = [
    "MIN_STAGES",
    "head_settings",
    "instance_processor",
    "mask2former_config",
    "mask2former_from_encoder",
]
