"""Semantic segmentation with Swin: the backbone glue for transformers' own dense heads (UperNet,
Mask2Former), here; the built-in data set and joint transforms (`segmentation.data`); mIoU evaluation
and overlays (`segmentation.evaluate`); and the recipe, `recipes/segment.py` (`segmentation.train`).

Building one needs nothing from this module: after ``import swin_hf`` transformers' Auto classes know the
``"swin_hf"`` model type, so ``UperNetForSemanticSegmentation(UperNetConfig(backbone_config=SwinConfig(...)))``
builds a `SwinBackbone` through `load_backbone`, and `from_pretrained` rebuilds the nested backbone config.

What transformers 5 does not do is load pre-trained backbone weights into a freshly built head (it
dropped `use_pretrained_backbone`). The helpers here do that: `load_swin_encoder` copies the encoder
(`swin.*`) of any swin_hf checkpoint (classification, SimMIM, backbone, or a converted transformers
Swin) into the `SwinBackbone` inside a dense model, and `upernet_from_encoder` builds a UperNet around
a checkpoint's encoder in one call.
"""

from __future__ import annotations

import copy
import logging
import os

from torch import nn
from transformers import UperNetConfig, UperNetForSemanticSegmentation

from ..configuration_swin import SwinConfig
from ..modeling_swin import SwinBackbone

logger = logging.getLogger(__name__)

ALL_STAGES = ("stage1", "stage2", "stage3", "stage4")
# the small Swin of the dense recipes' built-in runs (segment.py, its --task instance, detect.py): at 128 px,
# maps of 32, 16, 8 and 4 with 4x4 windows
BUILTIN_MODEL = dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4, patch_size=4)


def find_swin_backbone(model: nn.Module) -> SwinBackbone:
    """The single `SwinBackbone` inside `model` (UperNet: `model.backbone`; Mask2Former:
    `model.model.pixel_level_module.encoder`)."""
    found = [m for m in model.modules() if isinstance(m, SwinBackbone)]
    if len(found) != 1:
        raise ValueError(
            f"Expected exactly one SwinBackbone inside {type(model).__name__}, found {len(found)}. Build the "
            "model with `backbone_config=swin_hf.SwinConfig(...)` (after `import swin_hf`)."
        )
    return found[0]


def load_swin_encoder(model: nn.Module, pretrained: str | os.PathLike, **from_pretrained_kwargs) -> SwinBackbone:
    """Copy the Swin encoder weights of checkpoint `pretrained` into the `SwinBackbone` inside `model`.

    The encoder weights are the checkpoint's ``swin.*`` tensors; the checkpoint's own head (classifier,
    SimMIM decoder) is ignored and the backbone's per-output LayerNorms keep their initialisation (a
    classifier has no such norms). The architectures must agree (embed_dim, depths, heads, window); a
    mismatch raises. Returns the backbone.

    Example:
        >>> import tempfile
        >>> from transformers import UperNetConfig, UperNetForSemanticSegmentation
        >>> from swin_hf import SwinConfig, SwinForImageClassification
        >>> from swin_hf.segmentation import load_swin_encoder
        >>> tiny = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4)
        >>> ckpt = tempfile.mkdtemp()
        >>> SwinForImageClassification(SwinConfig(**tiny, num_labels=2)).save_pretrained(ckpt)
        >>> backbone_config = SwinConfig(**tiny, out_features=["stage1", "stage2", "stage3", "stage4"])
        >>> model = UperNetForSemanticSegmentation(UperNetConfig(
        ...     backbone_config=backbone_config, num_labels=3, hidden_size=32, auxiliary_in_channels=64))
        >>> backbone = load_swin_encoder(model, ckpt)
        >>> backbone is model.backbone
        True
    """
    backbone = find_swin_backbone(model)
    source, info = SwinBackbone.from_pretrained(
        pretrained,
        config=backbone.config,
        output_loading_info=True,
        ignore_mismatched_sizes=True,  # reported below as one clear error instead
        **from_pretrained_kwargs,
    )
    mismatched = sorted(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in info["mismatched_keys"])
    if mismatched:
        raise ValueError(
            f"The Swin encoder in {pretrained} has a different architecture from the backbone of "
            f"{type(model).__name__} (shape mismatch in {len(mismatched)} tensors, e.g. {mismatched[:3]}). Build "
            "the backbone config from the checkpoint's: `SwinConfig.from_pretrained(path)` with out_features set."
        )
    # optional parameters (a SimMIM mask token) may be absent; encoder weights may not
    missing = sorted(k for k in info["missing_keys"] if k.startswith("swin.") and not k.endswith("mask_token"))
    if missing:
        raise ValueError(
            f"{pretrained} lacks {len(missing)} Swin encoder weights (e.g. {missing[:3]}); it is not a Swin "
            "encoder checkpoint."
        )
    backbone.swin.load_state_dict(source.swin.state_dict())
    logger.info("Loaded the Swin encoder of %s into %s", pretrained, type(model).__name__)
    return backbone


