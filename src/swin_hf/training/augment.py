"""Training-time augmentation on batches, with kornia (runs on the training device).

Per image the data pipeline only decodes and resizes (with the model's image processor, so training
and evaluation see the same resampling); everything random happens here, on the batch:
random resized crop -> horizontal flip -> RandAugment -> normalise -> random erasing -> mixup / cutmix,
each switchable. Targets come back as soft label distributions (mixup/cutmix and label smoothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AugmentConfig:
    image_size: int = 224
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment_n: int = 2  # 0 disables RandAugment
    randaugment_m: int = 9
    random_erasing: float = 0.25
    mixup: float = 0.0  # probability a batch is mixed with mixup
    cutmix: float = 0.0  # probability a batch is mixed with cutmix (mixup and cutmix are exclusive)
    label_smoothing: float = 0.1


class BatchAugment(nn.Module):
    """(images in [0, 1] (B, 3, H, W), int labels (B,)) -> (normalised images, soft targets (B, K))."""

    def __init__(self, config: AugmentConfig, mean, std, num_classes: int):
        super().__init__()
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        self.config = config
        self.num_classes = num_classes
        size = (config.image_size, config.image_size)
        photometric = []
        if config.random_resized_crop:
            photometric.append(K.RandomResizedCrop(size, scale=config.crop_scale, ratio=config.crop_ratio))
        if config.hflip > 0:
            photometric.append(K.RandomHorizontalFlip(p=config.hflip))
        self.geometric = K.AugmentationSequential(*photometric) if photometric else None
        self.randaugment = RandAugment(n=config.randaugment_n, m=config.randaugment_m) if config.randaugment_n > 0 else None
        self.normalize = K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))
        self.erasing = K.RandomErasing(p=config.random_erasing) if config.random_erasing > 0 else None
        self.mixup = K.RandomMixUpV2(p=1.0, data_keys=["input", "class"]) if config.mixup > 0 else None
        self.cutmix = (
            K.RandomCutMixV2(p=1.0, data_keys=["input", "class"], use_correct_lambda=True) if config.cutmix > 0 else None
        )

    def soft_targets(self, labels: torch.Tensor) -> torch.Tensor:
        return F.one_hot(labels, self.num_classes).float()

    def _mixed_targets(self, mix: torch.Tensor) -> torch.Tensor:
        """kornia's (B, 3) [label_a, label_b, lambda] -> soft targets, lambda the weight of label_b."""
        mix = mix.reshape(-1, mix.shape[-1]) if mix.ndim == 3 and mix.shape[0] == 1 else mix
        if mix.ndim == 3:  # several cut boxes: (num_mix, B, 3)
            targets = self.soft_targets(mix[0, :, 0].long())
            for step in mix:
                lam = step[:, 2:3]
                targets = targets * (1 - lam) + self.soft_targets(step[:, 1].long()) * lam
            return targets
        lam = mix[:, 2:3]
        return self.soft_targets(mix[:, 0].long()) * (1 - lam) + self.soft_targets(mix[:, 1].long()) * lam

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.float()
        if self.geometric is not None:
            images = self.geometric(images)
        if self.randaugment is not None:
            images = self.randaugment(images).clamp(0, 1)
        images = self.normalize(images)
        if self.erasing is not None:
            images = self.erasing(images)
        targets = self.soft_targets(labels)
        if images.shape[0] > 1 and (self.mixup is not None or self.cutmix is not None):
            draw = torch.rand(()).item()
            p_mix, p_cut = self.config.mixup if self.mixup else 0.0, self.config.cutmix if self.cutmix else 0.0
            if draw < p_mix:
                images, mix = self.mixup(images, labels)
                targets = self._mixed_targets(mix)
            elif draw < p_mix + p_cut:
                images, mix = self.cutmix(images, labels)
                targets = self._mixed_targets(mix)
        if self.config.label_smoothing > 0:
            eps = self.config.label_smoothing
            targets = targets * (1 - eps) + eps / self.num_classes
        return images, targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft target distributions, averaged over the batch."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


__all__ = ["AugmentConfig", "BatchAugment", "soft_cross_entropy"]
