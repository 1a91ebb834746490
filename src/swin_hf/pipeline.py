"""An image-classification pipeline that reads images the way the recipes train on them.

transformers' pipeline opens paths and PIL images with `load_image`, which converts every image with PIL's
``convert("RGB")`` before the image processor sees it: 16-bit images are clipped, float images rounded to
integers, transparent pixels keep whatever colour they store. `SwinImageClassificationPipeline` reads local
files and PIL images with `training.data.decode_image` instead (EXIF orientation, then
`image_processing_swin.to_rgb`), as training and `swin-hf predict` do:

    pipeline("image-classification", model=folder, pipeline_class=SwinImageClassificationPipeline)
"""

from __future__ import annotations

import os

from PIL import Image
from transformers.pipelines.image_classification import ImageClassificationPipeline

from .training.data import decode_image


class SwinImageClassificationPipeline(ImageClassificationPipeline):
    """transformers' image-classification pipeline, reading local files and PIL images with swin_hf's
    conversion (URLs and base64 strings still go through transformers' `load_image`)."""

    def preprocess(self, image, timeout=None):
        if isinstance(image, Image.Image):
            image = decode_image(image)
        elif isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
            image = decode_image({"path": os.fspath(image), "bytes": None})
        return super().preprocess(image, timeout=timeout)


__all__ = ["SwinImageClassificationPipeline"]
