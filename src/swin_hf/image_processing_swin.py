"""SwinImageProcessor: the official evaluation preprocessing, on PIL/NumPy (no torchvision needed).

Resize the shorter side to crop / crop_pct (bicubic), centre-crop, scale to [0, 1], normalise with the
ImageNet mean and std. For 224² models that is resize 256 -> crop 224, as in the official code; 384²
models are resized straight to 384² (crop_pct = 1), as the official code evaluates them.
Every image, whatever its mode or dtype, first becomes RGB uint8 through `to_rgb_array`, the one
conversion that training (training/data.py), `swin-hf predict` and this processor share, so that one file
gives one tensor everywhere.
Self-contained on purpose: `save_pretrained` copies it for `trust_remote_code=True`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

# Transparent pixels are composited onto this colour, in training and in serving alike.
BACKGROUND = (255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_CHANNELS = (1, 2, 3, 4)


def _name(image) -> str:
    return getattr(image, "filename", "") or "The image"


def _to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """8-bit values from any dtype, by the dtype's bit depth (never by the image's own range): uint16 / 16-bit
    modes are divided by 257 (65535 -> 255), floats must lie in [0, 1] and are multiplied by 255, other
    integer types must hold 8-bit values (0..255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"{what} has NaN or infinite values; replace them before classifying it.")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{what} is floating point with values in [{low:g}, {high:g}]; float images must lie in [0, 1]. "
                "Scale it to [0, 1], or pass it as uint8 (0..255) or uint16 (0..65535)."
            )
        return np.rint(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        sixteen = array.dtype == np.uint16
        top = 65535 if sixteen else 255
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > top:
            raise ValueError(
                f"{what} has {array.dtype} values in [{low}, {high}], outside 0..{top}. Pass 8-bit images as uint8 "
                "(0..255), 16-bit ones as uint16 (0..65535), float ones in [0, 1]."
            )
        if sixteen:
            return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return array.astype(np.uint8)
    raise ValueError(f"{what} has dtype {array.dtype}; pass uint8, uint16, bool or float (in [0, 1]) pixels.")


def _composite(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 4) RGBA uint8 -> (H, W, 3) RGB uint8 on BACKGROUND."""
    rgb, alpha = pixels[..., :3].astype(np.uint32), pixels[..., 3:].astype(np.uint32)
    background = np.asarray(BACKGROUND, dtype=np.uint32)
    return ((rgb * alpha + background * (255 - alpha) + 127) // 255).astype(np.uint8)


def load_pixels(image: Image.Image, name: str | None = None) -> None:
    """Decode a lazily opened PIL image in full; a truncated or corrupt file raises a one-line OSError
    naming it (`name`, else the file it was opened from)."""
    try:
        image.load()
    except OSError as error:
        raise OSError(f"{name or _name(image)} cannot be decoded ({error}); the file is truncated or corrupt.") from error


def _pil_pixels(image: Image.Image) -> np.ndarray:
    """A PIL image's pixels as (H, W) or (H, W, C) uint8 with C in 1..4 (4: RGBA)."""
    load_pixels(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image)
        if image.mode == "I":  # 32-bit integer images come from 16-bit files: read as 16-bit values
            array = array.astype(np.int64)
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise ValueError(f"{_name(image)} (PIL mode I) has values outside 0..65535; only 16-bit data is supported.")
            array = array.astype(np.uint16)
        return _to_uint8(array, _name(image))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def to_rgb_array(image, channels_first: bool | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image of any mode, or a NumPy array / torch tensor (H, W), (H, W, C) or
    (C, H, W) with C in 1..4 (1: grey, 2: grey + alpha, 4: RGBA).

    16-bit data (I;16 and I modes, uint16 arrays) is scaled by its bit depth (65535 -> 255); floats must lie in
    [0, 1] (scaled by 255; NaN, infinities and values outside are refused); transparency (RGBA, LA, PA, P
    with a transparent colour) is composited onto white (`BACKGROUND`); CMYK, YCbCr, palette and the rest go
    through PIL's conversion. `channels_first` says where the channels are in a 3-dimensional array (by
    default: first when the first dimension could be channels, as transformers guesses).
    """
    if isinstance(image, Image.Image):
        pixels = _pil_pixels(image)
    else:
        if hasattr(image, "detach"):  # a torch tensor
            image = image.detach().cpu().numpy()
        array = np.asarray(image)
        if array.ndim == 3:
            first = array.shape[0] in _CHANNELS if channels_first is None else channels_first
            if first:
                array = np.moveaxis(array, 0, -1)
            if array.shape[-1] not in _CHANNELS:
                raise ValueError(f"An image array of shape {tuple(image.shape)} has no channel axis of 1 to 4 entries.")
        elif array.ndim != 2:
            raise ValueError(f"An image array must be (H, W), (H, W, C) or (C, H, W); got shape {tuple(array.shape)}.")
        pixels = _to_uint8(array, "The image array")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] in (2, 4):  # with alpha
        colour = pixels[..., :-1] if pixels.shape[-1] == 4 else np.repeat(pixels[..., :1], 3, axis=-1)
        pixels = _composite(np.concatenate([colour, pixels[..., -1:]], axis=-1))
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return np.ascontiguousarray(pixels)


def to_rgb(image) -> Image.Image:
    """`to_rgb_array` as a PIL RGB image (an RGB PIL image without a transparent colour is returned as is)."""
    if isinstance(image, Image.Image) and image.mode == "RGB" and "transparency" not in image.info:
        load_pixels(image)
        return image
    return Image.fromarray(to_rgb_array(image), "RGB")


class SwinImageProcessor(PilBackend):
    """Image processor of swin_hf models (any PIL mode, NumPy array or tensor in; RGB (B, 3, H, W)
    pixel_values out). Inputs become RGB through `to_rgb_array` (with `do_convert_rgb=False`, as
    transformers' processors do instead).

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

    def process_image(self, image, do_convert_rgb: bool | None = None, input_data_format=None, **kwargs) -> np.ndarray:
        """One input as (3, H, W) uint8 through `to_rgb_array` (unless do_convert_rgb is False)."""
        if do_convert_rgb is False:
            array = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format, **kwargs)
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                raise ValueError("The image has NaN or infinite values; replace them before classifying it.")
            return array
        first = None if input_data_format is None else str(getattr(input_data_format, "value", input_data_format)) == "channels_first"
        return np.moveaxis(to_rgb_array(image, channels_first=first), -1, 0)

    def to_dict(self) -> dict:
        """The saved preprocessor config names no class: AutoImageProcessor then takes it from the model
        config's `auto_map` (the local class when swin_hf is installed, the copied file otherwise), and
        pipelines do not go looking for a remote video processor and prompt about remote code."""
        config = super().to_dict()
        config.pop("image_processor_type", None)
        config.pop("auto_map", None)
        return config


__all__ = ["BACKGROUND", "SwinImageProcessor", "load_pixels", "to_rgb", "to_rgb_array"]
