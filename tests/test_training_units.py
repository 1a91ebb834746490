"""Unit tests of swin_hf.training: data checks, decoding, optimiser groups, schedule, EMA, checkpoints,
launcher detection and the offline metric."""

import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import datasets

from swin_hf import SwinConfig, SwinForImageClassification  # noqa: E402
from swin_hf.training import checkpoint as ckpt  # noqa: E402
from swin_hf.training.data import (  # noqa: E402
    DataError,
    ImageClassificationDataset,
    ResumableSampler,
    collate_skipping,
    decode_image,
    digits_dataset_dict,
    prepare,
    to_rgb,
)
from swin_hf.training.ema import EMA, swapped_weights  # noqa: E402
from swin_hf.training.settings import build_parser, parse_settings  # noqa: E402
from swin_hf.training.optim import cosine_with_warmup, layer_id, param_groups  # noqa: E402


def _tiny_model(num_labels=3):
    config = SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=4, num_labels=num_labels)
    return SwinForImageClassification(config)


def _dataset(n=12, classes=("a", "b", "c"), labels=None):
    images = [Image.new("RGB", (8, 8), (i * 10, 0, 0)) for i in range(n)]
    labels = labels if labels is not None else [i % len(classes) for i in range(n)]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=list(classes))})
    return datasets.Dataset.from_dict({"img": images, "y": labels}, features=features)


def test_digits_dataset_is_a_stratified_datasetdict():
    splits = digits_dataset_dict()
    assert set(splits) == {"train", "validation"}
    assert len(splits["train"]) + len(splits["validation"]) == 1797
    assert isinstance(splits["train"].features["image"], datasets.Image)
    assert splits["train"].features["label"].names == [str(i) for i in range(10)]
    counts = np.bincount(splits["validation"]["label"], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: ~36 per class
    assert splits["train"][0]["image"].size == (8, 8)


def test_prepare_detects_columns_and_splits_validation_stratified():
    data = prepare(datasets.DatasetDict(train=_dataset(30)), train_val_split=0.2, seed=1)
    assert (data.image_column, data.label_column) == ("img", "y")
    assert data.class_names == ["a", "b", "c"]
    assert len(data.validation) == 6 and sorted(np.bincount(data.validation["y"])) == [2, 2, 2]
    assert data.notes and "stratified" in data.notes[0]


def test_prepare_errors_name_the_problem():
    no_image = datasets.Dataset.from_dict({"x": [1, 2], "y": [0, 1]})
    with pytest.raises(DataError, match="No image column"):
        prepare(datasets.DatasetDict(train=no_image, validation=no_image))
    no_label = datasets.Dataset.from_dict({"img": [Image.new("RGB", (4, 4))] * 2}).cast_column("img", datasets.Image())
    with pytest.raises(DataError, match="No label column"):
        prepare(datasets.DatasetDict(train=no_label, validation=no_label))
    with pytest.raises(DataError, match="'nope' is not in the dataset"):
        prepare(datasets.DatasetDict(train=_dataset(), validation=_dataset()), image_column="nope")
    with pytest.raises(DataError, match="validation split is empty"):
        prepare(datasets.DatasetDict(train=_dataset(), validation=_dataset().select([])))
    bad = _dataset(2, classes=[str(i) for i in range(8)], labels=[0, 7])
    with pytest.raises(DataError, match=r"Split 'validation', column 'y': label 7 is outside the 3 classes"):
        prepare(datasets.DatasetDict(train=_dataset(), validation=bad))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16", "F", "1"])
def test_any_pil_mode_becomes_rgb(mode):
    image = Image.new(mode, (5, 4))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (5, 4)


def test_transparent_pixels_are_composited_on_white():
    image = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_images_are_skipped_and_counted():
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, format="PNG")
    good = {"bytes": buffer.getvalue(), "path": None}
    truncated = {"bytes": buffer.getvalue()[:40], "path": "cut.png"}
    garbage = {"bytes": b"not an image", "path": "junk.jpg"}
    assert decode_image(good).mode == "RGB"
    with pytest.raises(OSError):
        decode_image(truncated)
    split = datasets.Dataset.from_dict({"img": [good, truncated, garbage], "y": [0, 1, 2]})
    dataset = ImageClassificationDataset(split, "img", "y", lambda im: torch.zeros(3, 2, 2))
    batch = collate_skipping([dataset[i] for i in range(3)])
    assert dataset.skipped.count == 2 and batch["skipped"] == 2
    assert batch["labels"].tolist() == [0] and batch["index"].tolist() == [0]


def test_sampler_shards_disjointly_and_resumes_mid_epoch():
    samplers = [ResumableSampler(20, 4, True, seed=3, rank=r, world_size=2, drop_last=True) for r in range(2)]
    seen = [list(s) for s in samplers]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 8
    samplers[0].set_position(epoch=0, start_batch=1)
    assert list(samplers[0]) == seen[0][4:]
    samplers[0].set_position(epoch=1)
    assert list(samplers[0]) != seen[0]


