"""Checkpoint interop (issue #3): official / timm / transformers state dicts <-> swin_hf, strictness, and
loading into another window size, image size or number of labels."""

import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from interop_reference import (  # noqa: E402
    V2_FINE_TUNED,
    official_to_timm_by_hand,
    reference_forward,
    reference_index,
    reference_mask,
    tiny_config,
    tiny_model,
)

from swin_hf import ConversionError, SwinConfig, SwinForImageClassification, SwinModel, convert_state_dict  # noqa: E402
from swin_hf.convert import guess_source, infer_config  # noqa: E402
from swin_hf.resize import resize_absolute_position_embedding, resize_relative_position_bias_table  # noqa: E402


def _block_keys(prefix, with_buffers, shifted):
    keys = [f"{prefix}.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for p in ("weight", "bias")]
    keys.append(f"{prefix}.attn.relative_position_bias_table")
    if with_buffers:
        keys.append(f"{prefix}.attn.relative_position_index")
        if shifted:
            keys.append(f"{prefix}.attn_mask")
    return keys


# The exact key sets of the tiny model (depths [2, 2], window 4, image 32: stage 1 is 8x8 tokens, so its
# second block is shifted; stage 2 is 4x4 = one window, so it is not and has no mask).
OFFICIAL_KEYS = sorted(
    """
    patch_embed.proj.weight patch_embed.proj.bias patch_embed.norm.weight patch_embed.norm.bias
    layers.0.downsample.norm.weight layers.0.downsample.norm.bias layers.0.downsample.reduction.weight
    norm.weight norm.bias head.weight head.bias
    """.split()
    + _block_keys("layers.0.blocks.0", True, False)
    + _block_keys("layers.0.blocks.1", True, True)
    + _block_keys("layers.1.blocks.0", True, False)
    + _block_keys("layers.1.blocks.1", True, False)
)
TIMM_KEYS = sorted(
    """
    patch_embed.proj.weight patch_embed.proj.bias patch_embed.norm.weight patch_embed.norm.bias
    layers.1.downsample.norm.weight layers.1.downsample.norm.bias layers.1.downsample.reduction.weight
    norm.weight norm.bias head.fc.weight head.fc.bias
    """.split()
    + [k for s in (0, 1) for b in (0, 1) for k in _block_keys(f"layers.{s}.blocks.{b}", False, False)]
)


def test_official_and_timm_key_sets_are_pinned():
    ours = tiny_model().state_dict()
    assert sorted(convert_state_dict(ours, to="official")) == OFFICIAL_KEYS
    assert sorted(convert_state_dict(ours, to="timm")) == TIMM_KEYS
    assert len(OFFICIAL_KEYS) == 68 and len(TIMM_KEYS) == 63  # 4 blocks x 13 tensors + 11 others (+ 5 buffers)


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_round_trip_is_the_identity(layout):
    ours = tiny_model().state_dict()
    snapshot = {k: v.clone() for k, v in ours.items()}
    exported = convert_state_dict(ours, to=layout)
    back = convert_state_dict(exported, source=layout)
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    # and the other way: layout -> ours -> layout, buffers rebuilt exactly
    again = convert_state_dict(back, to=layout)
    assert again.keys() == exported.keys()
    assert all(torch.equal(again[k], exported[k]) for k in exported)
    assert ours.keys() == snapshot.keys() and all(torch.equal(ours[k], snapshot[k]) for k in ours)  # input untouched


def test_exported_buffers_match_the_official_definitions():
    official = convert_state_dict(tiny_model(image_size=64).state_dict(), to="official", config=tiny_config(image_size=64))
    assert torch.equal(official["layers.0.blocks.0.attn.relative_position_index"], reference_index(4))
    assert official["layers.0.blocks.0.attn.relative_position_index"].dtype == torch.long
    assert torch.equal(official["layers.0.blocks.1.attn_mask"], reference_mask(16, 16, 4, 2))  # 16 windows
    assert torch.equal(official["layers.1.blocks.1.attn_mask"], reference_mask(8, 8, 4, 2))
    assert "layers.0.blocks.0.attn_mask" not in official  # W-MSA blocks have no mask


@pytest.mark.parametrize("absolute", [False, True])
def test_official_weights_give_the_reference_outputs(absolute):
    """An independent implementation of the official forward pass, fed the official-layout weights, and
    swin_hf fed the converted weights, agree."""
    model = tiny_model(image_size=64, use_absolute_embeddings=absolute)
    config = model.config
    official = convert_state_dict(model.state_dict(), to="official")
    restored = SwinForImageClassification(config).eval()
    restored.load_state_dict(convert_state_dict(official, source="official"), strict=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference_forward(official, config, images)
        torch.testing.assert_close(restored(images).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(images).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_timm_weights_give_the_reference_outputs(version):
    """Swin V2: timm 1.x's swin_transformer_v2 moves the patch merging and the head as its V1 does."""
    model = tiny_model() if version == 1 else tiny_model(**V2_FINE_TUNED)
    official = convert_state_dict(model.state_dict(), to="official", config=model.config)
    timm = official_to_timm_by_hand(official)  # renamed without swin_hf's table
    assert sorted(timm) == (TIMM_KEYS if version == 1 else sorted(convert_state_dict(model.state_dict(), to="timm")))
    restored = SwinForImageClassification(model.config).eval()
    restored.load_state_dict(convert_state_dict(timm, source="timm"), strict=True)
    images = torch.randn(2, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        torch.testing.assert_close(restored(images).logits, reference_forward(official, model.config, images), atol=1e-5, rtol=1e-5)


def _timm_or_skip():
    """timm itself, where it imports. It is an optional extra: it needs a torchvision that loads against
    this torch (BENCHMARKS.md, "Three implementations", says how to set one up); the hand-written layout above
    covers the key names without it."""
    try:
        import timm
    except Exception as error:  # not installed (ImportError) or torchvision broken (RuntimeError)
        pytest.skip(f"timm does not import here: {type(error).__name__}: {error}")
    return timm


def test_real_timm_swin_and_ours_compute_the_same_function_both_ways():
    timm = _timm_or_skip()
    config = tiny_config()
    theirs = timm.models.swin_transformer.SwinTransformer(
        img_size=32, patch_size=config.patch_size, embed_dim=config.embed_dim, depths=tuple(config.depths),
        num_heads=tuple(config.num_heads), window_size=config.window_size, num_classes=config.num_labels,
    ).eval()  # fmt: skip
    ours = tiny_model()
    images = torch.randn(2, 3, 32, 32)
    # ours -> timm: every key timm expects, nothing else
    theirs.load_state_dict(convert_state_dict(ours.state_dict(), to="timm"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(theirs(images), ours(images).logits, atol=1e-5, rtol=1e-5)
    # timm -> ours, from weights changed on timm's side (every tensor, so a misplaced one shows)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in theirs.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    restored = SwinForImageClassification(config).eval()
    restored.load_state_dict(convert_state_dict(theirs.state_dict(), source="timm"), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(restored(images).logits, theirs(images), atol=1e-5, rtol=1e-5)


def test_timm_absolute_position_embedding_layouts():
    model = tiny_model(use_absolute_embeddings=True)
    timm = convert_state_dict(model.state_dict(), to="timm")
    assert timm["absolute_pos_embed"].shape == (1, 64, 16)  # (1, L, C), as the official code
    back = convert_state_dict(timm, source="timm")
    assert torch.equal(back["swin.embeddings.absolute_pos_embed"], model.state_dict()["swin.embeddings.absolute_pos_embed"])
    grid = dict(timm, absolute_pos_embed=timm["absolute_pos_embed"].reshape(1, 8, 8, 16))  # channels-last grid
    assert torch.equal(convert_state_dict(grid, source="timm")["swin.embeddings.absolute_pos_embed"], back["swin.embeddings.absolute_pos_embed"])


def test_transformers_weights_give_transformers_outputs():
    """transformers' own Swin is a second independent reference."""
    from transformers import SwinConfig as TransformersSwinConfig
    from transformers import SwinForImageClassification as TransformersSwin

    torch.manual_seed(0)
    theirs = TransformersSwin(
        TransformersSwinConfig(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, image_size=32, num_labels=5)
    ).eval()
    ours = SwinForImageClassification(tiny_config()).eval()
    converted = convert_state_dict(theirs.state_dict(), source="transformers")
    ours.load_state_dict(converted, strict=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(images).logits, theirs(images).logits, atol=1e-5, rtol=1e-5)
        # transformers -> swin_hf -> official: the official reference agrees too
        official = convert_state_dict(converted, to="official")
        torch.testing.assert_close(reference_forward(official, ours.config, images), theirs(images).logits, atol=1e-5, rtol=1e-5)


def test_config_is_inferred_from_shapes_and_buffers():
    model = tiny_model(image_size=64, mlp_ratio=2.0, qkv_bias=False)
    official = convert_state_dict(model.state_dict(), to="official", config=model.config)
    config = infer_config(convert_state_dict(official, source="official"))
    assert (config.embed_dim, config.depths, config.num_heads, config.window_size) == (16, [2, 2], [2, 4], 4)
    assert (config.mlp_ratio, config.qkv_bias, config.num_labels, config.patch_size) == (2.0, False, 5, 4)
    assert config.image_size == 32  # weights alone: the size at which the last stage is one window
    # the official SW-MSA mask of stage 1 has (64/4/4)^2 = 16 windows: the image is 64 pixels
    from swin_hf.convert import _inference_hints

    assert _inference_hints(official, "official") == {"image_size": 64}
    headless = {k: v for k, v in official.items() if not k.startswith("head.")}
    assert infer_config(convert_state_dict(headless, source="official")).num_labels == 0


def test_headless_checkpoints_load_into_the_base_model():
    official = convert_state_dict(tiny_model().state_dict(), to="official")
    headless = convert_state_dict({k: v for k, v in official.items() if not k.startswith("head.")}, source="official")
    assert not any(k.startswith("classifier") for k in headless)
    base = SwinModel(tiny_config(num_labels=0))
    base.load_state_dict({k[len("swin."):]: v for k, v in headless.items()}, strict=True)


def test_unknown_keys_are_listed():
    official = convert_state_dict(tiny_model().state_dict(), to="official")
    official["layers.0.blocks.0.attn.gamma"] = torch.zeros(3)
    with pytest.raises(ConversionError, match=r"layers\.0\.blocks\.0\.attn\.gamma"):
        convert_state_dict(official, source="official")


def test_missing_keys_and_wrong_shapes_are_listed():
    official = convert_state_dict(tiny_model().state_dict(), to="official")
    missing = {k: v for k, v in official.items() if k != "layers.1.blocks.0.mlp.fc2.bias"}
    with pytest.raises(ConversionError, match=r"missing 1 key\(s\): layers\.1\.blocks\.0\.mlp\.fc2\.bias\."):
        convert_state_dict(missing, source="official")
    wrong = dict(official, **{"layers.0.blocks.1.mlp.fc1.bias": torch.zeros(7)})
    with pytest.raises(ConversionError, match=r"layers\.0\.blocks\.1\.mlp\.fc1\.bias: \(7,\) \(expected \(64,\)\)"):
        convert_state_dict(wrong, source="official")
    with pytest.raises(ConversionError, match="does not fit"):
        convert_state_dict(official, source="official", config=tiny_config(depths=[2, 3], num_heads=[2, 4]))


def test_wrong_source_and_other_architectures_are_explained():
    official = convert_state_dict(tiny_model().state_dict(), to="official")
    timm = convert_state_dict(tiny_model().state_dict(), to="timm")
    assert guess_source(official) == "official" and guess_source(timm) == "timm"
    with pytest.raises(ConversionError, match="look like the 'timm' layout"):
        convert_state_dict(timm, source="official")
    with pytest.raises(ConversionError, match="look like the 'official' layout"):
        convert_state_dict(official, source="timm")
    resnet = {"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.zeros(8), "fc.weight": torch.zeros(10, 8)}
    with pytest.raises(ConversionError, match=r"3 key\(s\).*conv1\.weight.*does not look like a Swin"):
        convert_state_dict(resnet, source="official")
    with pytest.raises(ValueError, match="Unknown source"):
        convert_state_dict(official, source="caffe")
    with pytest.raises(ValueError, match="Unknown export format"):
        convert_state_dict(tiny_model().state_dict(), to="onnx")


# -------------------------------------------------------------------------------------------------
# New resolutions and heads
# -------------------------------------------------------------------------------------------------


def test_resize_relative_position_bias_table():
    table = torch.randn(49, 3)  # window 4: 7x7 offsets
    assert resize_relative_position_bias_table(table, 4) is table
    bigger = resize_relative_position_bias_table(table, 8)
    assert bigger.shape == (225, 3)
    constant = resize_relative_position_bias_table(torch.full((49, 3), 0.7), 12)
    torch.testing.assert_close(constant, torch.full((529, 3), 0.7))
    # heads stay separate: resizing head 1 alone gives the same column
    torch.testing.assert_close(bigger[:, 1:2], resize_relative_position_bias_table(table[:, 1:2].contiguous(), 8))
    # 2x upsampling of a smooth bias keeps its values at the centre offset (0, 0) close
    ramp = (torch.arange(7.0)[:, None] + torch.arange(7.0)[None, :]).reshape(49, 1)
    assert abs(resize_relative_position_bias_table(ramp, 12).view(23, 23)[11, 11] - 6.0) < 0.5
    with pytest.raises(ValueError, match=r"\(2M-1\)\^2 rows"):
        resize_relative_position_bias_table(torch.zeros(50, 3), 4)


def test_resize_absolute_position_embedding():
    pos = torch.randn(1, 64, 16)
    assert resize_absolute_position_embedding(pos, (8, 8), (8, 8)) is pos
    assert resize_absolute_position_embedding(pos, (8, 8), (12, 16)).shape == (1, 192, 16)


def test_from_pretrained_resizes_to_a_new_window_and_image_size(tmp_path, caplog):
    model = tiny_model(use_absolute_embeddings=True)
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="swin_hf"):
        bigger = SwinForImageClassification.from_pretrained(tmp_path, window_size=8, image_size=64)
    assert bigger.config.window_size == 8 and bigger.config.image_size == 64
    table = bigger.swin.stages[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (225, 2)
    expected = resize_relative_position_bias_table(model.swin.stages[0].blocks[0].attn.relative_position_bias_table.detach(), 8)
    torch.testing.assert_close(table.detach(), expected)
    assert bigger.swin.embeddings.absolute_pos_embed.shape == (1, 256, 16)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "Resized 4 relative position bias table(s) from window 4" in messages and "to window 8" in messages
    assert "from a 8x8 to a 16x16 patch grid" in messages
    torch.testing.assert_close(bigger.classifier.weight, model.classifier.weight)  # the rest is loaded as is
    with torch.no_grad():
        assert torch.isfinite(bigger(torch.randn(1, 3, 64, 64)).logits).all()


def test_new_num_labels_reinitialises_the_head_with_a_log_line(tmp_path, caplog):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="swin_hf"):
        retargeted = SwinForImageClassification.from_pretrained(tmp_path, num_labels=3, ignore_mismatched_sizes=True)
    assert retargeted.classifier.weight.shape == (3, 32) and retargeted.config.num_labels == 3
    assert len(retargeted.config.id2label) == 3
    assert "classifier has 5 labels but the config asks for 3: the classifier is re-initialised" in caplog.text
    torch.testing.assert_close(retargeted.swin.norm.weight, model.swin.norm.weight)
    # as in transformers, a new head must be asked for: without ignore_mismatched_sizes it is an error
    with pytest.raises(Exception, match="size mismatch|ignore_mismatched_sizes"):
        SwinForImageClassification.from_pretrained(tmp_path, num_labels=3)
    # a new window and a new head at once
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="swin_hf"):
        both = SwinForImageClassification.from_pretrained(
            tmp_path, num_labels=3, ignore_mismatched_sizes=True, window_size=8, image_size=64
        )
    assert both.classifier.weight.shape == (3, 32) and both.config.window_size == 8
    assert "to window 8" in caplog.text and "re-initialised" in caplog.text
    plain = SwinForImageClassification.from_pretrained(tmp_path)  # nothing to adapt: transformers loads it
    torch.testing.assert_close(plain.classifier.weight, model.classifier.weight)


def test_transformers_checkpoint_loads_at_a_new_window(tmp_path, caplog):
    from transformers import SwinConfig as TransformersSwinConfig
    from transformers import SwinForImageClassification as TransformersSwin

    TransformersSwin(
        TransformersSwinConfig(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, image_size=32, num_labels=5)
    ).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="swin_hf"):
        model = SwinForImageClassification.from_pretrained(tmp_path, window_size=8, image_size=64)
    assert isinstance(model.config, SwinConfig) and model.config.window_size == 8
    assert model.swin.stages[1].blocks[1].attn.relative_position_bias_table.shape == (225, 4)
    assert "to window 8" in caplog.text
