"""Swin as the backbone of transformers' DETR-family detectors, and the detection data, metric and pictures
(tiny CPU configs, no network)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForObjectDetection

import swin_hf
from swin_hf import SwinBackbone, SwinConfig, SwinForImageClassification
from swin_hf.detection import (
    HEADS,
    detector_config,
    detector_from_encoder,
    find_swin_backbone,
    head_of,
    head_settings,
    image_processor_for,
    size_multiple,
)
from swin_hf.detection.data import (
    BUILTIN_CLASSES,
    BoxAugment,
    DetectionDataset,
    clean_boxes,
    coco_folder_dataset,
    collate,
    detection_features,
    pasted_objects_dataset,
    pasted_objects_scene,
    prepare_detection,
    to_detr_labels,
)
from swin_hf.detection.evaluate import evaluate_detection, mean_average_precision, normalise, predict, save_picture
from swin_hf.training.data import DataError

TINY = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, patch_size=4)


def tiny_detector(head: str, num_labels: int = 3, id2label=None, source=None):
    settings = head_settings(head, hidden_size=32, num_queries=10, encoder_layers=1, decoder_layers=2, ffn_ratio=2, head_dim=16)
    return detector_from_encoder(source or SwinConfig(**TINY), head, id2label=id2label,
                                 num_labels=None if id2label else num_labels, **settings)


def random_targets(batch: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batch):
        n = 1 + i % 2
        centre, size = torch.rand(n, 2, generator=g) * 0.5 + 0.25, torch.rand(n, 2, generator=g) * 0.3 + 0.1
        out.append({"class_labels": torch.randint(0, 3, (n,), generator=g), "boxes": torch.cat([centre, size], 1)})
    return out


def sample_photo() -> Image.Image:
    from sklearn.datasets import load_sample_images

    return Image.fromarray(load_sample_images().images[0])  # china.jpg, 640 x 427


# ------------------------------------------------------------------------------------------------
# The heads
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_forward_loss_backward_at_non_square_sizes(head):
    """Each head builds on our backbone (found by type, with the channels it reads), gives a finite loss
    with `labels` at a non-square size that is no multiple of 32, and every trainable backbone parameter
    gets a gradient (DDP needs that)."""
    torch.manual_seed(0)
    model = tiny_detector(head)
    backbone = find_swin_backbone(model)
    assert isinstance(backbone, SwinBackbone) and head_of(model.config) == head
    assert backbone.out_features == (["stage2", "stage3", "stage4"] if HEADS[head].multi_scale else ["stage4"])
    # RT-DETR's feature pyramid joins maps of doubled size: its sides are multiples of 32 (size_multiple)
    height, width = (64, 96) if size_multiple(model.config) == 32 else (72, 104)
    out = model(pixel_values=torch.randn(2, 3, height, width), labels=random_targets(2))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    classes = out.logits.shape[-1]
    assert classes == (4 if head == "detr" else 3)  # DETR scores "no object" as one more class
    assert out.pred_boxes.shape[-1] == 4 and ((out.pred_boxes >= 0) & (out.pred_boxes <= 1)).all()
    out.loss.backward()
    missing = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert backbone.swin.embeddings.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_round_trips_through_save_pretrained(head, tmp_path):
    torch.manual_seed(0)
    model = tiny_detector(head, id2label={0: "cat", 1: "dog", 2: "bird"}).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["backbone_config"]["model_type"] == "swin_hf"
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and isinstance(find_swin_backbone(loaded), SwinBackbone)
    assert loaded.config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model(pixel_values=pixels), loaded(pixel_values=pixels)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.pred_boxes, a.pred_boxes, rtol=1e-5, atol=1e-5)


def test_detector_config_wires_channels_and_strides():
    swin_t = SwinConfig.from_preset("swin-tiny-patch4-window7-224")
    before = list(swin_t.out_features)
    rt = detector_config(swin_t, "rt_detr", num_labels=80, encoder_hidden_dim=256)
    assert rt.backbone_config.out_features == ["stage2", "stage3", "stage4"]
    assert rt.encoder_in_channels == [192, 384, 768] and rt.feat_strides == [8, 16, 32]
    assert rt.num_feature_levels == 3 and rt.decoder_in_channels == [256] * 3 and rt.encode_proj_layers == [2]
    v2 = detector_config(swin_t, "rt_detr_v2", num_labels=80, out_features=["stage3", "stage4"], d_model=128)
    assert v2.encoder_in_channels == [384, 768] and v2.feat_strides == [16, 32] and v2.decoder_n_levels == 2
    assert v2.encoder_hidden_dim == 128 and v2.encode_proj_layers == [1]
    deformable = detector_config(swin_t, "deformable_detr", num_labels=80)
    assert deformable.num_feature_levels == 3 and deformable.disable_custom_kernels
    assert detector_config(swin_t, "detr", num_labels=80).backbone_config.out_features == ["stage4"]
    assert swin_t.out_features == before  # the caller's config is left as it was
    with pytest.raises(ValueError, match="reads one feature map"):
        detector_config(swin_t, "conditional_detr", out_features=["stage3", "stage4"])
    with pytest.raises(ValueError, match="Unknown detection head"):
        detector_config(swin_t, "yolo")
    with pytest.raises(ValueError, match="stage_names"):
        detector_config(swin_t, "rt_detr", out_features=["stage5"])
    with pytest.raises(ValueError, match="make them agree"):
        detector_config(swin_t, "rt_detr", id2label={0: "a"}, num_labels=2)


def test_detector_from_encoder_starts_from_a_classification_checkpoint(tmp_path):
    torch.manual_seed(1)
    classifier = SwinForImageClassification(SwinConfig(**TINY, num_labels=5))
    classifier.save_pretrained(tmp_path)
    model = tiny_detector("rt_detr", source=str(tmp_path))
    got = find_swin_backbone(model).swin.state_dict()
    for key, value in classifier.swin.state_dict().items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    assert swin_hf.detector_from_encoder is detector_from_encoder


def test_padded_batches_never_change_a_samples_detections():
    """Images of different sizes and shapes in one batch: the processor gives each the same fixed-size
    tensor it gets alone (no padding to the batch's largest image), and so the same detections; the
    recipe's collate does the same."""
    torch.manual_seed(0)
    model = tiny_detector("rt_detr").eval()
    processor = image_processor_for("rt_detr", 64)
    photo = sample_photo()
    small, large = photo.crop((0, 0, 200, 120)), photo.crop((100, 50, 640, 427))
    alone = processor(images=[small], return_tensors="pt")["pixel_values"]
    batch = processor(images=[small, large], return_tensors="pt")["pixel_values"]
    assert alone.shape == (1, 3, 64, 64) and batch.shape == (2, 3, 64, 64)
    torch.testing.assert_close(batch[:1], alone, rtol=0, atol=0)
    with torch.no_grad():
        one = predict(model, processor, alone, [small.size[::-1]])[0]
        both = predict(model, processor, batch, [small.size[::-1], large.size[::-1]])[0]
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(both[key], one[key], rtol=1e-4, atol=1e-3)
    assert (one["boxes"][:, 2] <= 200 + 1e-3).all() and (one["boxes"][:, 3] <= 120 + 1e-3).all()  # its own pixels

    import datasets

    split = datasets.Dataset.from_dict(
        {"image": [small, large], "objects": [{"bbox": [[10, 10, 50, 40]], "category": [0]}, {"bbox": [], "category": []}]},
        features=detection_features(["a"]),
    ).cast_column("image", datasets.Image(decode=False))
    items = DetectionDataset(split, 64)
    batch = collate([items[0], items[1]])
    torch.testing.assert_close(batch["pixel_values"][:1], collate([items[0]])["pixel_values"], rtol=0, atol=0)
    assert batch["sizes"].tolist() == [[120, 200], [377, 540]]


def test_pipeline_on_a_real_photo_returns_boxes_inside_with_known_labels(tmp_path):
    from transformers import pipeline

    from swin_hf.detection.train import save_for_pipeline

    torch.manual_seed(0)
    id2label = {0: "cat", 1: "dog", 2: "bird"}
    model = tiny_detector("rt_detr", id2label=id2label).eval()
    save_for_pipeline(model, image_processor_for("rt_detr", 64), str(tmp_path))
    photo = sample_photo()
    found = pipeline("object-detection", model=str(tmp_path))(photo, threshold=0.0)
    assert len(found) == 10  # every query of the untrained model, as threshold 0 asks
    for detection in found:
        box = detection["box"]
        assert detection["label"] in id2label.values()
        assert 0 <= box["xmin"] <= box["xmax"] <= photo.width and 0 <= box["ymin"] <= box["ymax"] <= photo.height


# ------------------------------------------------------------------------------------------------
# The built-in set
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pasted():
    return pasted_objects_dataset(num_train=24, num_validation=8, size=64, seed=0)


def test_pasted_objects_dataset_is_deterministic_and_in_the_hub_convention(pasted):
    splits, id2label = pasted
    assert id2label == dict(enumerate(BUILTIN_CLASSES))
    assert splits["train"].features["objects"]["category"].feature.names == list(BUILTIN_CLASSES)
    again, _ = pasted_objects_dataset(num_train=24, num_validation=8, size=64, seed=0)
    assert np.array_equal(np.asarray(again["train"][5]["image"]), np.asarray(splits["train"][5]["image"]))
    assert again["train"][5]["objects"] == splits["train"][5]["objects"]
    seen = set()
    for row in splits["train"]:
        boxes = np.asarray(row["objects"]["bbox"]).reshape(-1, 4)
        assert 1 <= len(boxes) <= 3 and row["image"].size == (64, 64)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 64).all() and (boxes[:, 1] + boxes[:, 3] <= 64).all()
        corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        for i in range(len(corners)):  # objects never overlap
            for j in range(i):
                a, b = corners[i], corners[j]
                assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
        seen |= set(row["objects"]["category"])
    assert seen == {0, 1, 2, 3}


