"""Video Swin: the 3D geometry, the model's Hugging Face API, the presets' sizes, inflation from image weights and
conversion from torchvision's layouts (pinned from torchvision's module names; torchvision is never imported)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForVideoClassification, pipeline

from swin_hf import (
    SwinConfig, SwinForImageClassification, SwinForMaskedImageModeling, SwinModel, VideoSwinClassificationPipeline, VideoSwinConfig,
    VideoSwinForVideoClassification, VideoSwinImageProcessor, VideoSwinModel,
)  # fmt: skip
from swin_hf.cli import main as cli_main
from swin_hf.convert import ConversionError
from swin_hf.convert_torchvision import from_torchvision, to_torchvision, torchvision_kind
from swin_hf.image_processing_video_swin import sample_frame_indices
from swin_hf.modeling_swin import relative_position_index
from swin_hf.modeling_video_swin import shifted_window_mask_3d, video_window_geometry

TINY = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[2, 4, 4], num_labels=3, drop_path_rate=0.0)


def tiny(**changes) -> VideoSwinForVideoClassification:
    torch.manual_seed(0)
    return VideoSwinForVideoClassification(VideoSwinConfig(**{**TINY, **changes})).eval()


def video(batch=1, frames=8, size=(32, 32), seed=1) -> torch.Tensor:
    return torch.randn(batch, frames, 3, *size, generator=torch.Generator().manual_seed(seed))


# ---- geometry ---------------------------------------------------------------------------------------


def test_3d_relative_position_index_is_the_row_major_offset_of_every_pair():
    window, table = (2, 3, 3), (3, 4, 4)
    index = relative_position_index(window, table, torch.device("cpu"))
    coords = [(t, h, w) for t in range(2) for h in range(3) for w in range(3)]
    for i, a in enumerate(coords):
        for j, b in enumerate(coords):
            dt, dh, dw = (x - y + m - 1 for x, y, m in zip(a, b, table))
            assert index[i, j] == (dt * 7 + dh) * 7 + dw
    assert relative_position_index(4, 4, torch.device("cpu")).max() == 7 * 7 - 1  # 2D unchanged


def test_3d_mask_separates_exactly_the_regions_the_cyclic_shift_joins():
    size, window, shift = (4, 8, 8), (2, 4, 4), (1, 2, 0)  # the last axis unshifted: one region
    mask = shifted_window_mask_3d(size, window, shift, torch.device("cpu"))
    label = torch.zeros(size, dtype=torch.long)  # the official construction: slices per region
    count = 0
    for ts in ((0, -2), (-2, -1), (-1, None)):
        for hs in ((0, -4), (-4, -2), (-2, None)):
            label[slice(*ts), slice(*hs), :] = count
            count += 1
    windows = label.view(2, 2, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(8, 32)
    expected = (windows[:, None, :] != windows[:, :, None]).float() * -100.0
    assert torch.equal(mask, expected)


def test_windows_shrink_per_axis_for_small_maps():
    assert video_window_geometry((4, 14, 14), (8, 7, 7)) == ((4, 7, 7), (0, 3, 3))
    assert video_window_geometry((16, 5, 9), (8, 7, 7)) == ((8, 5, 7), (4, 0, 3))
    assert video_window_geometry((2, 3, 3), (8, 7, 7)) == ((2, 3, 3), 0)


# ---- the model ----------------------------------------------------------------------------------------


def test_any_frame_count_and_size_and_outputs():
    model = tiny()
    with torch.no_grad():
        out = model(video(2), output_hidden_states=True, output_attentions=True)
        assert out.logits.shape == (2, 3)
        assert [tuple(h.shape) for h in out.reshaped_hidden_states] == [(2, 16, 4, 8, 8), (2, 32, 4, 4, 4), (2, 32, 4, 4, 4)]
        assert [tuple(h.shape) for h in out.hidden_states] == [(2, 256, 16), (2, 64, 32), (2, 64, 32)]
        assert [tuple(a.shape) for a in out.attentions] == [(2 * 2 * 4, 1, 32, 32), (2 * 2, 2, 32, 32)]
        for shape in [(1, 5, 3, 30, 44), (1, 2, 3, 4, 4), (2, 13, 3, 40, 24)]:
            logits = model(torch.randn(shape)).logits
            assert logits.shape == (shape[0], 3) and torch.isfinite(logits).all()
        as_tuple = model(video(), return_dict=False)
        assert torch.equal(as_tuple[0], model(video()).logits)


def test_small_inputs_shrink_windows_without_changing_the_model():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = [(s.window_size, [b.attn.window_size for b in s.blocks]) for s in model.swin.stages]
    with torch.no_grad():
        expected = model(video()).logits
        model(torch.randn(1, 2, 3, 4, 4))  # every window shrunk
        again = model(video()).logits
    assert torch.equal(expected, again)
    assert windows == [(s.window_size, [b.attn.window_size for b in s.blocks]) for s in model.swin.stages]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_batch_elements_are_independent_and_padding_is_per_call():
    model = tiny()
    x = torch.randn(3, 7, 3, 36, 28)
    with torch.no_grad():
        together = model(x).logits
        alone = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_agree():
    model = tiny()
    x = video(2, frames=9, size=(36, 28))
    results = {}
    for implementation in ("eager", "sdpa"):
        model.config._attn_implementation = implementation
        with torch.no_grad():
            results[implementation] = model(x).logits
    torch.testing.assert_close(results["eager"], results["sdpa"], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        loss = model(video(2), labels=torch.tensor([0, 2])).loss
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "shape, words",
    [
        ((1, 3, 32, 32), "4-D"),
        ((1, 8, 32, 32, 3), "channels-last"),
        ((1, 3, 8, 32, 32), "transpose(1, 2)"),
        ((1, 1, 3, 32, 32), "at least 2 frames"),
    ],
)
def test_bad_input_names_the_expected_shape(shape, words):
    with pytest.raises(ValueError, match=r"\(batch, frames, 3, height, width\)") as error:
        tiny()(torch.randn(shape))
    assert words in str(error.value)


def test_bad_config_is_refused_in_one_line():
    with pytest.raises(ValueError, match="window_size"):
        VideoSwinConfig(window_size=[8, 7])
    with pytest.raises(ValueError, match="num_heads"):
        VideoSwinConfig(embed_dim=10, depths=[1], num_heads=[3])


# ---- presets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count", [("video-swin-tiny", 28_158_070), ("video-swin-small", 49_816_678), ("video-swin-base", 88_048_984)]
)
def test_presets_have_torchvisions_parameter_counts(name, count):
    with torch.device("meta"):
        model = VideoSwinForVideoClassification(VideoSwinConfig.from_preset(name, num_labels=400))
    assert sum(p.numel() for p in model.parameters()) == count


def test_the_ssv2_window_is_an_option():
    config = VideoSwinConfig.from_preset("video-swin-tiny", window_size=[16, 7, 7])
    with torch.device("meta"):
        model = VideoSwinModel(config)
    assert model.stages[0].blocks[0].attn.relative_position_bias_table.shape == (31 * 13 * 13, 3)
    with pytest.raises(ValueError, match="video-swin-tiny"):
        VideoSwinConfig.from_preset("video-swin-tin")


# ---- Hugging Face API ----------------------------------------------------------------------------------


def test_auto_classes_and_save_load(tmp_path):
    model = tiny()
    assert type(AutoModelForVideoClassification.from_config(model.config)) is VideoSwinForVideoClassification
    assert type(AutoModel.from_config(model.config)) is VideoSwinModel
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "video_swin_hf"
    for reference in config["auto_map"].values():
        assert (tmp_path / (reference.split(".")[0] + ".py")).exists(), reference
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VideoSwinConfig)
    loaded = AutoModelForVideoClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video()).logits, model(video()).logits, atol=0, rtol=0)


def test_trust_remote_code_loads_without_swin_hf(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "ckpt")
    VideoSwinImageProcessor.for_image_size(32).save_pretrained(tmp_path / "ckpt")
    x = video()
    with torch.no_grad():
        expected = model(x).logits
    torch.save(x, tmp_path / "x.pt")
    script = f"""
