"""One conversion to RGB (image_processing_swin.to_rgb_array) for training, the image processor and
`swin-hf predict`: 16-bit, float, palette and transparent images give the same tensor on every path."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from swin_hf import SwinImageProcessor
from swin_hf.image_processing_swin import to_rgb_array
from swin_hf.training.data import decode_image

SIDE = 16


def _gradient16():
    return (np.arange(SIDE * SIDE, dtype=np.uint32).reshape(SIDE, SIDE) * 65535 // (SIDE * SIDE - 1)).astype(np.uint16)


def _files(folder):
    """A 16-bit PNG gradient, a float TIFF in [0, 1], an RGBA PNG half transparent, a palette PNG with a
    transparent colour."""
    files = {}
    files["gray16.png"] = Image.fromarray(_gradient16())
    files["float.tiff"] = Image.fromarray(np.linspace(0, 1, SIDE * SIDE, dtype=np.float32).reshape(SIDE, SIDE))
    rgba = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    rgba[: SIDE // 2, :, 3] = 0
    files["rgba.png"] = Image.fromarray(rgba, "RGBA")
    palette = Image.fromarray(np.arange(SIDE * SIDE, dtype=np.uint8).reshape(SIDE, SIDE) % 4, "L").convert("P")
    palette.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 0, 0, 0] + [0] * 756)
    palette.info["transparency"] = 3
    files["palette.png"] = palette
    paths = {}
    for name, image in files.items():
        paths[name] = folder / name
        image.save(paths[name], transparency=3) if name == "palette.png" else image.save(paths[name])
    return paths


@pytest.mark.parametrize("name", ["gray16.png", "float.tiff", "rgba.png", "palette.png"])
def test_the_same_file_gives_the_same_tensor_in_training_and_serving(tmp_path, name):
    path = _files(tmp_path)[name]
    processor = SwinImageProcessor.for_image_size(SIDE)
    with Image.open(path) as raw:
        assert raw.mode == {"gray16.png": "I;16", "float.tiff": "F", "rgba.png": "RGBA", "palette.png": "P"}[name]
        served = processor(raw, return_tensors="pt")["pixel_values"]
    trained = processor(decode_image({"path": str(path), "bytes": None}), return_tensors="pt")["pixel_values"]
    from_bytes = processor(decode_image({"path": None, "bytes": path.read_bytes()}), return_tensors="pt")["pixel_values"]
    assert torch.equal(trained, served) and torch.equal(from_bytes, served)
    assert served.unique().numel() > 2  # not one constant value


def test_16_bit_and_float_images_are_scaled_by_their_bit_depth_not_their_range(tmp_path):
    paths = _files(tmp_path)
    with Image.open(paths["gray16.png"]) as image:
        rgb = to_rgb_array(image)
    assert rgb.shape == (SIDE, SIDE, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.rint(_gradient16() / 257.0).astype(np.uint8))
    assert rgb.min() == 0 and rgb.max() == 255
    # a dim 16-bit image stays dim (no per-image stretching)
    assert to_rgb_array(Image.fromarray(np.full((4, 4), 257 * 10, np.uint16))).max() == 10
    with Image.open(paths["float.tiff"]) as image:
        rgb = to_rgb_array(image)
    assert rgb.max() == 255 and rgb.min() == 0
    assert to_rgb_array(np.full((8, 8, 3), 0.5, np.float32)).max() == 128  # round(127.5)
    np.testing.assert_array_equal(to_rgb_array(np.full((3, 4, 4), 65535, np.uint16)), np.full((4, 4, 3), 255))
    assert to_rgb_array(torch.ones(3, 4, 4)).min() == 255  # a float tensor in [0, 1], channels first


def test_transparency_is_composited_on_white_everywhere(tmp_path):
    paths = _files(tmp_path)
    processor = SwinImageProcessor.for_image_size(SIDE, crop_pct=1.0, do_normalize=False)
    for name in ("rgba.png", "palette.png"):
        with Image.open(paths[name]) as image:
            rgb = to_rgb_array(image)
            served = processor(image, return_tensors="np")["pixel_values"][0]
        transparent = (0, 0) if name == "rgba.png" else (0, 3)  # the palette's index 3 is transparent
        assert (rgb[transparent] == 255).all(), name  # -> white
        np.testing.assert_allclose(served, rgb.transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert (to_rgb_array(Image.new("LA", (2, 2), (0, 0))) == 255).all()
    half = np.zeros((8, 8, 4), np.uint8)
    half[..., 3] = 128
    assert (to_rgb_array(half) == 127).all()  # black at alpha 128 over white


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "YCbCr", "I", "I;16", "I;16B", "F", "LA", "PA", "RGBA", "RGB"])
def test_every_pil_mode_becomes_rgb_uint8(mode):
    rgb = to_rgb_array(Image.new(mode, (5, 4)))
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((4, 4, 3), 2.0, np.float32), r"floating point with values in \[2, 2\]; float images must lie in \[0, 1\]"),
        (np.full((4, 4, 3), -0.5), r"values in \[-0.5, -0.5\]"),
        (np.full((4, 4, 3), np.nan, np.float32), r"NaN or infinite values"),
        (torch.full((3, 4, 4), float("inf")), r"NaN or infinite values"),
        (np.full((4, 4, 3), 300, np.int64), r"int64 values in \[300, 300\], outside 0\.\.255"),
        (Image.fromarray(np.full((4, 4), -1, np.int32)), r"values outside 0\.\.65535"),
    ],
)
def test_images_without_a_meaning_as_pixels_are_refused_in_one_line(image, message):
    processor = SwinImageProcessor.for_image_size(SIDE)
    with pytest.raises(ValueError, match=message) as error:
        processor(image, return_tensors="pt")
    assert "\n" not in str(error.value)


def test_the_pipeline_and_predict_read_files_as_training_does(tmp_path, capsys):
    """swin-hf predict and SwinImageClassificationPipeline give the logits of the training transform's tensor
    (transformers' own pipeline converts with PIL first: 16-bit images clipped, see README)."""
    from transformers import pipeline

    from swin_hf import SwinConfig, SwinForImageClassification, SwinImageClassificationPipeline
    from swin_hf.predict import predict

    paths = _files(tmp_path)
    config = SwinConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2, image_size=SIDE, num_labels=3)
    model = SwinForImageClassification(config).eval()
    processor = SwinImageProcessor.for_image_size(SIDE)
    classify = pipeline("image-classification", model=model, image_processor=processor,
                        pipeline_class=SwinImageClassificationPipeline)
    for name in ("gray16.png", "rgba.png"):
        pixels = processor(decode_image({"path": str(paths[name]), "bytes": None}), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            expected = model(pixels).logits.softmax(-1)[0]
        for got in (classify(str(paths[name]), top_k=3), classify(Image.open(paths[name]), top_k=3)):
            scores = {row["label"]: row["score"] for row in got}
            np.testing.assert_allclose([scores[model.config.id2label[i]] for i in range(3)], expected, atol=1e-5)
        rows, skipped = predict(model, processor, [paths[name]], top_k=3, progress=False)
        scores = {row["label"]: row["score"] for row in rows[0]["predictions"]}
        np.testing.assert_allclose([scores[model.config.id2label[i]] for i in range(3)], expected, atol=1e-5)


def test_a_truncated_file_is_named_in_one_line(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    processor = SwinImageProcessor.for_image_size(SIDE)
    with pytest.raises(OSError, match=r"cut\.jpg cannot be decoded \(.*truncated.*\); the file is truncated or corrupt") as error:
        with Image.open(path) as image:
            processor(image)
    assert "\n" not in str(error.value)
    # the pipeline reading swin_hf's way names it too; swin-hf predict skips it and names it
    from transformers import pipeline

    from swin_hf import SwinConfig, SwinForImageClassification, SwinImageClassificationPipeline
    from swin_hf.predict import predict

    config = SwinConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2, image_size=SIDE, num_labels=2)
    model = SwinForImageClassification(config).eval()
    classify = pipeline("image-classification", model=model, image_processor=processor,
                        pipeline_class=SwinImageClassificationPipeline)
    with pytest.raises(OSError, match=r"cut\.jpg cannot be decoded"):
        classify(str(path))
    assert predict(model, processor, [path], top_k=1, progress=False) == ([], [str(path)])


def test_a_saved_processor_converts_the_same_way_and_without_conversion_still_refuses_nan(tmp_path):
    processor = SwinImageProcessor.for_image_size(SIDE)
    processor.save_pretrained(tmp_path)
    loaded = SwinImageProcessor.from_pretrained(tmp_path)
    image = Image.fromarray(_gradient16())
    torch.testing.assert_close(loaded(image, return_tensors="pt")["pixel_values"],
                               processor(image, return_tensors="pt")["pixel_values"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="NaN or infinite values"):
        processor(np.full((SIDE, SIDE, 3), np.nan, np.float32), do_convert_rgb=False, do_rescale=False)
