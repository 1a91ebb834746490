"""An image-classification pipeline that reads images the way the recipes train on them.

transformers' pipeline opens paths and PIL images with `load_image`, which converts every image with PIL's
``convert("RGB")`` before the image processor sees it: 16-bit images are clipped, float images rounded to
integers, transparent pixels keep whatever colour they store. `SwinImageClassificationPipeline` reads local
files and PIL images with `training.data.decode_image` instead (EXIF orientation, then
`image_processing_swin.to_rgb`), as training and `swin-hf predict` do:

    pipeline("image-classification", model=folder, pipeline_class=SwinImageClassificationPipeline)

`VideoSwinClassificationPipeline` is transformers' video-classification pipeline that also takes a video as a
list of frames (PIL images or arrays) or a (T, H, W, C) array, sampled with the folder's VideoSwinImageProcessor;
video files still need PyAV, as transformers reads them:

    pipeline("video-classification", model=folder, pipeline_class=VideoSwinClassificationPipeline)
"""

from __future__ import annotations

import os

from PIL import Image
from transformers.pipelines.base import Pipeline
from transformers.pipelines.image_classification import ImageClassificationPipeline
from transformers.pipelines.video_classification import VideoClassificationPipeline

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


class VideoSwinClassificationPipeline(VideoClassificationPipeline):
    """transformers' video-classification pipeline; a list of frames or a (T, H, W, C) array is a video too, and
    PyAV is needed only for video files and URLs."""

    def __init__(self, *args, **kwargs):
        Pipeline.__init__(self, *args, **kwargs)  # (transformers' __init__ insists on PyAV even for frames)
        if self.image_processor is None:
            raise ValueError("The video-classification pipeline needs the model folder's image processor (preprocessor_config.json).")

    def __call__(self, inputs, **kwargs):
        """One video (a file, a list of frames, a (T, H, W, C) array) -> its top labels; a list of videos -> a list."""
        if isinstance(inputs, (list, tuple)) and inputs and (isinstance(inputs[0], Image.Image) or getattr(inputs[0], "ndim", 0) == 3):
            return super().__call__([list(inputs)], **kwargs)[0]  # the frames of one video, not a batch of inputs
        return super().__call__(inputs, **kwargs)

    def preprocess(self, video, num_frames=None, frame_sampling_rate=1):
        if isinstance(video, (str, os.PathLike)):
            from transformers.utils import requires_backends

            requires_backends(self, "av")  # a file or URL: read with PyAV as transformers does
            return super().preprocess(os.fspath(video), num_frames, frame_sampling_rate)
        num_frames = self.model.config.num_frames if num_frames is None else num_frames
        inputs = self.image_processor(video, num_frames=num_frames, frame_interval=frame_sampling_rate, return_tensors="pt")
        return inputs.to(self.dtype)


__all__ = ["SwinImageClassificationPipeline", "VideoSwinClassificationPipeline"]
