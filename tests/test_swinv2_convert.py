"""Swin V2 checkpoint interop: the official `.pth` and timm layouts <-> swin_hf, strict, both ways; the
window and pre-training windows read from the official relative_coords_table buffers and asked for where
a state dict has none; `swin-hf convert --from official|timm` on V2 files.

References: an independent functional forward over the official layout (interop_reference.py, also fed
transformers' Swinv2 weights) and transformers' Swinv2 itself."""

import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from test_convert import OFFICIAL_KEYS, TIMM_KEYS  # noqa: E402
from interop_reference import (  # noqa: E402
    V2_FINE_TUNED,
    reference_coords_table,
    reference_forward,
    reference_index,
    reference_mask,
    tiny_config,
    tiny_model,
)

from swin_hf import ConversionError, SwinConfig, SwinForImageClassification, convert_state_dict, infer_config  # noqa: E402
from swin_hf.cli import main  # noqa: E402
from swin_hf.convert import _inference_hints, guess_source, guess_version  # noqa: E402

V2, FT = dict(version=2), V2_FINE_TUNED  # (timm's V2 layout against the reference: test_convert.py)


def _as_v2(v1_keys, official):
    """The V2 names of the same model: the official V2 code keeps every V1 name but the attention's, where
    the qkv bias becomes q_bias + v_bias and the bias table a temperature, an MLP and (official, a buffer)
    its coordinates."""
    keys = []
    for key in v1_keys:
        if key.endswith(("attn.qkv.bias", "attn.relative_position_bias_table")):
            continue
        keys.append(key)
        if key.endswith("attn.qkv.weight"):
            attn = key.removesuffix("qkv.weight")
            keys += [attn + n for n in ("q_bias", "v_bias", "logit_scale", "cpb_mlp.0.weight", "cpb_mlp.0.bias", "cpb_mlp.2.weight")]
            keys += [attn + "relative_coords_table"] if official else []
    return sorted(keys)


# The tiny model (depths [2, 2], window 4, image 32: stage 1 is 8x8 tokens, its second block shifted, stage 2
# one window) as a V2; timm 1.x moves the patch merging and the head as for V1.
OFFICIAL_V2_KEYS, TIMM_V2_KEYS = _as_v2(OFFICIAL_KEYS, official=True), _as_v2(TIMM_KEYS, official=False)


def test_official_and_timm_v2_key_sets_are_pinned():
    model = tiny_model(**V2)
    assert sorted(convert_state_dict(model.state_dict(), to="official", config=model.config)) == OFFICIAL_V2_KEYS
    assert sorted(convert_state_dict(model.state_dict(), to="timm")) == TIMM_V2_KEYS
    assert len(OFFICIAL_V2_KEYS) == 4 * 19 + 1 + 11 and len(TIMM_V2_KEYS) == 4 * 17 + 11  # 2 buffers + a mask


@pytest.mark.parametrize("case", ["plain", "pretrained-windows"])
@pytest.mark.parametrize("layout", ["official", "timm"])
def test_v2_round_trip_is_the_identity(layout, case):
    model = tiny_model(**V2) if case == "plain" else tiny_model(**FT)
    ours = model.state_dict()
    snapshot = {k: v.clone() for k, v in ours.items()}
    exported = convert_state_dict(ours, to=layout, config=model.config)
    back = convert_state_dict(exported, source=layout)
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)
    # layout -> ours -> layout: the official buffers come back bit for bit from the config read off them
    config = infer_config(back, **_inference_hints(exported, layout)) if layout == "official" else model.config
    again = convert_state_dict(back, to=layout, config=config)
    assert again.keys() == exported.keys() and all(torch.equal(again[k], exported[k]) for k in exported)
    assert all(torch.equal(ours[k], snapshot[k]) for k in ours)  # input untouched


