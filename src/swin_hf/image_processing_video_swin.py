"""VideoSwinImageProcessor: Swin's evaluation preprocessing on every frame of a video, and the frame sampling.

A video is a list of frames (PIL images or (H, W, C) arrays) or one (T, H, W, C) array; a batch is a list of videos
of the same length after sampling. Each frame goes through SwinImageProcessor (shorter side to crop / crop_pct,
bicubic, centre crop, ImageNet mean/std: torchvision's swin3d evaluation transforms at 224 are resize 256, crop 224),
and the result has VideoMAE's layout, (batch, frames, 3, height, width). With `num_frames`, each video is first
sampled at `num_frames` evenly spaced frames (`sample_frame_indices`).
"""

from __future__ import annotations

import numpy as np
from transformers.feature_extraction_utils import BatchFeature

from .image_processing_swin import SwinImageProcessor


def sample_frame_indices(length: int, num_frames: int, frame_interval: int = 1) -> np.ndarray:
    """`num_frames` indices into a video of `length` frames: a clip of num_frames * frame_interval frames centred in
    the video, one frame every `frame_interval` (as the official single-clip test sampling); a video shorter than
    the clip is sampled evenly over its whole length (frames repeat where it has fewer than num_frames)."""
    if length <= 0 or num_frames <= 0 or frame_interval <= 0:
        raise ValueError(f"cannot sample {num_frames} frames every {frame_interval} from a video of {length} frames.")
    span = num_frames * frame_interval
    if length >= span:
        start = (length - span) // 2
        return start + np.arange(num_frames) * frame_interval
    return np.linspace(0, length - 1, num_frames).round().astype(np.int64)


def _is_one_video(videos) -> bool:
    """A single video: a 4-D array, or a list whose items are frames (not lists of frames / 4-D arrays)."""
    if isinstance(videos, np.ndarray) or hasattr(videos, "shape"):
        return len(videos.shape) == 4
    first = videos[0] if len(videos) else None
    return not isinstance(first, (list, tuple)) and not (hasattr(first, "shape") and len(first.shape) == 4)


class VideoSwinImageProcessor(SwinImageProcessor):
    """SwinImageProcessor applied frame by frame; returns pixel_values (batch, frames, 3, height, width).

    Example:
        >>> from PIL import Image
        >>> from swin_hf import VideoSwinImageProcessor
        >>> processor = VideoSwinImageProcessor.for_image_size(32)
        >>> frames = [Image.new("RGB", (48, 40)) for _ in range(10)]
        >>> processor(frames, num_frames=4, return_tensors="pt")["pixel_values"].shape
        torch.Size([1, 4, 3, 32, 32])
    """

    def __call__(self, videos, num_frames: int | None = None, frame_interval: int = 1, return_tensors=None, **kwargs):
        videos = [videos] if _is_one_video(videos) else list(videos)
        clips = []
        for frames in videos:
            frames = list(frames)
            if num_frames is not None:
                frames = [frames[i] for i in sample_frame_indices(len(frames), num_frames, frame_interval)]
            clips.append(np.asarray(super().__call__(frames, return_tensors="np", **kwargs)["pixel_values"]))  # (T, 3, H, W)
        if len({c.shape for c in clips}) > 1:
            raise ValueError(f"the videos have different frame counts or sizes {[c.shape for c in clips]}; give num_frames to sample them alike.")
        return BatchFeature({"pixel_values": np.stack(clips)}, tensor_type=return_tensors)


__all__ = ["VideoSwinImageProcessor", "sample_frame_indices"]