import os, sys
sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "swin_hf"))]
import importlib.util, torch
assert importlib.util.find_spec("swin_hf") is None
from transformers import AutoModelForVideoClassification
model = AutoModelForVideoClassification.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
assert "swin_hf" not in type(model).__module__, type(model).__module__
from transformers import AutoImageProcessor
processor = AutoImageProcessor.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
assert type(processor).__name__ == "VideoSwinImageProcessor" and "swin_hf" not in type(processor).__module__
with torch.no_grad():
    torch.save(model(torch.load({str(tmp_path / "x.pt")!r})).logits, {str(tmp_path / "out.pt")!r})
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=0, rtol=0)


# ---- inflation -------------------------------------------------------------------------------------------


def image_model(**changes) -> SwinForImageClassification:
    torch.manual_seed(2)
    config = SwinConfig(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, image_size=32, num_labels=3, drop_path_rate=0.0, **changes)
    model = SwinForImageClassification(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so that every copied tensor matters
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(-0.3, 0.3)
    return model


@pytest.mark.parametrize("frames, size", [(8, 32), (4, 64), (16, 48)])
def test_inflated_model_sees_a_still_video_as_its_frame(frames, size):
    """Frames T' = frames/2 a multiple of the time window (or not longer than it): no padding over time, so every
    window holds whole copies of the frame's tokens, and square maps shrink windows as the image model does."""
    image = image_model()
    inflated = VideoSwinForVideoClassification.from_image_model(image, num_frames=frames, temporal_window_size=2).eval()
    frame = torch.randn(2, 3, size, size)
    still = frame[:, None].expand(-1, frames, -1, -1, -1)
    with torch.no_grad():
        a, b = image.swin(frame).pooler_output, inflated.swin(still).pooler_output
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
        torch.testing.assert_close(inflated(still).logits, image(frame).logits, atol=1e-4, rtol=0)
    assert inflated.config.window_size == [2, 4, 4] and inflated.config.patch_size == [2, 4, 4]
    table = inflated.swin.stages[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (3 * 49, 1)


def test_inflation_from_a_saved_encoder_and_a_new_head(tmp_path):
    image = image_model()
    image.swin.save_pretrained(tmp_path / "encoder")
    inflated = VideoSwinForVideoClassification.from_image_model(str(tmp_path / "encoder"), num_frames=8, num_labels=5)
    assert inflated.classifier.out_features == 5
    torch.testing.assert_close(inflated.swin.norm.weight, image.swin.norm.weight)
    kernel = inflated.swin.embeddings.proj.weight
    torch.testing.assert_close(kernel.sum(2), image.swin.embeddings.proj.weight)
    simmim = SwinForMaskedImageModeling(SwinConfig(**{**image.config.to_diff_dict(), "encoder_stride": 8}))
    simmim.swin.load_state_dict(image.swin.state_dict(), strict=False)  # (its mask token stays its own)
    from_simmim = VideoSwinForVideoClassification.from_image_model(simmim, num_frames=8)
    torch.testing.assert_close(from_simmim.swin.embeddings.proj.weight, kernel)
    with pytest.raises(ValueError, match="V1"):
        VideoSwinForVideoClassification.from_image_model(SwinModel(SwinConfig(embed_dim=16, depths=[1], num_heads=[1], version=2)))


# ---- torchvision ----------------------------------------------------------------------------------------


def torchvision_keys(video: bool, embed=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=(8, 7, 7), classes=400, v2=False):
    """Key -> shape of torchvision's state dict, written from its module names: 2D `features.0` =
    (Conv2d, Permute, LayerNorm), stage s's blocks `features.{2s+1}`, PatchMerging `features.{2s+2}`; 3D
    `patch_embed.{proj,norm}`, blocks `features.{2s}`, merging `features.{2s+1}`; block = norm1, attn (qkv, proj,
    relative_position_bias_table + relative_position_index buffer; V2: logit_scale, cpb_mlp.{0,2},
    relative_coords_table), norm2, mlp.{0,3}; then norm, head."""
    keys = {}
    if video:
        keys.update({"patch_embed.proj.weight": (embed, 3, 2, 4, 4), "patch_embed.proj.bias": (embed,)})
        keys.update({"patch_embed.norm.weight": (embed,), "patch_embed.norm.bias": (embed,)})
    else:
        keys.update({"features.0.0.weight": (embed, 3, 4, 4), "features.0.0.bias": (embed,)})
        keys.update({"features.0.2.weight": (embed,), "features.0.2.bias": (embed,)})
    first = 0 if video else 1
    N = math.prod(window)
    for s, (depth, h) in enumerate(zip(depths, heads)):
        C = embed * 2**s
        for b in range(depth):
            p = f"features.{2 * s + first}.{b}."
            keys.update({p + "norm1.weight": (C,), p + "norm1.bias": (C,), p + "norm2.weight": (C,), p + "norm2.bias": (C,)})
            keys.update({p + "attn.qkv.weight": (3 * C, C), p + "attn.qkv.bias": (3 * C,)})
            keys.update({p + "attn.proj.weight": (C, C), p + "attn.proj.bias": (C,)})
            keys.update({p + "mlp.0.weight": (4 * C, C), p + "mlp.0.bias": (4 * C,), p + "mlp.3.weight": (C, 4 * C), p + "mlp.3.bias": (C,)})
            if v2:
                M = window[0]
                keys.update({p + "attn.logit_scale": (h, 1, 1), p + "attn.relative_coords_table": (1, 2 * M - 1, 2 * M - 1, 2)})
                keys.update({p + "attn.cpb_mlp.0.weight": (512, 2), p + "attn.cpb_mlp.0.bias": (512,), p + "attn.cpb_mlp.2.weight": (h, 512)})
            else:
                keys[p + "attn.relative_position_bias_table"] = (math.prod(2 * w - 1 for w in window), h)
            keys[p + "attn.relative_position_index"] = (N, N) if video else (N * N,)
        if s < len(depths) - 1:
            p = f"features.{2 * s + first + 1}."
            keys.update({p + "reduction.weight": (2 * C, 4 * C), p + "norm.weight": (2 * C if v2 else 4 * C,), p + "norm.bias": (2 * C if v2 else 4 * C,)})
    C = embed * 2 ** (len(depths) - 1)
    keys.update({"norm.weight": (C,), "norm.bias": (C,), "head.weight": (classes, C), "head.bias": (classes,)})
    return keys


def meta_state(keys):
    return {k: torch.empty(shape, device="meta") for k, shape in keys.items()}


@pytest.mark.parametrize(
    "kind, keys, params",
    [
        ("swin3d_t", torchvision_keys(True), 28_158_070),
        ("swin_t", torchvision_keys(False, window=(7, 7), classes=1000), 28_288_354),
        ("swin_v2_t", torchvision_keys(False, window=(8, 8), classes=1000, v2=True), 28_351_570),
    ],
)
def test_torchvision_layouts_convert_strictly_both_ways(kind, keys, params):
    """A real torchvision checkpoint of these models has exactly these keys; they fill our model, and our
    model's weights export to exactly them."""
    assert len(keys) == {"swin3d_t": 185, "swin_t": 185, "swin_v2_t": 233}[kind]
    buffers = sum(math.prod(s) for k, s in keys.items() if k.endswith(("relative_position_index", "relative_coords_table")))
    assert sum(math.prod(s) for s in keys.values()) - buffers == params
    config, ours = from_torchvision(meta_state(keys))
    assert torchvision_kind(keys) == ("video" if kind == "swin3d_t" else "image")
    assert config.num_labels == (400 if kind == "swin3d_t" else 1000) and config.depths == [2, 2, 6, 2]
    assert list(config.window_size) == [8, 7, 7] if kind == "swin3d_t" else config.window_size == (8 if "v2" in kind else 7)
    back = to_torchvision(ours, config)
    assert {k: tuple(v.shape) for k, v in back.items()} == keys


def test_torchvision_values_round_trip_and_refuse_foreign_keys():
    model = tiny()
    state = to_torchvision(model.state_dict(), model.config)
    index = state["features.0.0.attn.relative_position_index"]
    assert index.shape == (32, 32) and index.max() == 3 * 7 * 7 - 1
    config, back = from_torchvision(state)
    assert config.window_size == [2, 4, 4] and config.patch_size == [2, 4, 4]
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items()) and set(back) == set(model.state_dict())
    with pytest.raises(ConversionError, match="features.0.0.attn.extra"):
        from_torchvision({**state, "features.0.0.attn.extra": torch.zeros(1)})
    with pytest.raises(ConversionError, match="missing: swin.stages.0.blocks.1.norm1"):
        from_torchvision({k: v for k, v in state.items() if k != "features.0.1.norm1.weight"})
    torch.manual_seed(0)
    image = SwinForImageClassification(SwinConfig(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, num_labels=3, version=2))
    config2, back2 = from_torchvision(to_torchvision(image.state_dict(), image.config))
    assert config2.version == 2 and config2.window_size == 4
    assert all(torch.equal(back2[k], v) for k, v in image.state_dict().items())


def test_cli_converts_a_torchvision_file(tmp_path, capsys):
    model = tiny()
    torch.save(to_torchvision(model.state_dict(), model.config), tmp_path / "swin3d.pth")
    assert cli_main(["convert", "--from", "torchvision", str(tmp_path / "swin3d.pth"), str(tmp_path / "out")]) == 0
    assert "VideoSwinForVideoClassification" in capsys.readouterr().out
    loaded = AutoModelForVideoClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video()).logits, model(video()).logits, atol=0, rtol=0)
    image = image_model()
    torch.save(to_torchvision(image.state_dict(), image.config), tmp_path / "swin_t.pth")
    assert cli_main(["convert", "--from", "torchvision", str(tmp_path / "swin_t.pth"), str(tmp_path / "image")]) == 0
    assert (tmp_path / "image" / "preprocessor_config.json").exists()
    loaded_image = SwinForImageClassification.from_pretrained(tmp_path / "image").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded_image(x).logits, image(x).logits, atol=0, rtol=0)
    torch.save({"features.9.weird": torch.zeros(1)}, tmp_path / "bad.pth")
    assert cli_main(["convert", "--from", "torchvision", str(tmp_path / "bad.pth"), str(tmp_path / "out2")]) == 1
    assert "not a torchvision Swin state dict" in capsys.readouterr().err


