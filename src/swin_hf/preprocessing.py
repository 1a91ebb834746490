"""The evaluation preprocessing that each source's weights were validated with, as a SwinImageProcessor,
and its one-line description for model cards. Used by `swin-hf convert` (convert_checkpoint.py) and the
model cards (model_card.py)."""

from __future__ import annotations

import math

from .convert import SOURCES
from .image_processing_swin import SwinImageProcessor

# PIL's resampling filters by the names timm's pretrained_cfg uses
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def processor_for_source(
    source: str, image_size, timm_cfg: dict | None = None, preprocessor: dict | None = None
) -> SwinImageProcessor:
    """The evaluation preprocessing the source's weights were validated with.

    official: resize to image/0.875 (bicubic) and centre-crop below 384 pixels, resize straight to the image
        size from 384 up (the official evaluation); ImageNet mean/std.
    timm: its `pretrained_cfg` (crop_pct, interpolation, mean, std) when config.json has one; else timm's
        Swin defaults, crop_pct 0.9 below 384 and 1.0 from 384 up, bicubic, ImageNet mean/std.
    transformers: the checkpoint's preprocessor_config.json when there is one; else a bicubic resize
        straight to the image size with ImageNet mean/std (what the Hub's Swin checkpoints use).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if source == "official":
        return SwinImageProcessor.for_image_size((height, width))
    if source == "timm":
        cfg = dict(timm_cfg or {})
        crop_pct = float(cfg.get("crop_pct", 0.9 if max(height, width) < 384 else 1.0))
        extra = {}
        if "mean" in cfg:
            extra["image_mean"] = list(cfg["mean"])
        if "std" in cfg:
            extra["image_std"] = list(cfg["std"])
        resample = RESAMPLE.get(str(cfg.get("interpolation", "bicubic")), 3)
        # timm: resize the shorter side to floor(size / crop_pct), then centre-crop (also when crop_pct = 1)
        return SwinImageProcessor(
            size={"shortest_edge": int(math.floor(min(height, width) / crop_pct))},
            crop_size={"height": height, "width": width},
            do_center_crop=True,
            resample=resample,
            **extra,
        )
    if source == "transformers":
        if preprocessor:
            keep = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                    "do_normalize", "image_mean", "image_std")
            values = {k: preprocessor[k] for k in keep if k in preprocessor}
            if "crop_pct" in preprocessor and "shortest_edge" in values.get("size", {}):  # ConvNeXt-style processors
                edge = values["size"]["shortest_edge"]
                values.update(size={"shortest_edge": int(edge / preprocessor["crop_pct"])},
                              crop_size={"height": edge, "width": edge}, do_center_crop=True)
            values.setdefault("do_center_crop", False)
            return SwinImageProcessor(**values)
        return SwinImageProcessor.for_image_size((height, width), crop_pct=1.0)
    raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")


def preprocessing_summary(processor: SwinImageProcessor) -> str:
    """One line describing the processor, for model cards."""
    names = {v: k for k, v in RESAMPLE.items()}
    resample = names.get(int(processor.resample), str(processor.resample))
    size = processor.size
    if "shortest_edge" in size:
        steps = f"resize the shorter side to {size['shortest_edge']} ({resample})"
    else:
        steps = f"resize to {size['height']}x{size['width']} ({resample})"
    if processor.do_center_crop:
        steps += f", centre-crop {processor.crop_size['height']}x{processor.crop_size['width']}"
    mean = ", ".join(f"{v:.3f}" for v in processor.image_mean)
    std = ", ".join(f"{v:.3f}" for v in processor.image_std)
    return f"{steps}, scale to [0, 1], normalise with mean ({mean}) and std ({std})"


__all__ = ["RESAMPLE", "preprocessing_summary", "processor_for_source"]