def test_exported_v2_buffers_match_the_official_definitions():
    model = tiny_model(**FT)
    official = convert_state_dict(model.state_dict(), to="official", config=model.config)
    for stage, (window, pretrained) in enumerate([(8, 6), (8, 6), (4, 3)]):  # stage 3 (4x4 tokens): window 4
        for block in (0, 1):
            pre = f"layers.{stage}.blocks.{block}.attn."
            assert torch.equal(official[pre + "relative_coords_table"], reference_coords_table(window, pretrained))
            assert official[pre + "relative_coords_table"].shape == (1, 2 * window - 1, 2 * window - 1, 2)
            assert torch.equal(official[pre + "relative_position_index"], reference_index(window))
    assert torch.equal(official["layers.0.blocks.1.attn_mask"], reference_mask(16, 16, 8, 4))
    assert "layers.1.blocks.1.attn_mask" not in official and "layers.2.blocks.1.attn_mask" not in official
    plain = convert_state_dict(tiny_model(**V2).state_dict(), to="official", config=tiny_config(**V2))
    assert torch.equal(plain["layers.1.blocks.0.attn.relative_coords_table"], reference_coords_table(4))


@pytest.mark.parametrize("case", ["plain", "pretrained-windows"])
def test_official_v2_weights_give_the_reference_outputs(case):
    model = tiny_model(**V2) if case == "plain" else tiny_model(**FT)
    config = model.config
    official = convert_state_dict(model.state_dict(), to="official", config=config)
    restored = SwinForImageClassification(infer_config(convert_state_dict(official, source="official"),
                                                       **_inference_hints(official, "official"))).eval()
    restored.load_state_dict(convert_state_dict(official, source="official"), strict=True)
    size = config.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = reference_forward(official, config, images)
        torch.testing.assert_close(model(images).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(restored(images).logits, expected, atol=1e-5, rtol=1e-5)


def test_transformers_swinv2_through_the_official_layout_gives_its_outputs():
    """transformers' Swinv2 is a second, independent reference: its weights, exported to the official layout
    and run by the functional reference, give its logits; and the official file converts back to them."""
    import transformers

    from swin_reference import randomize

    fields = dict(embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4], window_size=8, image_size=64,
                  pretrained_window_sizes=[6, 6, 3], num_labels=5)
    theirs = randomize(transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**fields)), std=0.1).eval()
    config = SwinConfig(**fields, version=2)
    official = convert_state_dict(convert_state_dict(theirs.state_dict(), source="transformers"), to="official", config=config)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = theirs(images).logits
        torch.testing.assert_close(reference_forward(official, config, images), expected, atol=1e-5, rtol=1e-4)
        ours = SwinForImageClassification(infer_config(convert_state_dict(official, source="official"),
                                                       **_inference_hints(official, "official"))).eval()
        ours.load_state_dict(convert_state_dict(official, source="official"), strict=True)
        torch.testing.assert_close(ours(images).logits, expected, atol=1e-5, rtol=1e-4)


def test_the_config_is_read_from_the_official_v2_buffers():
    model = tiny_model(**FT)
    official = convert_state_dict(model.state_dict(), to="official", config=model.config)
    hints = _inference_hints(official, "official")
    assert hints == {"window_size": 8, "pretrained_window_sizes": [6, 6, 3], "image_size": 64}
    config = infer_config(convert_state_dict(official, source="official"), **hints)
    assert (config.version, config.depths, config.num_heads, config.num_labels) == (2, [2, 2, 2], [1, 2, 4], 5)
    plain = convert_state_dict(tiny_model(**V2, image_size=64).state_dict(), to="official", config=tiny_config(**V2, image_size=64))
    assert _inference_hints(plain, "official") == {"window_size": 4, "pretrained_window_sizes": [0, 0], "image_size": 64}
    # a released model's buffers: swinv2_base_patch4_window12to16_192to256_22kto1k_ft (stage 4: an 8x8 map)
    release = SwinConfig.from_preset("swinv2-base-patch4-window12to16-192to256-22kto1k-ft")
    buffers = {f"layers.{s}.blocks.0.attn.relative_coords_table": reference_coords_table(w, p)
               for s, (w, p) in enumerate([(16, 12), (16, 12), (16, 12), (8, 6)])}
    assert _inference_hints(buffers, "official") == {"window_size": 16, "pretrained_window_sizes": [12, 12, 12, 6]}
    assert release.pretrained_window_sizes == [12, 12, 12, 6]