# ---- video processor and pipeline ------------------------------------------------------------------------


def test_frame_sampling_centres_a_clip_or_spreads_over_a_short_video():
    assert sample_frame_indices(100, 4, 2).tolist() == [46, 48, 50, 52]
    assert sample_frame_indices(8, 8).tolist() == list(range(8))
    assert sample_frame_indices(3, 5).tolist() == [0, 0, 1, 2, 2]
    with pytest.raises(ValueError, match="0 frames"):
        sample_frame_indices(0, 4)


def test_video_processor_gives_the_models_layout():
    processor = VideoSwinImageProcessor.for_image_size(32)
    frames = [Image.new("RGB", (48, 40), (i * 20, 0, 0)) for i in range(10)]
    pixels = processor(frames, num_frames=4, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 4, 3, 32, 32)
    one = processor([frames[3]], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels[0, 0], one[0, 0])  # frame 3 is the first of the centred clip (3, 4, 5, 6)
    batch = processor([frames, frames[:6]], num_frames=4, return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 4, 3, 32, 32)
    array = np.stack([np.asarray(f) for f in frames])  # (T, H, W, C)
    torch.testing.assert_close(processor(array, num_frames=4, return_tensors="pt")["pixel_values"], pixels)
    with pytest.raises(ValueError, match="num_frames"):
        processor([frames, frames[:6]])