def test_pasted_boxes_are_exact():
    """The same scenes pasted on black and on white give each pixel's opacity (white - black = (1 - alpha)
    x 255); the pixels at least half opaque fill exactly the boxes (to the pixel, rounding aside) and
    none lies outside them."""
    from swin_hf.detection.data import builtin_sources

    objects, _ = builtin_sources()
    scenes = []
    for colour in (0, 255):
        rng = np.random.default_rng(3)
        plain = [Image.new("RGB", (300, 300), (colour,) * 3)]
        scenes.append([pasted_objects_scene(rng, 96, objects, plain) for _ in range(12)])
    for (black, boxes, _), (white, same, _) in zip(*scenes):
        assert boxes == same
        transparency = (np.asarray(white).astype(int) - np.asarray(black).astype(int)).mean(axis=2)
        opaque = transparency <= 127
        covered = np.zeros_like(opaque)
        for x, y, w, h in boxes:
            x0, y0, x1, y1 = int(x), int(y), int(x + w), int(y + h)
            ys, xs = opaque[max(0, y0 - 2) : y1 + 2, max(0, x0 - 2) : x1 + 2].nonzero()
            found = (xs.min() + max(0, x0 - 2), ys.min() + max(0, y0 - 2), xs.max() + 1 + max(0, x0 - 2), ys.max() + 1 + max(0, y0 - 2))
            assert np.abs(np.subtract(found, (x0, y0, x1, y1))).max() <= 1, (found, (x0, y0, x1, y1))
            covered[y0:y1, x0:x1] = True
        assert opaque[~covered].sum() <= 4  # rounding at the threshold only