def upernet_from_encoder(
    pretrained: str | os.PathLike | SwinConfig,
    num_labels: int,
    out_features: list[str] | tuple[str, ...] | None = None,
    id2label: dict[int, str] | None = None,
    **upernet_kwargs,
) -> UperNetForSemanticSegmentation:
    """A UperNet (the paper's ADE20K segmentation head) on a Swin backbone.

    `pretrained` is a swin_hf checkpoint (its encoder weights are loaded) or a `SwinConfig` (random
    initialisation). `out_features` defaults to every stage. The auxiliary FCN head reads stage 3, as in the paper's setup, so its input width is
    set from the backbone. Other UperNetConfig fields (hidden_size, auxiliary_loss_weight...) pass through.

    Example:
        >>> import torch
        >>> from swin_hf import SwinConfig
        >>> from swin_hf.segmentation import upernet_from_encoder
        >>> config = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4)
        >>> model = upernet_from_encoder(config, num_labels=3, hidden_size=32, auxiliary_channels=16).eval()
        >>> tuple(model(torch.randn(1, 3, 70, 90)).logits.shape)
        (1, 3, 70, 90)
    """
    if isinstance(pretrained, SwinConfig):
        backbone_config = copy.deepcopy(pretrained)
        checkpoint = None
    else:
        backbone_config = SwinConfig.from_pretrained(pretrained)
        checkpoint = pretrained
    # default: every stage (stage1..stage4 for the paper's models); the setter re-derives out_indices
    out_features = list(out_features) if out_features is not None else backbone_config.stage_names[1:]
    backbone_config.out_features = out_features
    if len(out_features) < 3:
        upernet_kwargs.setdefault("use_auxiliary_head", False)  # the auxiliary head reads the third map
    else:
        widths = [backbone_config.embed_dim] + [backbone_config.embed_dim * 2**i for i in range(backbone_config.num_layers)]
        upernet_kwargs.setdefault("auxiliary_in_channels", widths[backbone_config.stage_names.index(out_features[2])])
    if id2label is not None:
        if len(id2label) != num_labels:
            raise ValueError(f"id2label has {len(id2label)} entries but num_labels={num_labels}; make them agree.")
        upernet_kwargs["id2label"] = {int(k): v for k, v in id2label.items()}
        upernet_kwargs["label2id"] = {v: int(k) for k, v in id2label.items()}
    else:
        upernet_kwargs["num_labels"] = num_labels
    config = UperNetConfig(backbone_config=backbone_config, **upernet_kwargs)
    model = UperNetForSemanticSegmentation(config)
    if checkpoint is not None:
        load_swin_encoder(model, checkpoint)
    return model


__all__ = ["ALL_STAGES", "BUILTIN_MODEL", "find_swin_backbone", "load_swin_encoder", "upernet_from_encoder"]
