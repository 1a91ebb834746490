"""SimMIM: mask generation, the masked-pixel L1 loss, learning on tiny data, and the encoder hand-off."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForMaskedImageModeling

from swin_hf import (
    SimMIMMaskGenerator,
    SwinBackbone,
    SwinConfig,
    SwinForImageClassification,
    SwinForMaskedImageModeling,
    SwinModel,
    masked_l1_loss,
)

# patch 4, two stages -> encoder stride 8
TINY = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, patch_size=4, encoder_stride=8)


def tiny_model(seed: int = 0) -> SwinForMaskedImageModeling:
    torch.manual_seed(seed)
    return SwinForMaskedImageModeling(SwinConfig(**TINY))


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """A colour per image plus a gentle linear ramp per channel: a masked block is predictable from the
    visible ones, so a model that uses its context beats predicting zeros (L1 about 0.5 here)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    colour = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    slope = torch.rand(n, 3, 2, generator=g) - 0.5
    return colour + slope[..., 0, None, None] * y + slope[..., 1, None, None] * x  # (n, 3, size, size)


# ------------------------------------------------------------------------------------------------
# Mask generator
# ------------------------------------------------------------------------------------------------


def test_mask_generator_blocks_ratio_and_seed():
    gen = SimMIMMaskGenerator(input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6, seed=3)
    mask = gen()
    assert mask.dtype == torch.bool and mask.shape == (48 * 48,)
    assert int(mask.sum()) == math.ceil(36 * 0.6) * 64  # 22 of the 6x6 blocks, 8x8 patches each
    grid = mask.view(6, 8, 6, 8)  # (block row, patch row in block, block col, patch col in block)
    per_block = grid.permute(0, 2, 1, 3).reshape(36, 64)
    assert ((per_block.all(1)) | (~per_block.any(1))).all()  # each 32x32 block all masked or all visible
    again = SimMIMMaskGenerator(input_size=192, mask_patch_size=32, model_patch_size=4, mask_ratio=0.6, seed=3)
    assert torch.equal(again(), mask)  # seeded
    assert not torch.equal(gen(), mask)  # successive draws differ


def test_mask_generator_rejects_bad_geometry():
    with pytest.raises(ValueError, match="multiple of mask_patch_size"):
        SimMIMMaskGenerator(input_size=100, mask_patch_size=32)
    with pytest.raises(ValueError, match="patch_size"):
        SimMIMMaskGenerator(input_size=96, mask_patch_size=32, model_patch_size=5)
    with pytest.raises(ValueError, match="mask_ratio"):
        SimMIMMaskGenerator(input_size=96, mask_ratio=1.0)


# ------------------------------------------------------------------------------------------------
# Model and loss
# ------------------------------------------------------------------------------------------------


def test_mask_token_replaces_masked_patch_embeddings():
    model = tiny_model().eval()
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[0, :10] = True
    with torch.no_grad():
        model.swin.embeddings.mask_token.fill_(7.0)
        masked = model.swin.embeddings(pixels, mask)  # (B, 8, 8, C)
        plain = model.swin.embeddings(pixels)
    flat_masked, flat_plain = masked.reshape(2, 64, -1), plain.reshape(2, 64, -1)
    assert torch.all(flat_masked[0, :10] == 7.0)
    torch.testing.assert_close(flat_masked[0, 10:], flat_plain[0, 10:])
    torch.testing.assert_close(flat_masked[1], flat_plain[1])


def test_reconstruction_shape_any_size_and_no_loss_without_mask():
    model = tiny_model().eval()
    out = model(torch.randn(1, 3, 40, 56))
    assert out.reconstruction.shape == (1, 3, 40, 56) and out.loss is None
    mask = torch.ones(1, 10 * 14, dtype=torch.bool)
    assert model(torch.randn(1, 3, 40, 56), bool_masked_pos=mask).loss > 0


def test_loss_is_mean_abs_error_over_masked_pixels():
    torch.manual_seed(0)
    rec, target = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)  # patch 4 -> 4x4 grid
    mask[0, 1, 2] = mask[1, 0, 0] = mask[1, 3, 3] = True
    pixel_mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand(-1, 3, -1, -1)
    expected = (rec - target).abs()[pixel_mask].mean()
    torch.testing.assert_close(masked_l1_loss(rec, target, mask.view(2, 16), (4, 4)), expected)