def test_pipeline_classifies_a_list_of_frames(tmp_path):
    model = tiny(num_frames=8, image_size=32, id2label={0: "left", 1: "right", 2: "still"}, label2id={"left": 0, "right": 1, "still": 2})
    model.save_pretrained(tmp_path)
    VideoSwinImageProcessor.for_image_size(32).save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is VideoSwinImageProcessor
    classifier = pipeline("video-classification", model=str(tmp_path), pipeline_class=VideoSwinClassificationPipeline)
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(20)]
    result = classifier(frames, top_k=3)
    pixels = VideoSwinImageProcessor.for_image_size(32)(frames, num_frames=8, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = model(pixels).logits.softmax(-1)[0]
    assert [r["label"] for r in result] == [model.config.id2label[i] for i in probs.argsort(descending=True).tolist()]
    assert result[0]["score"] == pytest.approx(probs.max().item(), abs=1e-5)
    assert classifier(np.stack([np.asarray(f) for f in frames]), top_k=1) == result[:1]
    assert len(classifier([frames, frames[:5]], top_k=1)) == 2


def test_swins_speed_paths_keep_the_video_models_numbers():
    """The speed paths the video model inherits from Swin's modules (oneDNN products, MLP token tiles, skipped
    dropped branches) give the plain model's logits and gradients."""
    from swin_hf import FastPaths, fast_paths

    onednn = fast_paths._TOKEN_LINEAR is not None  # x86 CPUs with oneDNN
    results = []
    for paths in (FastPaths.plain(), FastPaths(onednn_products=onednn, onednn_min_macs=0, mlp_tile_tokens=100, skip_dropped_branches=True)):
        model = tiny(drop_path_rate=0.5).train()
        model.set_fast_paths(paths)
        torch.manual_seed(5)
        loss = model(video(4), labels=torch.tensor([0, 1, 2, 0])).loss
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-5, rtol=1e-4)
