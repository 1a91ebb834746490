"""SwinConfig: presets, validation with messages that name the field and the fix, serialisation."""

import pytest
import torch

from swin_hf import PRESETS, SwinConfig, SwinForImageClassification

# Parameter counts of the reference implementations with a 1000-class head.
REFERENCE_PARAMS = {
    "swin-tiny-patch4-window7-224": 28_288_354,
    "swin-small-patch4-window7-224": 49_606_258,
    "swin-base-patch4-window7-224": 87_768_224,
    "swin-base-patch4-window12-384": 87_903_584,
    "swin-large-patch4-window7-224": 196_532_476,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_preset_parameter_counts_match_the_references(name):
    with torch.device("meta"):  # no memory, no init: only shapes
        model = SwinForImageClassification(SwinConfig.from_preset(name, num_labels=1000))
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMS[name]


def test_large_384_differs_from_large_224_only_by_the_bigger_tables():
    def count(name):
        with torch.device("meta"):
            return sum(p.numel() for p in SwinForImageClassification(SwinConfig.from_preset(name)).parameters())

    heads = sum(SwinConfig.from_preset("swin-large-patch4-window7-224").num_heads[s] * d for s, d in enumerate([2, 2, 18, 2]))
    assert count("swin-large-patch4-window12-384") - count("swin-large-patch4-window7-224") == heads * (23**2 - 13**2)


def test_presets_cover_the_paper():
    v1 = {name for name, preset in PRESETS.items() if preset.version == 1}
    assert v1 == set(REFERENCE_PARAMS) | {"swin-large-patch4-window12-384"}
    tiny = SwinConfig.from_preset("swin-tiny-patch4-window7-224")
    assert (tiny.embed_dim, tiny.depths, tiny.num_heads, tiny.window_size) == (96, [2, 2, 6, 2], [3, 6, 12, 24], 7)
    base384 = SwinConfig.from_preset("swin-base-patch4-window12-384")
    assert (base384.embed_dim, base384.window_size, base384.image_size) == (128, 12, 384)


def test_preset_overrides_and_unknown_preset():
    config = SwinConfig.from_preset("swin-tiny-patch4-window7-224", num_labels=10, drop_path_rate=0.0)
    assert config.num_labels == 10 and config.drop_path_rate == 0.0
    with pytest.raises(ValueError, match="Unknown Swin preset 'swin-huge'.*swin-tiny-patch4-window7-224"):
        SwinConfig.from_preset("swin-huge")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depths=[2, 2], num_heads=[3]), r"num_heads: has 1 entries but depths has 2\. Give one head count per stage"),
        (dict(num_heads=[5, 6, 12, 24]), r"num_heads: stage 1 has width 96 .* not divisible by 5 heads"),
        (dict(embed_dim=32, num_heads=[3, 6, 12, 24]), r"stage 1 has width 32"),
        (dict(embed_dim=0), r"embed_dim: got 0\. Use a positive integer"),
        (dict(window_size=0), r"window_size: got 0"),
        (dict(patch_size=-4), r"patch_size: got -4"),
        (dict(image_size=(224,)), r"image_size: got \(224,\)"),
        (dict(depths=[]), r"depths: got \[\]"),
        (dict(depths=[2, 0, 2, 2]), r"depths: got \[2, 0, 2, 2\]"),
        (dict(mlp_ratio=0), r"mlp_ratio"),
        (dict(drop_path_rate=1.5), r"drop_path_rate: got 1\.5\. Use a probability"),
        (dict(num_channels=0), r"num_channels"),
        (dict(layer_norm_eps=float("nan")), r"layer_norm_eps: got nan\. Use a positive, finite number"),
        (dict(layer_norm_eps=float("inf")), r"layer_norm_eps: got inf"),
        (dict(layer_norm_eps=0.0), r"layer_norm_eps: got 0\.0"),
        (dict(mlp_ratio=float("nan")), r"mlp_ratio: got nan\. Use a positive, finite ratio"),
        (dict(mlp_ratio=float("inf")), r"mlp_ratio: got inf"),
        (dict(initializer_range=float("inf")), r"initializer_range: got inf"),
        (dict(attention_probs_dropout_prob=float("nan")), r"attention_probs_dropout_prob: got nan"),
        (dict(hidden_act="swishy"), r"hidden_act: got 'swishy'\. Use an activation name"),
        (dict(version=True), r"version: got True"),
    ],
)
def test_invalid_configs_fail_at_construction_naming_field_and_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SwinConfig(**kwargs)


def test_derived_attributes_and_backbone_features():
    config = SwinConfig(embed_dim=32, depths=[1, 1, 1], num_heads=[1, 2, 4], out_features=["stage1", "stage3"])
    assert config.hidden_size == 128 and config.num_layers == 3
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3"]
    assert config.out_indices == [1, 3]
    assert config.num_attention_heads == [1, 2, 4]  # transformers' attribute alias
    with pytest.raises(ValueError, match="out_features"):
        SwinConfig(depths=[1, 1], num_heads=[3, 6], out_features=["stage4"])


def test_config_round_trip(tmp_path):
    config = SwinConfig.from_preset("swin-small-patch4-window7-224", num_labels=3, out_features=["stage2", "stage4"])
    config.save_pretrained(tmp_path)
    loaded = SwinConfig.from_pretrained(tmp_path)
    for field in ("embed_dim", "depths", "num_heads", "window_size", "drop_path_rate", "out_features", "out_indices"):
        assert getattr(loaded, field) == getattr(config, field), field
    assert loaded.id2label == config.id2label and loaded.model_type == "swin_hf"
