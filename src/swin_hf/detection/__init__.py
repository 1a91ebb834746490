"""Object detection with Swin: the backbone glue for transformers' DETR-family detectors, here; the built-in
data set, dataset reading and checks, joint image/box augmentation (`detection.data`); COCO mAP and box
pictures (`detection.evaluate`); and the recipe, `recipes/detect.py` (`detection.train`).

transformers has no R-CNN family (the paper's Cascade Mask R-CNN / HTC++), but its DETR-family detectors
take any backbone through `backbone_config`. After ``import swin_hf`` that can be a `swin_hf.SwinConfig`
with `out_features`: the detector builds a `SwinBackbone` through `load_backbone` and `from_pretrained`
rebuilds it. What each head needs to know of the backbone differs - the channels and strides of the maps
(RT-DETR's `encoder_in_channels`, `feat_strides`), how many levels it reads (`num_feature_levels`) - and
`detector_config` derives it from the Swin config, so that the wiring is right by construction.

Supported heads (`HEADS`): ``rt_detr``, ``rt_detr_v2``, ``deformable_detr`` (multi-scale: stages 2-4 by
default), ``conditional_detr``, ``dab_detr``, ``detr`` (the last stage). None needs timm or torchvision,
and the deformable attention of Deformable DETR and RT-DETR runs as plain PyTorch (`grid_sample`), with
custom kernels switched off. `detector_from_encoder` builds one whose backbone starts from any swin_hf
checkpoint (classification, SimMIM, converted official/timm/transformers weights).

Images of a batch are never padded to each other's size: Swin's shifted windows are laid out from the
top-left corner of the padded canvas, so padding an image to its batch's largest one would move its
window boundaries and change its detections (the padded tokens would also join its windows).
`image_processor_for` resizes every image to the model's fixed input size (as RT-DETR's processor does)
and predicted boxes are scaled back to each image's own size. RT-DETR needs that size to be a multiple of
the coarsest map's stride (`size_multiple`).
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
from dataclasses import dataclass

import transformers

from ..configuration_swin import SwinConfig
from ..segmentation import find_swin_backbone, load_swin_encoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Head:
    """A transformers detector: its config, model and image processor classes (names in `transformers`),
    the model folder of that processor, and whether it reads several feature maps."""

    config: str
    model: str
    processor: str
    processor_module: str
    multi_scale: bool


HEADS: dict[str, Head] = {
    "rt_detr": Head("RTDetrConfig", "RTDetrForObjectDetection", "RTDetrImageProcessor", "rt_detr", True),
    "rt_detr_v2": Head("RTDetrV2Config", "RTDetrV2ForObjectDetection", "RTDetrImageProcessor", "rt_detr", True),
    "deformable_detr": Head("DeformableDetrConfig", "DeformableDetrForObjectDetection", "DeformableDetrImageProcessor",
                            "deformable_detr", True),
    "conditional_detr": Head("ConditionalDetrConfig", "ConditionalDetrForObjectDetection",
                             "ConditionalDetrImageProcessor", "conditional_detr", False),
    # DAB-DETR scores with sigmoids, as Conditional DETR does, and transformers gives it that processor
    "dab_detr": Head("DabDetrConfig", "DabDetrForObjectDetection", "ConditionalDetrImageProcessor", "conditional_detr", False),
    "detr": Head("DetrConfig", "DetrForObjectDetection", "DetrImageProcessor", "detr", False),
}
DEFAULT_HEAD = "rt_detr"


def _head(name: str) -> Head:
    if name not in HEADS:
        raise ValueError(f"Unknown detection head {name!r}; choose one of {sorted(HEADS)}.")
    return HEADS[name]


def head_of(config) -> str:
    """The HEADS name of a detector config (by its model type)."""
    for name, head in HEADS.items():
        if type(config).__name__ == head.config:
            return name
    raise ValueError(f"{type(config).__name__} is not one of the supported detectors {sorted(HEADS)}.")


def feature_geometry(backbone_config: SwinConfig, out_features) -> tuple[list[int], list[int]]:
    """(channels, strides) of the named Swin feature maps: stage i has embed_dim * 2^(i-1) channels at
    stride patch_size * 2^(i-1) ('stem': the patch embedding, embed_dim at stride patch_size)."""
    channels, strides = [], []
    for name in out_features:
        if name not in backbone_config.stage_names:
            raise ValueError(f"out_features names {name!r}, which is not one of {backbone_config.stage_names}.")
        level = max(0, backbone_config.stage_names.index(name) - 1)
        channels.append(backbone_config.embed_dim * 2**level)
        strides.append(backbone_config.patch_size * 2**level)
    return channels, strides


def size_multiple(config) -> int:
    """What the input height and width of a detector must be a multiple of: RT-DETR's feature pyramid
    doubles each map and joins it to the next finer one, so the sides must divide by the coarsest map's
    stride (32 for Swin's four stages); the others take any size."""
    return max(config.feat_strides) if head_of(config) in ("rt_detr", "rt_detr_v2") else 1


def detector_config(
    backbone_config: SwinConfig,
    head: str = DEFAULT_HEAD,
    id2label: dict[int, str] | None = None,
    num_labels: int | None = None,
    out_features: list[str] | tuple[str, ...] | None = None,
    **head_kwargs,
):
    """The transformers config of detector `head` on a Swin backbone, with the backbone's maps wired in.

    `out_features` defaults to the last three stages for multi-scale heads (strides 8/16/32 for the paper's
    models, as RT-DETR and Deformable DETR read a ResNet's C3-C5) and to the last stage otherwise. Derived:
    RT-DETR's `encoder_in_channels`, `feat_strides`, `num_feature_levels`, `decoder_in_channels` and
    `encode_proj_layers` (the attention-based intra-scale interaction runs on the coarsest map), RT-DETRv2's
    `decoder_n_levels`, Deformable DETR's `num_feature_levels`. Other fields pass through (`head_kwargs`).

    Example:
        >>> from swin_hf import SwinConfig
        >>> from swin_hf.detection import detector_config
        >>> swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4)
        >>> config = detector_config(swin, "rt_detr", id2label={0: "cat", 1: "dog"})
        >>> config.backbone_config.out_features, config.encoder_in_channels, config.feat_strides
        (['stage2', 'stage3', 'stage4'], [32, 64, 128], [8, 16, 32])
    """
    spec = _head(head)
    backbone_config = copy.deepcopy(backbone_config)
    stages = backbone_config.stage_names[1:]
    if out_features is None:
        out_features = stages[-3:] if spec.multi_scale else stages[-1:]
    out_features = list(out_features)
    if not spec.multi_scale and len(out_features) != 1:
        raise ValueError(f"{head} reads one feature map; give one out_feature (e.g. [{stages[-1]!r}]), not {out_features}.")
    backbone_config.out_features = out_features  # the setter re-derives out_indices
    channels, strides = feature_geometry(backbone_config, out_features)
    levels = len(out_features)
    kwargs = dict(head_kwargs)
    if head in ("rt_detr", "rt_detr_v2"):
        hidden = kwargs.setdefault("encoder_hidden_dim", kwargs.get("d_model", 256))
        kwargs.update(encoder_in_channels=channels, feat_strides=strides, num_feature_levels=levels,
                      decoder_in_channels=[hidden] * levels, encode_proj_layers=[levels - 1])
        if head == "rt_detr_v2":
            kwargs["decoder_n_levels"] = levels
    elif head == "deformable_detr":
        kwargs.setdefault("num_feature_levels", levels)
        kwargs["disable_custom_kernels"] = True  # grid_sample in PyTorch: no compiled kernels, on any device
    else:  # DETR, Conditional DETR, DAB-DETR: a torchvision ResNet from timm unless told otherwise
        kwargs.update(use_timm_backbone=False, use_pretrained_backbone=False)
    if id2label is not None:
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"id2label has {len(id2label)} entries but num_labels={num_labels}; make them agree.")
        kwargs["id2label"] = {int(k): v for k, v in id2label.items()}
        kwargs["label2id"] = {v: int(k) for k, v in id2label.items()}
    elif num_labels is not None:
        kwargs["num_labels"] = num_labels
    return getattr(transformers, spec.config)(backbone_config=backbone_config, **kwargs)


