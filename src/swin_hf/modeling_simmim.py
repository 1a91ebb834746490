"""SimMIM (Xie et al., CVPR 2022): self-supervised pre-training of Swin by masked image modeling.

Random 32x32 blocks of the image (60% of them) have their patch embeddings replaced by a learned mask
token; the encoder runs as usual; a one-layer head (a 1x1 convolution to stride**2 * 3 channels and a
pixel shuffle) predicts raw pixels at full resolution, and an L1 loss is taken over masked pixels only.
After pre-training, the `swin.*` encoder loads into `SwinForImageClassification` / `SwinBackbone`.

Only relative imports within the package, so `trust_remote_code=True` works from a saved folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers.utils import ModelOutput

from .configuration_swin import SwinConfig, to_pair
from .modeling_swin import SwinModel, SwinPreTrainedModel


class SimMIMMaskGenerator:
    """Random block masks for SimMIM: a `mask_ratio` share of the `mask_patch_size`-sized blocks of an
    `input_size` image are masked, returned at the model's patch resolution (one flag per patch).

    Calling it returns a bool tensor of shape (num_patches,) = (input_h/model_patch * input_w/model_patch,),
    row-major like the model's patch grid; collate a batch with `torch.stack`. Seeded for reproducibility.

    Example:
        >>> from swin_hf import SimMIMMaskGenerator
        >>> gen = SimMIMMaskGenerator(input_size=64, mask_patch_size=32, model_patch_size=4, mask_ratio=0.5, seed=0)
        >>> mask = gen()
        >>> tuple(mask.shape), int(mask.sum())   # 16x16 patches, 2 of the 4 blocks of 8x8 patches masked
        ((256,), 128)
    """

    def __init__(
        self,
        input_size: int | tuple[int, int] = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
        seed: int | None = None,
    ):
        self.input_size = to_pair(input_size)
        if any(s % mask_patch_size for s in self.input_size):
            raise ValueError(
                f"input_size {self.input_size} is not a multiple of mask_patch_size={mask_patch_size}; resize or "
                "crop images to a multiple (SimMIM uses 192 with 32-pixel mask blocks)."
            )
        if mask_patch_size % model_patch_size:
            raise ValueError(
                f"mask_patch_size={mask_patch_size} is not a multiple of the model's patch_size={model_patch_size}."
            )
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio} must lie in (0, 1); SimMIM uses 0.6.")
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio
        self.blocks = (self.input_size[0] // mask_patch_size, self.input_size[1] // mask_patch_size)
        self.scale = mask_patch_size // model_patch_size  # model patches per mask block side
        self.num_masked_blocks = math.ceil(self.blocks[0] * self.blocks[1] * mask_ratio)
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> torch.Tensor:
        count = self.blocks[0] * self.blocks[1]
        block_mask = np.zeros(count, dtype=bool)
        block_mask[self.rng.permutation(count)[: self.num_masked_blocks]] = True
        block_mask = block_mask.reshape(self.blocks)
        patch_mask = block_mask.repeat(self.scale, axis=0).repeat(self.scale, axis=1)  # (Hp, Wp)
        return torch.from_numpy(patch_mask.reshape(-1).copy())


@dataclass
class SwinMaskedImageModelingOutput(ModelOutput):
    """Output of SwinForMaskedImageModeling.

    Args:
        loss: with `bool_masked_pos`, the mean absolute error over masked pixels and channels.
        reconstruction: (B, num_channels, H, W) predicted pixels (in the input's normalised space).
        hidden_states, reshaped_hidden_states, attentions: as in SwinModelOutput.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    reshaped_hidden_states: tuple[torch.FloatTensor, ...] | None = None


def masked_l1_loss(
    reconstruction: torch.Tensor, target: torch.Tensor, bool_masked_pos: torch.Tensor, patch_size: tuple[int, int]
) -> torch.Tensor:
    """SimMIM's loss: |reconstruction - target| summed over masked pixels and channels, divided by
    (number of masked pixels * channels). Unmasked pixels contribute nothing, not even to the gradient.

    reconstruction, target: (B, C, H, W); bool_masked_pos: (B, Hp*Wp) or (B, Hp, Wp) patch flags.
    """
    B, C, H, W = target.shape
    p_h, p_w = patch_size
    grid = (math.ceil(H / p_h), math.ceil(W / p_w))
    mask = bool_masked_pos.reshape(B, 1, *grid).to(target.dtype)
    mask = mask.repeat_interleave(p_h, dim=2).repeat_interleave(p_w, dim=3)[:, :, :H, :W]  # (B, 1, H, W)
    error = (reconstruction - target).abs() * mask  # (B, C, H, W)
    return error.sum() / (mask.sum() * C + 1e-5)


class SwinForMaskedImageModeling(SwinPreTrainedModel):
    """Swin encoder with a mask token + SimMIM's one-layer pixel-prediction head.

    `config.encoder_stride` must equal the encoder's total downsampling, patch_size * 2**(stages-1)
    (32 for the paper's models); the head upsamples the last stage by it.

    Example:
        >>> import torch
        >>> from swin_hf import SimMIMMaskGenerator, SwinConfig, SwinForMaskedImageModeling
        >>> config = SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, encoder_stride=8)
        >>> model = SwinForMaskedImageModeling(config)
        >>> masks = SimMIMMaskGenerator(input_size=64, mask_patch_size=16, model_patch_size=4, seed=0)
        >>> bool_masked_pos = torch.stack([masks(), masks()])  # (2, 256)
        >>> out = model(torch.randn(2, 3, 64, 64), bool_masked_pos=bool_masked_pos)
        >>> tuple(out.reconstruction.shape), out.loss.ndim
        ((2, 3, 64, 64), 0)
    """

    def __init__(self, config: SwinConfig):
        super().__init__(config)
        p_h, p_w = to_pair(config.patch_size)
        stride = p_h * 2 ** (len(config.depths) - 1)
        if p_h != p_w or config.encoder_stride != stride:
            raise ValueError(
                f"SwinForMaskedImageModeling needs square patches and config.encoder_stride equal to the encoder's "
                f"downsampling, patch_size * 2**(stages-1) = {stride}; got patch_size={config.patch_size}, "
                f"encoder_stride={config.encoder_stride}. Set encoder_stride={stride}."
            )
        self.swin = SwinModel(config, add_pooling_layer=False, use_mask_token=True)
        # SimMIM's one-layer head: (B, C_last, h, w) -> (B, stride^2 * 3, h, w) -> (B, 3, h*stride, w*stride)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.hidden_size, config.encoder_stride**2 * config.num_channels, kernel_size=1),
            nn.PixelShuffle(config.encoder_stride),
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SwinMaskedImageModelingOutput | tuple:
        """pixel_values: (B, C, H, W), the reconstruction target as well; bool_masked_pos: (B, num_patches)
        True for masked patches (e.g. from `SimMIMMaskGenerator`). Without a mask there is no loss."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        out = self.swin(
            pixel_values,
            bool_masked_pos=bool_masked_pos,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        B, L, C = out.last_hidden_state.shape
        H, W = pixel_values.shape[2:]
        stride = self.config.encoder_stride
        h, w = math.ceil(H / stride), math.ceil(W / stride)  # padded inputs round up at every stage
        features = out.last_hidden_state.transpose(1, 2).reshape(B, C, h, w)
        reconstruction = self.decoder(features)[:, :, :H, :W]  # (B, num_channels, H, W)

        loss = None
        if bool_masked_pos is not None:
            loss = masked_l1_loss(
                reconstruction, pixel_values.to(reconstruction.dtype), bool_masked_pos, to_pair(self.config.patch_size)
            )
        if not return_dict:
            rest = (out.hidden_states, out.attentions, out.reshaped_hidden_states)
            return tuple(v for v in (loss, reconstruction, *rest) if v is not None)
        return SwinMaskedImageModelingOutput(
            loss=loss,
            reconstruction=reconstruction,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            reshaped_hidden_states=out.reshaped_hidden_states,
        )


__all__ = ["SimMIMMaskGenerator", "SwinForMaskedImageModeling", "SwinMaskedImageModelingOutput", "masked_l1_loss"]
