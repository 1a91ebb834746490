"""The three recipes with Swin V2: `--model swinv2-tiny-patch4-window8-256` from scratch (at a small image
size, a couple of steps) and a saved V2 folder as the starting point (CPU, offline)."""

import json

import pytest
import torch

from swin_hf import SwinConfig, SwinForImageClassification, SwinForMaskedImageModeling
from swin_hf.training.optim import param_groups

PRESET = "swinv2-tiny-patch4-window8-256"
CPU = ["--accelerator", "cpu", "--devices", "1"]
# a small V2 encoder for the folders the recipes start from (16x16 digits: maps 8 and 4)
SMALL_V2 = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, patch_size=2, image_size=16,
                pretrained_window_sizes=[3, 3], version=2)


def _finetune(args):
    from swin_hf.training.classification import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def v2_classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("v2") / "classifier"
    torch.manual_seed(0)
    SwinForImageClassification(SwinConfig(**SMALL_V2, num_labels=3)).save_pretrained(folder)
    return folder


def test_v2_parameters_without_weight_decay_are_those_of_the_official_recipe():
    model = SwinForImageClassification(SwinConfig(**SMALL_V2, num_labels=3))
    no_decay = {n for g in param_groups(model, 0.05, 1.0, [2, 2]) if g["weight_decay"] == 0.0 for n in g["names"]}
    block = "swin.stages.0.blocks.0."
    assert {block + "attn.logit_scale", block + "attn.cpb_mlp.0.weight", block + "attn.cpb_mlp.2.weight",
            block + "attn.q_bias", block + "attn.v_bias", block + "norm1.weight"} <= no_decay
    assert block + "attn.qkv.weight" not in no_decay and block + "mlp.fc1.weight" not in no_decay


def test_finetune_v2_preset_from_scratch_and_from_a_v2_folder(tmp_path, v2_classifier):
    tiny = ["--max-train-samples", 32, "--max-eval-samples", 16, "--batch-size", 8, "--no-progress", "--max-steps", 1]
    out = tmp_path / "scratch"
    assert _finetune(["--model", PRESET, "--image-size", 32, "--output-dir", out, *tiny]) == 0
    config = SwinConfig.from_pretrained(out)
    assert (config.version, config.window_size, config.image_size, config.embed_dim) == (2, 8, 32, 96)
    assert "Swin Transformer V2 (Liu et al., CVPR 2022)" in (out / "README.md").read_text()

    out = tmp_path / "tuned"
    assert _finetune(["--model", v2_classifier, "--profile", "digits", "--lr", 1e-9, "--output-dir", out, *tiny]) == 0
    tuned, source = SwinForImageClassification.from_pretrained(out), SwinForImageClassification.from_pretrained(v2_classifier)
    assert tuned.config.version == 2 and tuned.config.pretrained_window_sizes == [3, 3] and tuned.config.num_labels == 10
    for name in ("swin.stages.1.blocks.1.attn.cpb_mlp.0.weight", "swin.stages.0.blocks.0.attn.logit_scale"):
        torch.testing.assert_close(tuned.state_dict()[name], source.state_dict()[name], atol=1e-6, rtol=0)
    assert json.loads((out / "metrics.json").read_text())["from_scratch"] is False


def test_simmim_v2_preset_from_scratch_and_from_a_v2_folder(tmp_path, v2_classifier):
    from swin_hf.training.simmim import main

    tiny = ["--max-steps", 1, "--batch-size", 8, "--max-train-samples", 16, "--max-eval-samples", 8, *CPU]
    out = tmp_path / "scratch"
    assert main([str(a) for a in ["--model", PRESET, "--image-size", 32, "--output-dir", out, *tiny]]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["version"] == 2 and config["architectures"] == ["SwinForMaskedImageModeling"]
    assert config["encoder_stride"] == 32 and config["image_size"] == 32

    out = tmp_path / "continued"
    assert main([str(a) for a in ["--model", v2_classifier, "--output-dir", out, *tiny]]) == 0
    model = SwinForMaskedImageModeling.from_pretrained(out)
    assert model.config.version == 2 and model.config.pretrained_window_sizes == [3, 3]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1


def test_segment_v2_preset_and_a_v2_folder(tmp_path, v2_classifier):
    from swin_hf.segmentation.train import SegmentSettings, build_model, main

    # the preset builds UperNet on a V2 backbone (training it for steps is the folder run's job below)
    settings = SegmentSettings(model=PRESET, image_size=32, drop_path=0.1, hidden_size=32)
    upernet = build_model(settings, {0: "a", 1: "b"}).eval()
    assert upernet.config.backbone_config.version == 2 and upernet.config.backbone_config.window_size == 8
    with torch.no_grad():
        assert upernet(torch.randn(1, 3, 32, 32)).logits.shape == (1, 2, 32, 32)

    out = tmp_path / "upernet"
    code = main(["--model", str(v2_classifier), "--output-dir", str(out), "--max-steps", "1", "--batch-size", "8",
                 "--image-size", "32", "--max-train-samples", "16", "--max-eval-samples", "8", "--num-overlays", "1",
                 "--hidden-size", "32", *CPU])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["backbone_config"]["version"] == 2 and config["backbone_config"]["pretrained_window_sizes"] == [3, 3]
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["mean_iou"] <= 1.0