def head_settings(head: str, hidden_size: int = 256, num_queries: int = 300, encoder_layers: int = 1,
                  decoder_layers: int = 6, ffn_ratio: int = 4, head_dim: int = 32) -> dict:
    """The size of a detector's transformer in its own config's words: width (`d_model`, DAB-DETR's
    `hidden_size`, RT-DETR's `encoder_hidden_dim` too), queries, layers, feed-forward widths
    (`ffn_ratio` x width) and attention heads (width / `head_dim`).

    Example:
        >>> from swin_hf.detection import head_settings
        >>> head_settings("dab_detr", hidden_size=64, num_queries=20)["hidden_size"]
        64
    """
    _head(head)
    heads = max(1, hidden_size // head_dim)
    settings = dict(d_model=hidden_size, num_queries=num_queries, encoder_layers=encoder_layers,
                    decoder_layers=decoder_layers, encoder_ffn_dim=ffn_ratio * hidden_size,
                    decoder_ffn_dim=ffn_ratio * hidden_size, encoder_attention_heads=heads, decoder_attention_heads=heads)
    if head == "dab_detr":
        settings["hidden_size"] = settings.pop("d_model")
    if head in ("rt_detr", "rt_detr_v2"):
        settings["encoder_hidden_dim"] = hidden_size
    return settings


def detector_from_encoder(
    pretrained: str | os.PathLike | SwinConfig,
    head: str = DEFAULT_HEAD,
    id2label: dict[int, str] | None = None,
    num_labels: int | None = None,
    out_features: list[str] | tuple[str, ...] | None = None,
    **head_kwargs,
):
    """A transformers DETR-family detector on a Swin backbone, in one call (see `detector_config`).

    `pretrained` is a swin_hf checkpoint (its encoder weights are loaded into the backbone: a classifier,
    a SimMIM model, a backbone, a converted official/timm/transformers Swin) or a `SwinConfig` (random
    initialisation).

    Example:
        >>> import torch
        >>> from swin_hf import SwinConfig
        >>> from swin_hf.detection import detector_from_encoder
        >>> swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4)
        >>> model = detector_from_encoder(swin, "rt_detr", num_labels=3, d_model=32, encoder_hidden_dim=32,
        ...                               encoder_ffn_dim=64, decoder_ffn_dim=64, decoder_layers=2, num_queries=10).eval()
        >>> out = model(pixel_values=torch.randn(1, 3, 64, 96))
        >>> tuple(out.logits.shape), tuple(out.pred_boxes.shape)
        ((1, 10, 3), (1, 10, 4))
    """
    if isinstance(pretrained, SwinConfig):
        backbone_config, checkpoint = pretrained, None
    else:
        backbone_config, checkpoint = SwinConfig.from_pretrained(pretrained), pretrained
    config = detector_config(backbone_config, head, id2label, num_labels, out_features, **head_kwargs)
    model = getattr(transformers, _head(head).model)(config)
    if checkpoint is not None:
        load_swin_encoder(model, checkpoint)
    return model


def image_processor_for(head: str, size: int | tuple[int, int], image_mean=(0.485, 0.456, 0.406),
                        image_std=(0.229, 0.224, 0.225)):
    """The transformers image processor of `head` that `pipeline("object-detection")` uses: resize to the
    fixed `size` (height, width) without keeping the aspect ratio and without padding, rescale to 0-1,
    normalise with `image_mean`/`image_std`; its `post_process_object_detection` turns the model's
    normalised boxes into pixels of each original image. The torchvision-backed class when torchvision
    loads, else its PIL twin (same preprocessing)."""
    height, width = (size, size) if isinstance(size, int) else size
    spec = _head(head)
    try:
        import torchvision  # noqa: F401  (the default backend needs it)

        processor_class = getattr(transformers, spec.processor)
    except ImportError:
        module = importlib.import_module(f"transformers.models.{spec.processor_module}.image_processing_pil_{spec.processor_module}")
        processor_class = getattr(module, spec.processor + "Pil")
    return processor_class(
        size={"height": height, "width": width}, do_resize=True, do_rescale=True, do_normalize=True,
        image_mean=list(image_mean), image_std=list(image_std), do_pad=False,
    )


__all__ = [
    "DEFAULT_HEAD",
    "HEADS",
    "Head",
    "detector_config",
    "detector_from_encoder",
    "feature_geometry",
    "find_swin_backbone",
    "head_of",
    "head_settings",
    "image_processor_for",
    "load_swin_encoder",
    "size_multiple",
]
