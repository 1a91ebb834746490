"""Swin as a backbone of transformers' dense heads: UperNet and Mask2Former, on tiny CPU configs."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from transformers import (
    AutoBackbone,
    AutoModelForSemanticSegmentation,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

import swin_hf
from swin_hf import SwinBackbone, SwinConfig, SwinForImageClassification
from swin_hf.segmentation import find_swin_backbone, load_swin_encoder, upernet_from_encoder
from swin_reference import train_steps

TINY = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, patch_size=4)
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def backbone_config(**overrides) -> SwinConfig:
    return SwinConfig(**{**TINY, "out_features": STAGES, **overrides})


def tiny_upernet(num_labels: int = 3) -> UperNetForSemanticSegmentation:
    config = UperNetConfig(
        backbone_config=backbone_config(),
        num_labels=num_labels,
        hidden_size=32,
        auxiliary_in_channels=64,  # stage3 width = 16 * 4
        auxiliary_channels=16,
    )
    return UperNetForSemanticSegmentation(config)


def tiny_mask2former(num_labels: int = 3) -> Mask2FormerForUniversalSegmentation:
    config = Mask2FormerConfig(
        backbone_config=backbone_config(),
        num_labels=num_labels,
        hidden_dim=32,
        mask_feature_size=32,
        feature_size=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=1,
        decoder_layers=2,
        num_queries=8,
        num_attention_heads=2,
        train_num_points=64,
    )
    return Mask2FormerForUniversalSegmentation(config)


def encoder_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if k.startswith("swin.")}


# ------------------------------------------------------------------------------------------------
# Feature maps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(64, 64), (70, 90), (33, 47)])
def test_feature_maps_nchw_any_size(height, width):
    """Stride-4/8/16/32 NCHW maps for any input size; ceil division because inputs are padded."""
    backbone = SwinBackbone(backbone_config()).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(2, 3, height, width)).feature_maps
    expected = []
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    for i in range(4):
        expected.append((2, 16 * 2**i, h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    assert [tuple(m.shape) for m in maps] == expected
    assert backbone.channels == [16, 32, 64, 128]


def test_each_output_has_its_own_layernorm():
    """Each returned map is the stage's raw map (before patch merging) LayerNorm-ed over channels by its
    own norm; changing one norm moves one map only."""
    torch.manual_seed(0)
    backbone = SwinBackbone(backbone_config(out_features=["stage2", "stage4"])).eval()
    assert sorted(backbone.hidden_states_norms) == ["stage2", "stage4"]
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        out = backbone(x, output_hidden_states=True)
        maps, raw = out.feature_maps, out.hidden_states  # raw: stem, stage1..stage4, NCHW
        for m, r in zip(maps, (raw[2], raw[4])):
            expected = torch.nn.functional.layer_norm(r.permute(0, 2, 3, 1), r.shape[1:2], eps=1e-5)
            torch.testing.assert_close(m, expected.permute(0, 3, 1, 2))
            assert m.mean(dim=1).abs().max() < 1e-5  # normalised over channels, per pixel
        backbone.hidden_states_norms["stage4"].bias.fill_(3.0)
        shifted = backbone(x).feature_maps
    torch.testing.assert_close(shifted[0], maps[0])
    torch.testing.assert_close(shifted[1], maps[1] + 3.0)


def test_auto_backbone_builds_ours():
    backbone = AutoBackbone.from_config(backbone_config(out_features=["stage3"]))
    assert isinstance(backbone, SwinBackbone)
    assert backbone.channels == [64]


# ------------------------------------------------------------------------------------------------
# UperNet
# ------------------------------------------------------------------------------------------------


def test_upernet_forward_backward_non_multiple_of_32():
    torch.manual_seed(0)
    model = tiny_upernet()
    assert isinstance(model.backbone, SwinBackbone)
    pixels = torch.randn(2, 3, 70, 90)
    labels = torch.randint(0, 3, (2, 70, 90))
    out = model(pixels, labels=labels)
    assert out.logits.shape == (2, 3, 70, 90)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    # every trainable backbone parameter gets a gradient (DDP without find_unused_parameters needs that);
    # the encoder's final norm, which only the classification path uses, is frozen in the backbone
    no_grad = [n for n, p in model.backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert [n for n, p in model.backbone.named_parameters() if not p.requires_grad] == [
        "swin.norm.weight",
        "swin.norm.bias",
    ]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_upernet_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_upernet().eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone_config"]["model_type"] == "swin_hf"
    assert saved["backbone_config"]["out_features"] == STAGES

    for loader in (UperNetForSemanticSegmentation, AutoModelForSemanticSegmentation):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, UperNetForSemanticSegmentation)
        assert isinstance(loaded.backbone, SwinBackbone)
        pixels = torch.randn(1, 3, 70, 90)
        with torch.no_grad():
            for a, b in zip(loaded.backbone(pixels).feature_maps, model.backbone(pixels).feature_maps):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            # UperNet's convolutions may differ in the last bit: loaded weights are memory-mapped at
            # addresses with another alignment, so CPU kernels vectorise (and sum) differently
            torch.testing.assert_close(loaded(pixels).logits, model(pixels).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_upernet_few_steps_learn_and_miou():
    """A few optimisation steps on a fixed tiny batch drive the loss down and the mIoU up.

    Predictions use batch statistics (train mode): after a few steps UperNet's BatchNorm running averages
    still lag the weights, which is a property of BatchNorm, not of the backbone. 30 steps: with torch
    2.8's random initial weights the mIoU passed 0.75 only after 20 (0.74; 0.88 with torch 2.13).
    """
    torch.manual_seed(0)
    model = tiny_upernet(num_labels=2)
    pixels = torch.zeros(4, 3, 32, 32)
    labels = torch.zeros(4, 32, 32, dtype=torch.long)
    for i in range(4):  # a bright square on a dark background, label 1 inside the square
        y, x = 4 + 4 * i, 12 - 2 * i
        pixels[i, :, y : y + 12, x : x + 12] = 1.0
        labels[i, y : y + 12, x : x + 12] = 1
    pixels = pixels + 0.05 * torch.randn_like(pixels)

    def miou() -> float:
        with torch.no_grad():
            pred = model(pixels).logits.argmax(1)
        ious = []
        for c in range(2):
            inter = ((pred == c) & (labels == c)).sum().item()
            union = ((pred == c) | (labels == c)).sum().item()
            ious.append(inter / union)
        return sum(ious) / len(ious)

    before = miou()
    losses = train_steps(model, 30, 5e-3, pixel_values=pixels, labels=labels)
    after = miou()
    assert losses[-1] < 0.5 * losses[0], losses
    assert after > 0.75 and after > before + 0.2, (before, after)


# ------------------------------------------------------------------------------------------------
# Mask2Former
# ------------------------------------------------------------------------------------------------


def test_mask2former_forward_backward_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_mask2former()
    encoder = model.model.pixel_level_module.encoder
    assert isinstance(encoder, SwinBackbone) and find_swin_backbone(model) is encoder
    pixels = torch.randn(2, 3, 70, 90)
    mask_labels = [(torch.rand(2, 70, 90) > 0.5).float() for _ in range(2)]
    class_labels = [torch.tensor([0, 2]), torch.tensor([1, 2])]
    out = model(pixels, mask_labels=mask_labels, class_labels=class_labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
    assert out.masks_queries_logits.shape == (2, 8, 18, 23)  # stride-4 mask logits
    assert out.class_queries_logits.shape == (2, 8, 4)  # num_labels + "no object"

    model.eval().save_pretrained(tmp_path)
    loaded = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.model.pixel_level_module.encoder, SwinBackbone)
    with torch.no_grad():
        a, b = model(pixels), loaded(pixels)
    torch.testing.assert_close(b.encoder_last_hidden_state, a.encoder_last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(b.masks_queries_logits, a.masks_queries_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.class_queries_logits, a.class_queries_logits, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Classification checkpoint -> backbone
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("cls")
    model = SwinForImageClassification(SwinConfig(**TINY, num_labels=5))
    model.save_pretrained(path)
    return path, model


def test_classifier_encoder_loads_into_backbone(classifier_checkpoint):
    path, classifier = classifier_checkpoint
    backbone = SwinBackbone.from_pretrained(path, out_features=STAGES)
    assert backbone.out_features == STAGES
    expected = encoder_state(classifier)
    got = encoder_state(backbone)
    assert got.keys() == expected.keys() and len(got) > 10
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)


def test_load_swin_encoder_into_upernet_and_mask2former(classifier_checkpoint):
    path, classifier = classifier_checkpoint
    expected = encoder_state(classifier)
    for model in (tiny_upernet(), tiny_mask2former()):
        backbone = find_swin_backbone(model)
        assert any(not torch.equal(encoder_state(backbone)[k], expected[k]) for k in expected)  # random before
        load_swin_encoder(model, path)
        got = encoder_state(backbone)
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)


def test_upernet_from_encoder(classifier_checkpoint):
    path, classifier = classifier_checkpoint
    model = upernet_from_encoder(path, num_labels=4, hidden_size=32, auxiliary_channels=16,
                                 id2label={0: "a", 1: "b", 2: "c", 3: "d"})
    assert model.config.auxiliary_in_channels == 64
    assert model.config.id2label[3] == "d"
    got = encoder_state(model.backbone)
    for k, v in encoder_state(classifier).items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)
    assert model.eval()(torch.randn(1, 3, 40, 56)).logits.shape == (1, 4, 40, 56)
    # two stages only: no third map for the auxiliary head, so it is switched off
    small = upernet_from_encoder(path, num_labels=2, out_features=["stage1", "stage2"], hidden_size=32)
    assert small.auxiliary_head is None and small.backbone.channels == [16, 32]


def test_load_swin_encoder_rejects_other_architecture(classifier_checkpoint):
    path, _ = classifier_checkpoint
    other = UperNetForSemanticSegmentation(
        UperNetConfig(backbone_config=backbone_config(embed_dim=32, num_heads=[1, 2, 2, 4]), num_labels=2,
                      hidden_size=32, auxiliary_in_channels=128)
    )
    with pytest.raises(ValueError, match="different architecture"):
        load_swin_encoder(other, path)


def test_find_swin_backbone_explains_missing_backbone():
    with pytest.raises(ValueError, match="found 0"):
        find_swin_backbone(torch.nn.Linear(2, 2))


def test_package_exports_segmentation_helpers():
    assert swin_hf.load_swin_encoder is load_swin_encoder
    assert swin_hf.upernet_from_encoder is upernet_from_encoder


@pytest.mark.parametrize("name", ["swin_hf.segmentation", "swin_hf.segmentation.data", "swin_hf.segmentation.evaluate"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------------
# Segmentation data, metric, overlays and the pipeline-ready folder
# ------------------------------------------------------------------------------------------------

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from swin_hf.segmentation.data import (  # noqa: E402
    IGNORE_INDEX,
    TEXTURE_CLASSES,
    JointTransform,
    SegmentationDataset,
    collate,
    texture_collage_dataset,
)
from swin_hf.segmentation.evaluate import (  # noqa: E402
    evaluate_segmentation, load_mean_iou, overlay_examples, predict, save_overlays,
)
from swin_hf.segmentation.train import save_for_pipeline, segmentation_loss  # noqa: E402


@pytest.fixture(scope="module")
def collage():
    return texture_collage_dataset(num_train=12, num_validation=4, size=32, seed=0)


def test_texture_collage_dataset_is_deterministic_and_labelled(collage):
    splits, id2label = collage
    assert id2label == dict(enumerate(TEXTURE_CLASSES))
    assert splits["train"].column_names == ["image", "annotation"]
    again, _ = texture_collage_dataset(num_train=12, num_validation=4, size=32, seed=0)
    row, row2 = splits["train"][3], again["train"][3]
    assert np.array_equal(np.asarray(row["image"]), np.asarray(row2["image"]))
    seen = set()
    for row in splits["train"]:
        image, annotation = row["image"], np.asarray(row["annotation"])
        assert image.size == (32, 32) and annotation.shape == (32, 32)
        seen |= set(np.unique(annotation).tolist())
    assert seen == {0, 1, 2}


def test_joint_transform_keeps_image_and_labels_aligned():
    """A black/white image whose labels say which pixels are white: after random rescale, crop, flip
    and jitter, the labels still mark the bright pixels (only resampled borders may disagree)."""
    labels = np.zeros((48, 64), dtype=np.uint8)
    labels[8:30, 10:40] = 1
    labels[35:, 45:] = 1
    image = Image.fromarray(np.repeat(labels[..., None] * 255, 3, axis=2))
    transform = JointTransform(32, train=True, seed=0)
    for _ in range(10):
        pixels, out = transform(image, Image.fromarray(labels))
        bright = (pixels * transform.std + transform.mean).mean(0) > 0.5
        valid = out != IGNORE_INDEX
        disagree = (bright != (out == 1)) & valid
        assert disagree.float().sum() <= 0.05 * valid.sum(), disagree.float().mean()
    evaluation = JointTransform(16, train=False)
    pixels, out = evaluation(image, Image.fromarray(labels))
    assert pixels.shape == (3, 16, 16) and set(out.unique().tolist()) == {0, 1}
    with pytest.raises(ValueError, match="same size"):
        evaluation(image, Image.fromarray(labels[:40]))


def test_reduce_labels_maps_zero_to_ignore():
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    _, out = JointTransform(2, train=False, reduce_labels=True)(Image.new("RGB", (2, 2)), Image.fromarray(labels))
    assert out.tolist() == [[IGNORE_INDEX, 0], [1, 2]]


def test_mean_iou_metric_numbers():
    metric = load_mean_iou()
    prediction = np.array([[0, 0, 1], [1, 1, 2]])
    reference = np.array([[0, 1, 1], [1, 255, 0]])
    result = metric.compute(predictions=[prediction], references=[reference], num_labels=3)
    # class 0: tp 1, fp 1 (pred 0 ref 1), fn 1 (ref 0 pred 2) -> 1/3; class 1: tp 2, fp 0, fn 1 -> 2/3; class 2: 0/1
    assert result["per_category_iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert result["mean_iou"] == pytest.approx(1 / 3)
    assert result["overall_accuracy"] == pytest.approx(3 / 5)  # the ignored pixel is not counted
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metric.compute(predictions=[prediction], references=[reference + 5 * (reference == 0)], num_labels=3)


def test_segmentation_evaluation_counts_each_indexed_image_once(collage):
    """A distributed sampler pads the validation split with repeats; batches with "index" count each image once."""
    torch.manual_seed(0)
    splits, id2label = collage
    model = upernet_from_encoder(SwinConfig(**TINY), num_labels=3, hidden_size=32, auxiliary_channels=16,
                                 id2label=id2label).eval()
    validation = SegmentationDataset(splits["validation"], JointTransform(32, train=False), with_index=True)
    assert validation[2]["index"].item() == 2
    once = torch.utils.data.DataLoader(validation, batch_size=3, collate_fn=collate)
    repeated = torch.utils.data.DataLoader(validation, batch_size=3, collate_fn=collate, sampler=[0, 1, 2, 3, 0, 1])
    unindexed = [{k: v for k, v in batch.items() if k != "index"} for batch in repeated]
    expected = evaluate_segmentation(model, once, num_labels=3)
    assert evaluate_segmentation(model, repeated, num_labels=3) == expected
    assert evaluate_segmentation(model, unindexed, num_labels=3) != expected  # (the repeats counted: a different result)


def test_segmentation_steps_with_evaluate_miou(collage, tmp_path):
    """A few UperNet steps on the built-in set through the data pipeline; the evaluate-module mIoU equals
    one computed by hand from the same predictions; overlays and a pipeline-ready folder are written."""
    torch.manual_seed(0)
    splits, id2label = collage
    model = upernet_from_encoder(SwinConfig(**TINY), num_labels=3, hidden_size=32, auxiliary_channels=16,
                                 id2label=id2label)
    train = torch.utils.data.DataLoader(
        SegmentationDataset(splits["train"], JointTransform(32, train=True, seed=0)), batch_size=4, collate_fn=collate
    )
    evaluation = JointTransform(32, train=False)
    val = torch.utils.data.DataLoader(SegmentationDataset(splits["validation"], evaluation), batch_size=4,
                                      collate_fn=collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for batch in train:  # 3 steps
        loss = segmentation_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)

    result = evaluate_segmentation(model, val, num_labels=3)
    model.eval()
    batch = next(iter(val))
    prediction, labels = predict(model, batch["pixel_values"]), batch["labels"]
    ious = []
    for c in range(3):
        inter = ((prediction == c) & (labels == c)).sum().item()
        union = ((prediction == c) | (labels == c)).sum().item()
        if union:
            ious.append(inter / union)
    assert result["mean_iou"] == pytest.approx(sum(ious) / len(ious))
    assert result["overall_accuracy"] == pytest.approx((prediction == labels).float().mean().item())

    examples = overlay_examples(model, splits["validation"], evaluation, count=2)
    assert len(examples) == 2
    np.testing.assert_array_equal(examples[0][2], prediction[0].numpy())  # the same model's answer
    paths = save_overlays(examples, str(tmp_path / "overlays"), list(id2label.values()))
    assert [os.path.basename(p) for p in paths] == ["validation_000.png", "validation_001.png"]
    width, height = Image.open(paths[0]).size
    assert height >= 256 and width >= 3 * 256  # three panels, upscaled to be read, with a legend below
    row = splits["validation"][0]

    from transformers import pipeline

    save_for_pipeline(model, evaluation, str(tmp_path / "model"))
    segmenter = pipeline("image-segmentation", model=str(tmp_path / "model"))
    segments = segmenter(row["image"])
    assert {s["label"] for s in segments} <= set(TEXTURE_CLASSES)
    label_map = np.full((32, 32), -1)
    for s in segments:
        label_map[np.asarray(s["mask"]) > 0] = TEXTURE_CLASSES.index(s["label"])
    assert (label_map == prediction[0].numpy()).mean() > 0.95  # same model, same preprocessing