def test_a_v2_state_dict_without_buffers_needs_its_window_from_the_user():
    model = tiny_model(**V2)
    timm = convert_state_dict(model.state_dict(), to="timm")  # timm keeps no buffers: no window in the file
    ours = convert_state_dict(timm, source="timm")  # renaming and checking the shapes need no window
    assert ours.keys() == model.state_dict().keys()
    with pytest.raises(ConversionError, match=r"do not record their window size.*--preset NAME.*--config config\.json.*window_size=M"):
        infer_config(ours)
    assert infer_config(ours, window_size=4).window_size == 4
    with pytest.raises(ConversionError, match=r"relative_coords_table.*pass config="):
        convert_state_dict(ours, to="official")
    # a wrong shape is still named, in the source's own names
    broken = dict(timm, **{"layers.0.blocks.1.attn.logit_scale": torch.zeros(3, 1, 1)})
    with pytest.raises(ConversionError, match=r"does not fit Swin V2\(.*layers\.0\.blocks\.1\.attn\.logit_scale: \(3, 1, 1\) \(expected \(2, 1, 1\)\)"):
        convert_state_dict(broken, source="timm")


def test_guess_source_and_hints_know_v2_layouts():
    model = tiny_model(**V2)
    official = convert_state_dict(model.state_dict(), to="official", config=model.config)
    timm = convert_state_dict(model.state_dict(), to="timm")
    assert guess_source(official) == "official" and guess_source(timm) == "timm"
    assert guess_version(official) == guess_version(timm) == 2 and guess_version(tiny_model().state_dict()) == 1
    headless_timm = {k: v for k, v in timm.items() if not k.startswith("head.")}
    assert guess_source(headless_timm) == "timm"  # the patch merging at the start of stage 2 tells
    with pytest.raises(ConversionError, match=r"look like the 'official' layout of a Swin V2.*--from official"):
        convert_state_dict(official, source="timm")
    with pytest.raises(ConversionError, match=r"look like the 'timm' layout of a Swin V2.*--from timm"):
        convert_state_dict(timm, source="official")
    cr = {"patch_embed.proj.weight": torch.zeros(16, 3, 4, 4), "stages.0.blocks.0.attn.meta_mlp.fc1.weight": torch.zeros(8, 2)}
    with pytest.raises(ConversionError, match="swin_transformer_v2_cr"):
        convert_state_dict(cr, source="timm")
    with pytest.raises(ConversionError, match="swin_hf's own names"):
        convert_state_dict(model.state_dict(), source="official")


# -------------------------------------------------------------------------------------------------
# swin-hf convert
# -------------------------------------------------------------------------------------------------


def test_convert_official_v2_pth(tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    model = tiny_model(**FT)
    official = convert_state_dict(model.state_dict(), to="official", config=model.config)
    path = tmp_path / "swinv2_tiny_test.pth"
    torch.save({"model": official, "epoch": 30}, path)
    out = tmp_path / "out"
    assert main(["convert", "--from", "official", str(path), str(out)]) == 0
    assert "window 8, image 64" in capsys.readouterr().out
    loaded = AutoModelForImageClassification.from_pretrained(out).eval()
    assert loaded.config.version == 2 and loaded.config.pretrained_window_sizes == [6, 6, 3]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, reference_forward(official, model.config, images), atol=1e-5, rtol=1e-5)
    card = (out / "README.md").read_text()
    assert "Swin Transformer V2" in card and "`swinv2_tiny_test.pth` (official format)" in card