def test_unmasked_pixels_do_not_contribute():
    """Changing the target at visible pixels leaves the loss unchanged, and the loss's gradient w.r.t.
    the reconstruction is exactly zero there (and non-zero at masked pixels)."""
    model = tiny_model()
    pixels = torch.randn(2, 3, 32, 32)
    mask = torch.stack([SimMIMMaskGenerator(32, 16, 4, 0.5, seed=s)() for s in (0, 1)])  # (2, 64)
    pixel_mask = mask.view(2, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3).expand(-1, 3, -1, -1)

    out = model(pixels, bool_masked_pos=mask)
    rec = out.reconstruction
    rec.retain_grad()
    out.loss.backward()
    assert torch.all(rec.grad[~pixel_mask] == 0)
    assert torch.all(rec.grad[pixel_mask] != 0)

    # the loss against a target altered only at visible pixels is the same number
    detached = rec.detach()
    altered = pixels.clone()
    altered[~pixel_mask] += 100.0
    same = masked_l1_loss(detached, altered, mask, (4, 4))
    torch.testing.assert_close(same, out.loss.detach())
    altered[pixel_mask] += 1.0  # ...while altering masked pixels changes it
    assert not torch.isclose(masked_l1_loss(detached, altered, mask, (4, 4)), out.loss.detach())


def test_loss_falls_on_tiny_data():
    """30 steps on 8 images with fresh random masks every step: the masked-pixel L1 loss more than
    halves (measured: about 0.49 -> 0.22 averaged over the first / last five steps)."""
    model = tiny_model()
    images = smooth_images(8)
    masks = SimMIMMaskGenerator(input_size=32, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.05)
    model.train()
    losses = []
    for _ in range(30):
        bool_masked_pos = torch.stack([masks() for _ in range(len(images))])
        loss = model(images, bool_masked_pos=bool_masked_pos).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, losses


def test_encoder_stride_is_checked():
    with pytest.raises(ValueError, match="encoder_stride=8"):
        SwinForMaskedImageModeling(SwinConfig(**{**TINY, "encoder_stride": 32}))


def test_mask_without_mask_token_is_an_error():
    model = SwinModel(SwinConfig(**TINY))
    with pytest.raises(ValueError, match="no mask token"):
        model(torch.randn(1, 3, 32, 32), bool_masked_pos=torch.zeros(1, 64, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# Auto class and the encoder hand-off to fine-tuning
# ------------------------------------------------------------------------------------------------


def test_auto_masked_image_modeling_round_trip(tmp_path):
    model = AutoModelForMaskedImageModeling.from_config(SwinConfig(**TINY)).eval()
    assert isinstance(model, SwinForMaskedImageModeling)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedImageModeling.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, SwinForMaskedImageModeling)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).reconstruction, model(pixels).reconstruction, rtol=0, atol=0)


def test_pretrained_encoder_loads_into_classifier_and_backbone(tmp_path):
    mim = tiny_model(seed=1)
    with torch.no_grad():  # make every encoder weight distinct from any initialisation
        for p in mim.swin.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    mim.save_pretrained(tmp_path)
    encoder = {k: v for k, v in mim.state_dict().items() if k.startswith("swin.") and "mask_token" not in k}

    torch.manual_seed(5)
    classifier = SwinForImageClassification.from_pretrained(tmp_path, num_labels=3)
    state = classifier.state_dict()
    assert {k for k in state if k.startswith("swin.")} == set(encoder)
    for k, v in encoder.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    # the new head is freshly initialised: zero bias, small truncated-normal weights
    assert classifier.classifier.weight.shape == (3, 32)
    assert torch.all(classifier.classifier.bias == 0)
    assert 0 < classifier.classifier.weight.std() < 0.05

    backbone = SwinBackbone.from_pretrained(tmp_path, out_features=["stage1", "stage2"])
    for k, v in backbone.state_dict().items():
        if k.startswith("swin.") and k in encoder:
            torch.testing.assert_close(v, encoder[k], rtol=0, atol=0)
    assert sum(k.startswith("swin.stages.") for k in backbone.state_dict()) == sum(
        k.startswith("swin.stages.") for k in encoder
    )