def test_no_weight_decay_on_norms_biases_and_position_tables():
    model = _tiny_model()
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.8, depths=[2, 2])
    no_decay = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    decay = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    assert any(n.endswith("relative_position_bias_table") for n in no_decay)
    assert all(not n.endswith(("bias", "relative_position_bias_table")) for n in decay)
    assert all("norm" not in n for n in decay)
    assert "classifier.weight" in decay
    # layer-wise decay: embeddings get decay**5, classifier 1, blocks in between
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["classifier.weight"] == 1.0
    assert scale["swin.embeddings.proj.weight"] == pytest.approx(0.8**5)
    assert scale["swin.stages.1.blocks.1.mlp.fc1.weight"] == pytest.approx(0.8)
    assert layer_id("swin.stages.0.downsample.reduction.weight", [2, 2]) == 3


def test_cosine_schedule_with_warmup():
    values = [cosine_with_warmup(s, total_steps=110, warmup_steps=10, min_lr_ratio=0.01) for s in range(110)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0) and values[10] == pytest.approx(1.0)
    assert values[60] == pytest.approx(0.505, abs=1e-3)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert cosine_with_warmup(110, 110, 10, 0.01) == pytest.approx(0.01)


def test_ema_tracks_weights_and_swaps_back():
    model = _tiny_model()
    ema = EMA(model, decay=0.5)
    before = model.classifier.weight.detach().clone()
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    for _ in range(20):
        ema.update(model)
    assert torch.allclose(ema.shadow["classifier.weight"], model.classifier.weight, atol=1e-4)
    with swapped_weights(model, ema):
        pass
    ema2 = EMA(model, decay=0.5)
    ema2.load_state_dict(ema.state_dict())
    assert ema2.updates == 20
    assert not torch.equal(before, model.classifier.weight)


def test_rng_state_round_trip():
    import random

    state = ckpt.rng_state()
    a = (torch.rand(3), np.random.rand(), random.random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_atomic_checkpoint_and_latest(tmp_path):
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1)
    for step in (5, 10, 15):
        ckpt.save_atomic(fabric, ckpt.checkpoint_path(str(tmp_path), step), {"x": torch.tensor(step)}, keep=2)
    (tmp_path / ".tmp-step-00000020.ckpt").write_bytes(b"half written")
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step-00000015.ckpt")
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000010.ckpt", "step-00000015.ckpt"]


def test_launcher_detection():
    from swin_hf.training.classification import ClassificationSettings
    from swin_hf.training.cli import fabric_kwargs, resolve_precision

    def parse(argv):
        return parse_settings(ClassificationSettings, argv, "finetune.py", "")

    args = parse([])
    auto = resolve_precision("auto", "auto")  # (what --precision auto, the default, is on this machine)
    torchrun = {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "0"}
    assert fabric_kwargs(args, torchrun) == dict(accelerator="auto", devices=2, strategy="ddp", num_nodes=2, precision=auto)
    accelerate = {"WORLD_SIZE": "1", "LOCAL_RANK": "0", "ACCELERATE_USE_CPU": "true", "ACCELERATE_MIXED_PRECISION": "bf16"}
    kwargs = fabric_kwargs(args, accelerate)
    assert kwargs["accelerator"] == "cpu" and kwargs["devices"] == 1 and kwargs["precision"] == "bf16-mixed"
    assert fabric_kwargs(args, {"LT_CLI_USED": "1", "LT_DEVICES": "2"}) == {"precision": auto}
    assert fabric_kwargs(args, {"LT_CLI_USED": "1", "LT_PRECISION": "32-true"}) == {}  # the launcher's flag wins
    # `lightning run --strategy fsdp`: swin_hf's FSDP2 strategy (start_fabric builds it; Lightning's refuses CPUs)
    assert fabric_kwargs(args, {"LT_CLI_USED": "1", "LT_STRATEGY": "fsdp"}) == {"strategy": "fsdp", "precision": auto}
    own = parse(["--strategy", "ddp", "--precision", "32-true"])  # the script's options, where the launcher set none
    assert fabric_kwargs(own, {"LT_CLI_USED": "1"}) == {"strategy": "ddp", "precision": "32-true"}
    assert fabric_kwargs(own, {"LT_CLI_USED": "1", "LT_STRATEGY": "auto", "LT_PRECISION": "bf16-mixed"}) == {}
    plain = fabric_kwargs(parse(["--devices", "3", "--strategy", "fsdp"]), {})
    assert plain["devices"] == 3 and plain["strategy"] == "fsdp"


