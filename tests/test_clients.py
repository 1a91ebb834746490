"""Libraries that wrap or hook the model's modules work on it: PEFT adapters and accelerate's offload."""

import pytest
import torch

from swin_hf import FastPaths, SwinConfig, SwinForImageClassification
from swin_reference import TINY, images, randomize
from test_fast_paths import ALL_ON

import peft  # noqa: E402  (the test extra installs it)

TARGETS = ["qkv", "proj", "fc1", "fc2"]


def lora_model(paths: FastPaths):
    base = randomize(SwinForImageClassification(SwinConfig(**TINY, num_labels=3)), std=0.1)
    base.set_fast_paths(paths)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    return peft.get_peft_model(base, config)


@pytest.mark.parametrize("paths", [ALL_ON, FastPaths.for_this_cpu()], ids=["paths-on", "default"])
def test_lora_on_every_product_trains(paths):
    model = lora_model(paths).train()
    model(images(2, 64, 64), labels=torch.tensor([0, 2])).loss.backward()
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    for target in TARGETS:
        mine = {n: p for n, p in adapters.items() if f".{target}.lora_" in n}
        assert mine, target
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mine.values()), target
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)  # base frozen


@pytest.mark.parametrize("paths", [ALL_ON, FastPaths.for_this_cpu()], ids=["paths-on", "default"])
def test_lora_merged_after_an_inference_call_equals_the_adapted_model(paths):
    model = lora_model(paths).eval()
    x = images(3, 64, 64)
    with torch.no_grad():
        base_only = model.get_base_model()
        with model.disable_adapter():
            plain = model(x).logits
        adapted = model(x).logits
        merged = model.merge_and_unload()
        assert merged is base_only
        after_merge = merged(x).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapter changes the answer
    torch.testing.assert_close(after_merge, adapted, atol=1e-5, rtol=1e-4)


def test_disk_offload_through_device_map_runs_and_matches(tmp_path):
    """`device_map="auto"` with 1 MB of CPU memory puts the blocks on disk; accelerate's hooks load each
    module's weights around its call, so every weight must be read inside its own module's forward."""
    model = randomize(SwinForImageClassification(SwinConfig(**TINY, num_labels=3)), std=0.1).eval()
    model.save_pretrained(tmp_path / "model")
    x = images(2, 64, 64)
    with torch.no_grad():
        expected = model(x).logits
    offloaded = SwinForImageClassification.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "1MB"}, offload_folder=str(tmp_path / "offload")
    )
    assert "disk" in set(offloaded.hf_device_map.values())
    with torch.no_grad():
        torch.testing.assert_close(offloaded(x).logits, expected, atol=1e-5, rtol=1e-4)
