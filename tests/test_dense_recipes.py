"""recipes/segment.py and recipes/pretrain_simmim.py end to end on tiny settings (CPU, offline).

Both recipes reuse the fine-tuning recipe's shared code (swin_hf.training: launcher handling, data
loading, optimiser groups, schedule, checkpoints, reports).
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import swin_hf.training  # noqa: F401  (the recipes share it)

from swin_hf import SwinForImageClassification  # noqa: E402
from swin_hf.segmentation.data import TEXTURE_CLASSES  # noqa: E402
from swin_hf.segmentation.train import main as segment_main  # noqa: E402
from swin_hf.training.launcher import free_port  # noqa: E402
from swin_hf.training.simmim import main as simmim_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = ["--accelerator", "cpu", "--devices", "1"]


@pytest.fixture(scope="module")
def simmim_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("simmim") / "model"
    code = simmim_main(["--output-dir", str(out), "--max-steps", "8", "--batch-size", "16", "--max-train-samples", "64",
                        "--max-eval-samples", "16", "--log-every", "4", *CPU])
    assert code == 0
    return out


def _check_output_folder(out, task: str) -> None:
    """What every recipe leaves: a model card for its task, metrics.json with the run's throughput and
    layout, training curves and the CSV/TensorBoard logs."""
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and f"- {task}" in card and "## Training hyperparameters" in card
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and metrics["strategy"] == "single-device" and metrics["images_per_s"] > 0
    assert any("train_loss" in row and "images_per_s_per_process" in row for row in metrics["history"])
    assert (out / "training_curves.png").stat().st_size > 0 and (out / "logs" / "metrics.csv").exists()


def test_pretrain_simmim_writes_a_checkpoint_and_reports(simmim_output):
    metrics = json.loads((simmim_output / "metrics.json").read_text())
    train = [row["train_loss"] for row in metrics["history"] if "train_loss" in row]
    assert metrics["steps"] == 8 and len(train) == 3 and all(np.isfinite(train))  # steps 1, 4 and 8
    assert np.isfinite(metrics["best_val_loss"]) and metrics["first_loss"] == train[0]
    assert metrics["mask_ratio"] == 0.6 and metrics["mask_patch_size"] == 4
    config = json.loads((simmim_output / "config.json").read_text())
    assert config["architectures"] == ["SwinForMaskedImageModeling"] and config["encoder_stride"] == 4
    assert (simmim_output / "preprocessor_config.json").exists()
    _check_output_folder(simmim_output, "masked-image-modeling")
    assert Image.open(simmim_output / "reconstructions.png").height >= 6 * 128  # 6 rows of 16 px images, upscaled


def test_simmim_encoder_hands_off_to_the_finetuning_recipe(simmim_output):
    """The fine-tuning recipe's own model builder loads the pre-trained encoder (every swin.* weight)
    with a new classifier."""
    from safetensors.torch import load_file

    from swin_hf.training.classification import ClassificationSettings, ClassificationTask, build_model

    settings = ClassificationTask.resolve(ClassificationSettings(model=str(simmim_output), dataset="some/set"))
    model, processor, from_scratch = build_model(settings, [str(i) for i in range(10)])
    assert not from_scratch and isinstance(model, SwinForImageClassification)
    assert model.config.num_labels == 10
    saved = load_file(simmim_output / "model.safetensors")
    state = model.state_dict()
    encoder = [k for k in saved if k.startswith("swin.") and "mask_token" not in k]
    assert len(encoder) > 20
    for k in encoder:
        torch.testing.assert_close(state[k], saved[k], rtol=0, atol=0)


def test_segment_recipe_trains_evaluates_and_saves_for_pipeline(tmp_path):
    out = tmp_path / "upernet"
    code = segment_main(["--output-dir", str(out), "--max-steps", "4", "--batch-size", "8", "--image-size", "32",
                         "--max-train-samples", "32", "--max-eval-samples", "8", "--num-overlays", "3",
                         "--hidden-size", "32", *CPU])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0.0 <= metrics["mean_iou"] <= 1.0
    assert set(metrics["per_category_iou"]) == set(TEXTURE_CLASSES)
    assert sorted(os.listdir(out / "overlays")) == [f"validation_{i:03d}.png" for i in range(3)]
    _check_output_folder(out, "image-segmentation")
    assert "| mean_iou |" in (out / "README.md").read_text()
    panel = np.asarray(Image.open(out / "overlays" / "validation_000.png").convert("RGB"))
    assert panel.shape[0] >= 256 and panel.shape[1] >= 3 * 256  # 32 px images shown at least 256 px high
    from swin_hf.segmentation.evaluate import palette

    legend = panel[-40:].reshape(-1, 3)  # the legend's colour swatches, under the panels
    for colour in palette(len(TEXTURE_CLASSES)):
        assert (np.abs(legend.astype(int) - colour).sum(1) < 30).sum() > 20, colour

    from transformers import pipeline

    segments = pipeline("image-segmentation", model=str(out))(Image.new("RGB", (50, 40), (200, 120, 40)))
    assert segments and {s["label"] for s in segments} <= set(TEXTURE_CLASSES)
    assert all(s["mask"].size == (50, 40) for s in segments)


def test_segment_recipe_starts_from_a_simmim_encoder(simmim_output, tmp_path):
    """A pre-trained encoder of another geometry (2 stages, patch 2): UperNet takes every stage it has."""
    out = tmp_path / "from-simmim"
    code = segment_main(["--model", str(simmim_output), "--output-dir", str(out), "--max-steps", "2",
                         "--batch-size", "8", "--image-size", "32", "--max-train-samples", "16",
                         "--max-eval-samples", "8", "--num-overlays", "1", "--hidden-size", "32", *CPU])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["backbone_config"]["out_features"] == ["stage1", "stage2"]


def test_segment_recipe_explains_missing_labels(tmp_path, capsys):
    import datasets

    folder = tmp_path / "set"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)], "annotation": [np.zeros((4, 4), np.uint8)]},
                                         features=datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()}))
    ).save_to_disk(folder)
    assert segment_main(["--dataset", str(folder), "--output-dir", str(tmp_path / "o"), *CPU]) == 2
    assert "--num-labels" in capsys.readouterr().err


@pytest.mark.slow
def test_segment_recipe_under_fabric_run_ddp_two_processes(tmp_path):
    """Two CPU processes with DDP: every trainable parameter gets a gradient (the backbone's unused final
    norm is frozen), predictions are gathered for the mIoU, and rank 0 writes the outputs."""
    import shutil

    fabric = shutil.which("fabric")
    if fabric is None:  # lightning installs the `fabric` command; a broken install is a failure
        pytest.fail("the `fabric` command of lightning is not on PATH")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "ddp"
    result = subprocess.run(
        [fabric, "run", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--main-port", str(free_port()),
         os.path.join(ROOT, "recipes", "segment.py"), "--output-dir", str(out), "--max-steps", "2",
         "--batch-size", "4", "--image-size", "32", "--max-train-samples", "16", "--max-eval-samples", "8",
         "--num-overlays", "1", "--hidden-size", "32"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0.0 <= metrics["mean_iou"] <= 1.0


def test_segment_recipe_accumulates_averages_and_resumes_mid_epoch(tmp_path, capsys):
    """--grad-accum, --ema-decay and --checkpoint-every on segment.py: the mid-epoch checkpoint holds the EMA
    and the data position; resuming it with the same settings ends with the uninterrupted run's weights,
    and with a larger --max-steps the run continues from it."""
    from safetensors.torch import load_file

    out = tmp_path / "accum"
    tiny = ["--output-dir", str(out), "--image-size", "32", "--max-train-samples", "32", "--max-eval-samples", "4",
            "--batch-size", "4", "--hidden-size", "16", "--num-overlays", "1", "--grad-accum", "2", "--ema-decay", "0.9",
            "--checkpoint-every", "2", "--no-progress", *CPU]
    assert segment_main([*tiny, "--max-steps", "4"]) == 0  # 8 batches of 4 per epoch: 4 steps of 2
    assert sorted(os.listdir(out / "checkpoints")) == ["final-weights.safetensors", "step-00000002.ckpt"]
    saved = torch.load(out / "checkpoints" / "step-00000002.ckpt", weights_only=True)
    assert saved["progress"]["step"] == 2 and (saved["progress"]["epoch"], saved["progress"]["batch"]) == (0, 4)
    assert "ema" in saved
    uninterrupted = load_file(out / "checkpoints" / "final-weights.safetensors")
    capsys.readouterr()

    assert segment_main([*tiny, "--max-steps", "4", "--resume"]) == 0
    assert "Resumed from" in capsys.readouterr().out
    resumed = load_file(out / "checkpoints" / "final-weights.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)

    assert segment_main([*tiny, "--max-steps", "6", "--resume", "--allow-changed-config", "max_steps"]) == 0
    assert "step 2, epoch 0, batch 4" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["steps"], metrics["epochs"]) == (6, 2) and 0.0 <= metrics["mean_iou"] <= 1.0
    assert "step-00000004.ckpt" in os.listdir(out / "checkpoints")  # the first epoch's end, in the resumed run