def pretend_cpu(monkeypatch, flags: set[str]) -> None:
    """This process sees a CPU with these /proc/cpuinfo flags (for the bf16 choices)."""
    from swin_hf.fast_paths import CpuFeatures

    cpu = CpuFeatures(x86_onednn=True, onednn_bf16="avx512f" in flags, avx512_bf16="avx512_bf16" in flags,
                      amx_bf16="amx_bf16" in flags, isa="AVX512" if "avx512f" in flags else "AVX2")
    monkeypatch.setattr(CpuFeatures, "of_this_machine", lambda: cpu)


def test_precision_auto_is_bf16_exactly_where_the_device_multiplies_bf16_natively(monkeypatch):
    from swin_hf.training.cli import resolve_precision

    pretend_cpu(monkeypatch, {"avx512f", "amx_bf16"})
    assert resolve_precision("auto", "cpu") == resolve_precision(None, "cpu") == "bf16-mixed"
    pretend_cpu(monkeypatch, {"avx512f", "avx512_bf16"})
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    pretend_cpu(monkeypatch, {"avx2", "fma"})
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"  # anything else is Fabric's own


def test_bf16_asked_for_where_the_cpu_emulates_it_runs_with_one_warning(monkeypatch, caplog):
    from swin_hf.training.cli import _warn_bf16_emulated, resolve_precision

    _warn_bf16_emulated.cache_clear()
    pretend_cpu(monkeypatch, {"avx2", "fma"})
    with caplog.at_level(logging.WARNING, logger="swin_hf.training.cli"):
        assert resolve_precision("bf16-mixed", "cpu") == resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    warnings = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warnings) == 1 and "--precision bf16-mixed" in warnings[0] and "auto picks 32-true" in warnings[0]
    caplog.clear()
    pretend_cpu(monkeypatch, {"avx512f", "amx_bf16"})
    _warn_bf16_emulated.cache_clear()
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed" and not caplog.records


def test_help_lists_every_knob_with_defaults():
    from swin_hf.training.classification import ClassificationSettings, profiles_help

    text = build_parser(ClassificationSettings, "finetune.py", "", profiles_help()).format_help()
    for flag in ("--dataset", "--train-dir", "--validation-fraction", "--model", "--image-size", "--lr", "--layer-decay",
                 "--label-smoothing", "--drop-path", "--clip-grad", "--grad-accum", "--ema-decay", "--compile",
                 "--gradient-checkpointing", "--precision", "--mixup", "--cutmix", "--randaugment-n",
                 "--random-erasing", "--checkpoint-every", "--resume", "--push-to-hub", "--hub-model-id"):
        assert flag in text
    assert "default: sklearn-digits" in text and "digits:" in text and "finetune:" in text


def test_accuracy_metric_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from swin_hf.metrics import ACCURACY_PATH, load_accuracy

    assert os.path.exists(ACCURACY_PATH)
    result = load_accuracy().compute(predictions=[0, 1, 2, 2], references=[0, 1, 2, 0])
    assert result == {"accuracy": 0.75}


def test_prepare_output_dir_claims_a_folder_the_same_way_for_every_recipe(tmp_path):
    from types import SimpleNamespace

    fabric = SimpleNamespace(is_global_zero=True, barrier=lambda: None)
    out = tmp_path / "run"
    ckpt.prepare_output_dir(fabric, str(out), overwrite=False, resume=False)  # new folder: created
    assert out.is_dir()
    ckpt.prepare_output_dir(fabric, str(out), overwrite=False, resume=False)  # empty folder: fine
    (out / "checkpoints").mkdir()
    stale = ckpt.checkpoint_path(str(out / "checkpoints"), 7)
    open(stale, "w").close()
    with pytest.raises(FileExistsError, match="not empty. Pass --resume to continue it, pass --overwrite"):
        ckpt.prepare_output_dir(fabric, str(out), overwrite=False, resume=False)
    ckpt.prepare_output_dir(fabric, str(out), overwrite=False, resume=True)  # resume keeps the checkpoint
    assert os.path.exists(stale)
    ckpt.prepare_output_dir(fabric, str(out), overwrite=True, resume=False)  # overwrite drops it
    assert not os.path.exists(stale) and out.is_dir()


def test_a_batch_with_non_finite_pixels_is_refused_naming_the_images():
    good, bad = torch.zeros(3, 2, 2), torch.full((3, 2, 2), float("nan"))
    with pytest.raises(DataError, match=r"Image\(s\) \['b.png'\] give NaN or infinite pixel values"):
        collate_skipping([(good, 0, 0, "a.png"), (bad, 1, 1, "b.png")])


def test_weights_written_by_the_recipes_get_the_default_file_mode(tmp_path):
    import os

    from safetensors.torch import save_file

    from swin_hf.training.checkpoint import write_folder_atomically

    def write(folder):
        save_file({"w": torch.zeros(2)}, os.path.join(folder, "final-weights.safetensors"))
        with open(os.path.join(folder, "notes.txt"), "w") as f:
            f.write("x")

    previous = os.umask(0o022)
    try:
        write_folder_atomically(str(tmp_path), write, "final weights")
    finally:
        os.umask(previous)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}