# ------------------------------------------------------------------------------------------------
# Checks of other people's data
# ------------------------------------------------------------------------------------------------


def detection_split(rows, names=("a", "b"), size=(100, 80)):
    """A split in the Hub's convention; `names=None`: plain integer categories (no ClassLabel), boxes of any length."""
    import datasets

    features = detection_features(names or ["a"])
    if names is None:
        features["objects"] = {"bbox": datasets.List(datasets.List(datasets.Value("float32"))),
                               "category": datasets.List(datasets.Value("int64"))}
    return datasets.Dataset.from_dict({"image": [Image.new("RGB", size)] * len(rows), "objects": rows}, features=features)


def test_clean_boxes_counts_what_it_changes():
    out = clean_boxes([[10, 10, 20, 20], [95, 5, 30, 10], [5, 5, 0, 8], [200, 0, 5, 5], [0.2, 0.3, 10, 10]], 100, 80)
    assert out.keep.tolist() == [True, True, False, False, True]
    assert out.clipped.tolist() == [False, True, False, False, False]  # within SLACK pixels is not clipping
    assert out.xyxy[1].tolist() == [95.0, 5.0, 100.0, 15.0]
    corners = clean_boxes([[10, 10, 30, 30]], 100, 80, bbox_format="xyxy").xyxy
    centres = clean_boxes([[20, 20, 20, 20]], 100, 80, bbox_format="cxcywh").xyxy
    assert corners.tolist() == centres.tolist() == [[10.0, 10.0, 30.0, 30.0]]


