"""Test helpers: transformers' own Swin as the reference, loaded with the same weights as ours."""

from __future__ import annotations

import torch
import transformers

import swin_hf
from swin_hf import convert_state_dict

# Four stages, every stage map >= the window at 64x64 (transformers crashes when a map is smaller).
TINY = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4, image_size=64, patch_size=2)
TWO_STAGES = dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, image_size=32, patch_size=4)

HEADS = {
    "classification": (transformers.SwinForImageClassification, swin_hf.SwinForImageClassification),
    "model": (transformers.SwinModel, swin_hf.SwinModel),
    "backbone": (transformers.SwinBackbone, swin_hf.SwinBackbone),
}


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Every parameter drawn from N(0, std): position tables and norms too, so none is trivially 0/1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def reference_pair(config_kwargs: dict, head: str = "classification", seed: int = 0, **ours_kwargs):
    """(transformers model, swin_hf model) in eval mode with identical weights."""
    theirs_cls, ours_cls = HEADS[head]
    theirs = randomize(theirs_cls(transformers.SwinConfig(**config_kwargs)), seed).eval()
    ours = ours_cls(swin_hf.SwinConfig(**config_kwargs), **ours_kwargs).eval()
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), source="transformers"), strict=True)
    return theirs, ours


def images(batch: int, height: int, width: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def train_steps(model: torch.nn.Module, steps: int, lr: float, **inputs) -> list[float]:
    """`steps` AdamW steps of `model` on one batch (`inputs`, labels included); the losses before each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
