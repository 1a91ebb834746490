"""SwinImageProcessor: the official evaluation preprocessing, on PIL/NumPy (no torchvision needed).

Resize the shorter side to crop / crop_pct (bicubic), centre-crop, scale to [0, 1], normalise with the
ImageNet mean and std. For 224² models that is resize 256 -> crop 224, as in the official code; 384²
models are resized straight to 384² (crop_pct = 1), as the official code evaluates them.
Self-contained on purpose: `save_pretrained` copies it for `trust_remote_code=True`.
"""

from __future__ import annotations

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling


class SwinImageProcessor(PilBackend):
    """Image processor of swin_hf models (any PIL mode in; RGB (B, 3, H, W) pixel_values out).

    Example:
        >>> from PIL import Image
        >>> from swin_hf import SwinImageProcessor
        >>> processor = SwinImageProcessor.for_image_size(224)
        >>> processor(Image.new("L", (320, 240)), return_tensors="pt")["pixel_values"].shape
        torch.Size([1, 3, 224, 224])
    """

    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True

    @classmethod
    def for_image_size(cls, image_size, crop_pct: float | None = None, **kwargs) -> "SwinImageProcessor":
        """The processor for a model trained at `image_size` (int or (H, W)).

        crop_pct defaults to the official choice: 224/256 below 384 pixels, 1.0 (no crop) from 384 up.
        """
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if crop_pct is None:
            crop_pct = 0.875 if max(height, width) < 384 else 1.0
        if not 0.0 < crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}.")
        if crop_pct == 1.0:
            sizes = dict(size={"height": height, "width": width}, do_center_crop=False)
        else:
            sizes = dict(size={"shortest_edge": int(min(height, width) / crop_pct)})
        return cls(crop_size={"height": height, "width": width}, **{**sizes, **kwargs})

    def to_dict(self) -> dict:
        """The saved preprocessor config names no class: AutoImageProcessor then takes it from the model
        config's `auto_map` (the local class when swin_hf is installed, the copied file otherwise), and
        pipelines do not go looking for a remote video processor and prompt about remote code."""
        config = super().to_dict()
        config.pop("image_processor_type", None)
        config.pop("auto_map", None)
        return config


__all__ = ["SwinImageProcessor"]