def test_convert_timm_v2_needs_a_window_and_takes_it_from_a_preset_config_or_timm_config(tmp_path, capsys, monkeypatch):
    from swin_hf.configuration_swin import PRESETS, Preset

    model = tiny_model(**V2, image_size=64)
    weights = tmp_path / "model.safetensors"
    save_file(convert_state_dict(model.state_dict(), to="timm"), weights)
    out = tmp_path / "out"
    assert main(["convert", "--from", "timm", str(weights), str(out)]) == 1
    err = capsys.readouterr().err
    assert "do not record their window size" in err and "--preset NAME" in err and "--config config.json" in err
    assert not out.exists()

    monkeypatch.setitem(PRESETS, "swinv2-tiny-test-window4-64", Preset(16, (2, 2), (2, 4), 4, 64, 2))
    assert main(["convert", "--from", "timm", str(weights), str(out), "--preset", "swinv2-tiny-test-window4-64"]) == 0
    images = torch.randn(1, 3, 64, 64)
    loaded = SwinForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, atol=1e-5, rtol=1e-5)

    (tmp_path / "mine").mkdir()
    config_file = tmp_path / "mine" / "config.json"
    model.config.to_json_file(config_file)
    assert main(["convert", "--from", "timm", str(weights), str(tmp_path / "out2"), "--config", str(config_file)]) == 0
    assert SwinConfig.from_pretrained(tmp_path / "out2").window_size == 4

    # a timm folder whose config.json names the architecture: the window comes from timm's model name
    folder = tmp_path / "timm_folder"
    folder.mkdir()
    save_file(convert_state_dict(model.state_dict(), to="timm"), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(
        {"architecture": "swinv2_tiny_test_window4_64", "pretrained_cfg": {"input_size": [3, 64, 64], "crop_pct": 0.9}}
    ))
    assert main(["convert", "--from", "timm", str(folder), str(tmp_path / "out3")]) == 0
    assert SwinConfig.from_pretrained(tmp_path / "out3").window_size == 4


def test_convert_transformers_swinv2_folder_keeps_its_config_and_labels(tmp_path):
    import transformers

    from swin_reference import randomize

    labels = {0: "cat", 1: "dog", 2: "fox"}
    fields = dict(embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, image_size=32, pretrained_window_sizes=[3, 2])
    theirs = randomize(transformers.Swinv2ForImageClassification(transformers.Swinv2Config(**fields, id2label=labels)), std=0.1).eval()
    theirs.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from", "transformers", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    loaded = SwinForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.version == 2 and loaded.config.pretrained_window_sizes == [3, 2] and loaded.config.id2label == labels
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, theirs(images).logits, atol=1e-5, rtol=1e-4)


def test_a_transformers_swinv2_folder_with_its_default_per_stage_lists_loads(tmp_path):
    """Swinv2Config keeps its 4-entry default pretrained_window_sizes (and num_heads) for a 3-stage model;
    transformers loads such a folder, and so do from_pretrained and `swin-hf convert`."""
    import transformers

    fields = dict(embed_dim=12, depths=[1, 1, 1], window_size=2, image_size=16)
    config = transformers.Swinv2Config(**fields)
    assert len(config.pretrained_window_sizes) == 4 and len(config.num_heads) == 4
    theirs = transformers.Swinv2ForImageClassification(config).eval()
    theirs.save_pretrained(tmp_path / "hf")
    images = torch.randn(1, 3, 16, 16)
    ours = SwinForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert ours.config.pretrained_window_sizes == [0, 0, 0] and ours.config.num_heads == [3, 6, 12]
    assert main(["convert", "--from", "transformers", str(tmp_path / "hf"), str(tmp_path / "out")]) == 0
    converted = SwinForImageClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        expected = theirs(images).logits
        torch.testing.assert_close(ours(images).logits, expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(converted(images).logits, expected, atol=1e-5, rtol=1e-4)


def test_a_transformers_swinv2_folder_transformers_cannot_run_is_still_refused(tmp_path):
    import transformers

    fields = dict(embed_dim=12, depths=[1, 1, 1], num_heads=[3, 6], window_size=2, image_size=16)
    (tmp_path / "hf").mkdir()
    transformers.Swinv2Config(**fields).to_json_file(tmp_path / "hf" / "config.json")
    with pytest.raises(ValueError, match="num_heads: has 2 entries but depths has 3"):
        SwinForImageClassification.from_pretrained(tmp_path / "hf")