def test_saved_folder_loads_with_trust_remote_code_without_swin_hf(tmp_path):
    """The saved folder carries modeling_simmim.py and what it imports; a process that cannot import
    swin_hf loads it through AutoModelForMaskedImageModeling(trust_remote_code=True)."""
    import os
    import subprocess
    import sys

    model = tiny_model().eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "modeling_simmim.py").exists()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(pixels).reconstruction
    torch.save(pixels, tmp_path / "pixels.pt")
    script = f"""
import sys
sys.path = [p for p in sys.path if not p.endswith("src")]  # hide the editable swin_hf checkout
import importlib.util, torch
assert importlib.util.find_spec("swin_hf") is None, "swin_hf should not be importable here"
from transformers import AutoModelForMaskedImageModeling
model = AutoModelForMaskedImageModeling.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    torch.save(model(torch.load({str(tmp_path / "pixels.pt")!r})).reconstruction, {str(tmp_path / "out.pt")!r})
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)


def test_docstring_examples_run():
    import doctest

    import swin_hf.modeling_simmim

    result = doctest.testmod(swin_hf.modeling_simmim, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------------
# The recipe (recipes/pretrain_simmim.py) on the shared loop
# ------------------------------------------------------------------------------------------------


def _recipe(args) -> int:
    from swin_hf.training.simmim import main

    return main([str(a) for a in args])


def test_recipe_accumulates_keeps_an_ema_checkpoints_mid_epoch_and_resumes(tmp_path, capsys):
    """64 images in batches of 8 with --grad-accum 2: 4 steps an epoch. --max-steps 3 with --checkpoint-every 2
    leaves the step-2 checkpoint in the middle of the first epoch (with the EMA); --resume with --max-steps 6
    continues from it, and the best model (lowest validation loss) fine-tunes with finetune.py."""
    import json

    from swin_hf.training.classification import main as finetune_main

    out = tmp_path / "run"
    common = ["--max-train-samples", 64, "--max-eval-samples", 16, "--batch-size", 8, "--grad-accum", 2,
              "--ema-decay", 0.9, "--checkpoint-every", 2, "--log-every", 1, "--no-progress", "--accelerator", "cpu",
              "--devices", 1, "--output-dir", out]
    assert _recipe(["--max-steps", 3, *common]) == 0
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("step-*.ckpt"))
    assert checkpoints == ["step-00000002.ckpt"]
    saved = torch.load(out / "checkpoints" / "step-00000002.ckpt", weights_only=True)
    assert saved["progress"]["step"] == 2 and saved["progress"]["batch"] == 4 and saved["progress"]["epoch"] == 0
    assert "ema" in saved
    first = json.loads((out / "metrics.json").read_text())
    assert first["steps"] == 3 and first["val_examples"] == 16 and first["train_examples"] == 64
    capsys.readouterr()

    assert _recipe(["--max-steps", 6, "--resume", "--allow-changed-config", "max_steps", *common]) == 0
    printed = capsys.readouterr().out
    assert "Resumed from" in printed and "step 2, epoch 0, batch 4" in printed
    assert "SimMIM: 6 steps" in printed and f"fine-tune it: python recipes/finetune.py --model {out}" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["epochs"] == 2
    assert [row["step"] for row in metrics["history"] if "train_loss" in row] == [1, 2, 3, 4, 5, 6]
    val = [row["val_loss"] for row in metrics["history"] if "val_loss" in row]
    assert len(val) == 2 and metrics["best_val_loss"] == min(val)  # epochs 1 and 2 of the resumed run
    assert metrics["first_loss"] == metrics["history"][0]["train_loss"] > 0
    assert metrics["mask_patch_size"] == 4 and metrics["mask_ratio"] == 0.6 and metrics["image_size"] == 16
    assert (out / "reconstructions.png").exists()

    tuned = tmp_path / "tuned"
    assert finetune_main([str(a) for a in ["--model", out, "--max-steps", 1, "--max-train-samples", 128, "--max-eval-samples",
                                           16, "--batch-size", 8, "--no-progress", "--accelerator", "cpu", "--devices", 1,
                                           "--output-dir", tuned]]) == 0
    assert json.loads((tuned / "metrics.json").read_text())["from_scratch"] is False
    assert isinstance(SwinForImageClassification.from_pretrained(tuned), SwinForImageClassification)


def test_recipe_validation_is_held_out_and_scored_with_fixed_masks(tmp_path):
    """The validation images are not trained on, and two evaluations of the same weights agree (the masks are
    drawn once): a run with --lr tiny evaluates twice to nearly the same loss, and the best is the lowest."""
    import json

    out = tmp_path / "run"
    assert _recipe(["--max-train-samples", 16, "--batch-size", 8, "--epochs", 2, "--lr", 1e-9, "--validation-fraction",
                    0.05, "--no-progress", "--accelerator", "cpu", "--devices", 1, "--output-dir", out]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_examples"] == round(0.05 * 1437) and metrics["train_examples"] == 16
    val = [row["val_loss"] for row in metrics["history"] if "val_loss" in row]
    assert len(val) == 2 and abs(val[0] - val[1]) < 1e-4 and metrics["best_val_loss"] == min(val)


def test_recipe_resumed_mid_epoch_ends_with_the_uninterrupted_weights(tmp_path):
    """The crops, flips and masks come from the RNG the checkpoint holds: a run resumed from its mid-epoch
    step-2 checkpoint ends with the same final and best weights (EMA, --grad-accum 2) as the run that went on."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    args = ["--max-train-samples", 64, "--max-eval-samples", 16, "--batch-size", 8, "--grad-accum", 2, "--ema-decay", 0.9,
            "--checkpoint-every", 2, "--max-steps", 6, "--no-progress", "--accelerator", "cpu", "--devices", 1,
            "--output-dir", out]
    assert _recipe(args) == 0
    final, best = load_file(out / "checkpoints" / "final-weights.safetensors"), load_file(out / "model.safetensors")
    (out / "checkpoints" / "step-00000004.ckpt").unlink()  # the epoch-end checkpoint: resume from step 2
    assert _recipe([*args, "--resume"]) == 0
    for expected, path in ((final, out / "checkpoints" / "final-weights.safetensors"), (best, out / "model.safetensors")):
        resumed = load_file(path)
        for name, tensor in expected.items():
            torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0)