def test_prepare_detection_counts_clipped_degenerate_outside_and_empty(caplog):
    import datasets

    rows = [{"bbox": [[10, 10, 20, 20], [90, 60, 30, 30]], "category": [0, 1]},  # the second reaches past
            {"bbox": [[5, 5, 0, 3], [300, 10, 5, 5]], "category": [1, 1]},  # zero width; wholly outside
            {"bbox": [], "category": []}]  # no objects
    splits = datasets.DatasetDict(train=detection_split(rows), validation=detection_split(rows[:1]))
    with caplog.at_level("INFO"):
        data = prepare_detection(splits)
    stats = data.stats["train"]
    assert (stats.images, stats.boxes, stats.clipped, stats.degenerate, stats.outside, stats.empty_images) == (3, 4, 1, 1, 1, 1)
    assert "1 with zero or negative width or height (left out)" in caplog.text
    assert "1 images without objects (kept" in caplog.text
    assert data.id2label == {0: "a", 1: "b"}
    items = DetectionDataset(data.train, 50)
    _, boxes, labels, _, size, _ = items[1]
    assert boxes.shape == (0, 4) and labels.tolist() == [] and size == (80, 100)
    _, boxes, labels, _, _, _ = items[0]
    assert boxes.tolist() == [[5.0, 6.25, 15.0, 18.75], [45.0, 37.5, 50.0, 50.0]] and labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"bbox": [[1, 1, 5, 5]], "category": [2]}], "category 2 is outside the 2 classes"),
        ([{"bbox": [[1, 1, 5, 5]], "category": [0, 1]}], "1 boxes but 2 categories"),
        ([{"bbox": [[1, 1, 5]], "category": [0]}], "a bbox has 3 values"),
        ([{"bbox": [[0.1, 0.2, 0.3, 0.4]], "category": [0]}] * 3, "look normalised"),
        ([{"bbox": [[60, 40, 90, 70], [10, 10, 40, 30], [55, 20, 95, 60]], "category": [0, 1, 0]}], "look like corners"),
    ],
)
def test_bad_boxes_are_refused_naming_the_field_and_the_fix(rows, message):
    import datasets

    split = detection_split(rows, names=None)
    with pytest.raises(DataError, match=message):
        prepare_detection(datasets.DatasetDict(train=split, validation=split), id2label={0: "a", 1: "b"})


