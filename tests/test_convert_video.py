"""The official Video Swin checkpoints (mmaction layout) <-> VideoSwinForVideoClassification, strict both ways, on a
state dict made here by the inverse mapping (key names pinned), and `swin-hf convert --from mmaction`."""

import pytest
import torch

from swin_hf import VideoSwinConfig, VideoSwinForVideoClassification
from swin_hf.convert import ConversionError
from swin_hf.convert_video import from_mmaction, mmaction_kind, to_mmaction

BLOCK = ["norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.relative_position_index",
         "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
         "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
# the official SwinTransformer3D + I3DHead names of a 2-stage model with depths [1, 2]
OFFICIAL_KEYS = {
    "backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias", "backbone.patch_embed.norm.weight",
    "backbone.patch_embed.norm.bias",
    *(f"backbone.layers.0.blocks.0.{k}" for k in BLOCK),
    "backbone.layers.0.downsample.reduction.weight", "backbone.layers.0.downsample.norm.weight",
    "backbone.layers.0.downsample.norm.bias",
    *(f"backbone.layers.1.blocks.{b}.{k}" for b in (0, 1) for k in BLOCK),
    "backbone.norm.weight", "backbone.norm.bias", "cls_head.fc_cls.weight", "cls_head.fc_cls.bias",
}


def _model(**overrides):
    torch.manual_seed(0)
    values = dict(embed_dim=16, depths=[1, 2], num_heads=[1, 2], window_size=[2, 4, 4], num_labels=5, image_size=32,
                  num_frames=8, **overrides)
    return VideoSwinForVideoClassification(VideoSwinConfig(**values)).eval()


def test_the_official_names_round_trip_strictly_with_equal_logits():
    model = _model()
    official = to_mmaction(model.state_dict(), model.config)
    assert set(official) == OFFICIAL_KEYS and mmaction_kind(official)
    index = official["backbone.layers.0.blocks.0.attn.relative_position_index"]
    assert index.shape == (32, 32) and int(index.max()) == 3 * 7 * 7 - 1  # (2T-1)(2M-1)^2 offsets of a 2x4x4 window
    assert official["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (147, 1)
    assert official["backbone.layers.0.downsample.reduction.weight"].shape == (32, 64)
    assert official["cls_head.fc_cls.weight"].shape == (5, 32)

    config, ours = from_mmaction(official)
    assert (config.embed_dim, config.depths, config.num_heads, config.window_size, config.patch_size, config.num_labels) == \
        (16, [1, 2], [1, 2], [2, 4, 4], [2, 4, 4], 5)
    converted = VideoSwinForVideoClassification(config).eval()
    converted.load_state_dict(ours, strict=True)
    pixels = torch.randn(2, 6, 3, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(converted(pixels).logits, model(pixels).logits, rtol=0, atol=0)


def test_a_backbone_only_file_and_one_without_patch_norm_convert():
    model = _model(patch_norm=False)
    official = {k: v for k, v in to_mmaction(model.state_dict(), model.config).items() if not k.startswith("cls_head.")}
    config, ours = from_mmaction(official)
    assert config.patch_norm is False and "classifier.weight" not in ours
    missing, unexpected = VideoSwinForVideoClassification(config).load_state_dict(ours, strict=False)
    assert not unexpected and set(missing) == {"classifier.weight", "classifier.bias"}


def test_keys_the_official_model_does_not_have_or_lacks_are_named():
    model = _model()
    official = to_mmaction(model.state_dict(), model.config)
    with pytest.raises(ConversionError, match=r"not official Video Swin weights: cls_head\.fc_aux\.weight"):
        from_mmaction({**official, "cls_head.fc_aux.weight": torch.zeros(1)})
    del official["backbone.layers.1.blocks.1.mlp.fc2.bias"]
    with pytest.raises(ConversionError, match=r"missing: swin\.stages\.1\.blocks\.1\.mlp\.fc2\.bias"):
        from_mmaction(official)
    with pytest.raises(ConversionError, match="not an official Video Swin checkpoint"):
        from_mmaction({"patch_embed.proj.weight": torch.zeros(1)})


def test_swin_hf_convert_from_mmaction_writes_a_folder_with_its_processor(tmp_path):
    from swin_hf.cli import main

    model = _model()
    path = tmp_path / "swin_tiny_patch244_window877_kinetics400_1k.pth"
    torch.save({"state_dict": to_mmaction(model.state_dict(), model.config), "meta": {"epoch": 30}}, path)
    assert main(["convert", "--from", "mmaction", str(path), str(tmp_path / "out")]) == 0
    loaded = VideoSwinForVideoClassification.from_pretrained(tmp_path / "out").eval()
    pixels = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits, rtol=0, atol=1e-6)  # (attention kernel)
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert type(processor).__name__ == "VideoSwinImageProcessor" and processor.crop_size == {"height": 224, "width": 224}