def test_missing_objects_column_and_missing_names_are_explained():
    import datasets

    plain = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "label": [0]})
    with pytest.raises(DataError, match="no 'objects' column.*--objects-column"):
        prepare_detection(datasets.DatasetDict(train=plain, validation=plain), id2label={0: "a"})
    with pytest.raises(DataError, match="give a validation split"):
        prepare_detection(datasets.DatasetDict(train=plain), id2label={0: "a"})
    unnamed = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "objects": [{"bbox": [[1, 1, 2, 2]], "category": [0]}]})
    with pytest.raises(DataError, match="--id2label"):
        prepare_detection(datasets.DatasetDict(train=unnamed, validation=unnamed))
    data = prepare_detection(datasets.DatasetDict(train=unnamed, validation=unnamed), id2label={0: "a"})
    assert data.stats["train"].boxes == 1


def test_coco_folder_with_crowds_gaps_in_ids_and_an_images_folder(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.jpg")
    Image.new("RGB", (20, 20)).save(tmp_path / "images" / "b.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 90, "bbox": [1, 2, 10, 8], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 0, 40, 30], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [20, 5, 5, 5]},
        ],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 5, "name": "airplane"}],
    }
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    splits, id2label = coco_folder_dataset(str(tmp_path))
    assert sorted(splits) == ["train", "validation"] and id2label == {0: "airplane", 1: "toothbrush"}
    assert splits["train"][0]["objects"] == {"bbox": [[1.0, 2.0, 10.0, 8.0], [20.0, 5.0, 5.0, 5.0]], "category": [1, 0]}
    assert splits["train"][1]["objects"] == {"bbox": [], "category": []}
    coco["annotations"].append({"id": 4, "image_id": 2, "category_id": 7, "bbox": [1, 1, 2, 2]})
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="category_id 7"):
        coco_folder_dataset(str(tmp_path))
    (tmp_path / "images" / "a.jpg").unlink()
    with pytest.raises(DataError, match="'a.jpg', which is in none of"):
        coco_folder_dataset(str(tmp_path))


# ------------------------------------------------------------------------------------------------
# Augmentation, targets
# ------------------------------------------------------------------------------------------------


def test_box_augment_keeps_boxes_on_their_objects():
    """White rectangles on black: after random flips, zooms and shifts each kept box still frames its
    rectangle's pixels (within the half pixel bilinear resampling blurs), and boxes mostly pushed out of
    the frame are left out."""
    torch.manual_seed(0)
    augment = BoxAugment(jitter=0.0)
    images = torch.zeros(8, 3, 64, 64)
    boxes = [torch.tensor([[8.0, 10.0, 28.0, 40.0], [40.0, 44.0, 60.0, 60.0]])] * 8
    for b in boxes[0].long().tolist():
        images[:, :, b[1] : b[3], b[0] : b[2]] = 1.0
    labels = [torch.tensor([0, 1])] * 8
    out, moved, classes = augment(images, boxes, labels)
    assert out.shape == images.shape and sum(len(c) for c in classes) >= 8
    for image, box, label in zip(out, moved, classes):
        assert len(box) == len(label)
        bright = image[0] > 0.5
        covered = torch.zeros_like(bright)
        for x0, y0, x1, y1 in box.tolist():
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            covered[max(0, math.floor(y0 - 0.5)) : math.ceil(y1 + 0.5), max(0, math.floor(x0 - 0.5)) : math.ceil(x1 + 0.5)] = True
            inner = bright[math.ceil(y0 + 0.5) : math.floor(y1 - 0.5), math.ceil(x0 + 0.5) : math.floor(x1 - 0.5)]
            assert inner.float().mean() > 0.95  # the box holds its object
        # pixels of objects whose boxes were dropped may remain; those of kept objects are framed
        assert (bright & covered).sum() >= 0.9 * bright.sum() or len(box) < 2


def test_to_detr_labels_are_normalised_centres():
    labels = to_detr_labels([torch.tensor([[10.0, 20.0, 30.0, 60.0]])], [torch.tensor([2])], height=80, width=100)
    torch.testing.assert_close(labels[0]["boxes"], torch.tensor([[0.2, 0.5, 0.2, 0.5]]))
    assert labels[0]["class_labels"].tolist() == [2]


# ------------------------------------------------------------------------------------------------
# mAP and pictures
# ------------------------------------------------------------------------------------------------


def test_map_of_perfect_and_of_half_found_predictions():
    truth = [{"boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 80.0]]), "labels": torch.tensor([0, 1])},
             {"boxes": torch.tensor([[10.0, 10.0, 30.0, 60.0]]), "labels": torch.tensor([1])}]
    perfect = [{**t, "scores": torch.linspace(0.9, 0.5, len(t["labels"]))} for t in truth]
    result = mean_average_precision(perfect, truth, {0: "a", 1: "b"})
    assert result["map"] == result["map_50"] == result["map_75"] == 1.0
    assert result["per_class_ap"] == {"a": 1.0, "b": 1.0}
    # class b: one of its two boxes found (first in score order), nothing else: precision 1 up to recall 0.5
    half = [perfect[0], {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    result = mean_average_precision(half, truth, {0: "a", 1: "b"})
    assert result["per_class_ap"]["b"] == pytest.approx(51 / 101)  # COCO's 101 recall points: 0, 0.01, ..., 0.5
    assert result["map"] == pytest.approx((1 + 51 / 101) / 2)


def test_evaluate_detection_matches_the_metric_on_the_same_predictions(pasted):
    splits, id2label = pasted
    torch.manual_seed(0)
    model = tiny_detector("rt_detr", num_labels=4).eval()
    processor = image_processor_for("rt_detr", 64)
    data = prepare_detection(splits, id2label)
    loader = torch.utils.data.DataLoader(DetectionDataset(data.validation, 64), batch_size=3, collate_fn=collate)
    result = evaluate_detection(model, processor, loader, id2label)
    assert result["images"] == 8 and 0 <= result["map"] <= result["map_50"] <= 1
    predictions, targets = [], []
    for batch in loader:
        predictions += predict(model, processor, normalise(batch["pixel_values"], processor.image_mean, processor.image_std), batch["sizes"])
        targets += [{"boxes": b, "labels": c} for b, c in zip(batch["boxes"], batch["labels"])]  # 64 px = original size
    assert mean_average_precision(predictions, targets, id2label)["map"] == pytest.approx(result["map"])


def test_save_picture_draws_truth_and_confident_predictions(tmp_path):
    image = Image.new("RGB", (80, 60), (90, 90, 90))
    truth = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([0])}
    prediction = {"boxes": torch.tensor([[12.0, 8.0, 42.0, 38.0], [50.0, 5.0, 70.0, 50.0]]),
                  "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([1, 0])}
    save_picture(str(tmp_path / "p.png"), image, truth, prediction, {0: "a", 1: "b"}, threshold=0.5)
    panel = np.asarray(Image.open(tmp_path / "p.png"))
    scale = 320 / 80
    assert panel.shape == (240, 2 * 320 + 4, 3)
    grey = np.array([90, 90, 90])
    assert (panel[int(25 * scale), int(10 * scale)] != grey).any()  # the true box, left
    right = panel[:, 324:]
    assert (right[int(25 * scale), int(12 * scale)] != grey).any()  # the confident prediction
    assert (right[int(30 * scale), int(70 * scale)] == grey).all()  # the unconfident one is not drawn


@pytest.mark.parametrize("name", ["swin_hf.detection", "swin_hf.detection.data", "swin_hf.detection.evaluate"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_layer_decay_treats_a_detectors_query_embeddings_as_head():
    from swin_hf.training.optim import layer_id

    depths = [1, 1, 1, 1]
    assert layer_id("model.backbone.conv_encoder.model.swin.embeddings.patch_embeddings.projection.weight", depths) == 0
    assert layer_id("model.query_position_embeddings.weight", depths) == 5
    assert layer_id("swin.embeddings.norm.weight", depths) == 0
