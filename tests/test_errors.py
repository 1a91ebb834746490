"""Bad input is a one-line error, found before anything is deleted or trained.

Recipes: `error: ...` on stderr and exit status 2 for what the command line, the data or the output
folder must change (argparse's status for bad arguments); the swin-hf command: `swin-hf CMD: error: ...`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import datasets
import pytest
from PIL import Image

from swin_hf import SwinConfig, SwinForImageClassification

SMALL = ["--max-train-samples", "32", "--max-eval-samples", "16", "--batch-size", "8", "--no-progress"]


def _finetune(args) -> int:
    from swin_hf.training.cli import main

    return main([str(a) for a in args])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _images(folder: Path, classes=("cat", "dog"), count=3, flat=False):
    for label, colour in zip(classes, (40, 200, 120)):
        for i in range(count):
            target = folder if flat else folder / label
            target.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 12), (colour, 0, 20 * i)).save(target / f"{label}{i}.png")
    return folder


# ------------------------------------------------------------------------------------------------
# Arguments: refused by argparse with one line, before the output folder is touched
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--epochs", "0"], "--epochs: expected a whole number >= 1, got '0'"),
        (["--epochs", "-1"], "--epochs: expected a whole number >= 1, got '-1'"),
        (["--max-steps", "-5"], "--max-steps: expected a whole number >= 1, got '-5'"),
        (["--batch-size", "0"], "--batch-size: expected a whole number >= 1"),
        (["--grad-accum", "0"], "--grad-accum: expected a whole number >= 1"),
        (["--log-every", "0"], "--log-every: expected a whole number >= 1"),
        (["--eval-every-epochs", "0"], "--eval-every-epochs: expected a whole number >= 1"),
        (["--lr", "nan"], "--lr: expected a finite number > 0, got 'nan'"),
        (["--lr=-1e-3"], "--lr: expected a finite number > 0"),
        (["--image-size", "-16"], "--image-size: expected a whole number >= 1, got '-16'"),
        (["--train-val-split", "1.5"], "--train-val-split: expected a number between 0 and 1"),
        (["--mixup", "2"], "--mixup: expected a number from 0 to 1"),
        (["--crop-scale", "0.9,0.1"], "--crop-scale: expected 'lo,hi' with 0 < lo <= hi <= 1"),
    ],
)
def test_bad_arguments_are_one_line_and_touch_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    assert _finetune(["--output-dir", out, *args]) == 2
    line = _error(capsys)
    assert line.startswith("error: argument ") and fragment in line, line
    assert not out.exists()


@pytest.mark.parametrize("recipe", ["segmentation", "simmim"])
def test_the_other_recipes_check_their_arguments_the_same_way(tmp_path, capsys, recipe):
    from swin_hf.segmentation.train import main as segment_main
    from swin_hf.training.simmim import main as simmim_main

    main = segment_main if recipe == "segmentation" else simmim_main
    for args, fragment in ((["--batch-size", "0"], "--batch-size: expected a whole number >= 1"),
                           (["--lr", "inf"], "--lr: expected a finite number > 0"),
                           (["--log-every", "0"], "--log-every: expected a whole number >= 1")):
        try:
            code = main(["--output-dir", str(tmp_path / "o"), *args])
        except SystemExit as stop:
            code = stop.code
        assert code == 2 and fragment in _error(capsys)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# --overwrite: nothing of the old run is deleted until the new one has been checked
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("previous") / "run"
    assert _finetune(["--output-dir", out, "--epochs", 2, "--max-steps", 5, *SMALL]) == 0
    return out


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--lr", "nan"], "--lr"),
        (["--train-dir", "/no/such/folder", "--model", "swin-digits"], "--train-dir '/no/such/folder' does not exist"),
        (["--model", "swin-tiny-patch4-window7-22"], "did you mean 'swin-tiny-patch4-window7-224'"),
        (["--label-column", "digit"], "Label column 'digit' is not in the dataset"),
    ],
)
def test_overwrite_keeps_the_old_run_when_the_new_one_is_refused(previous_run, capsys, args, fragment):
    before = sorted(p.name for p in (previous_run / "checkpoints").iterdir())
    assert "step-00000004.ckpt" in before
    assert _finetune(["--output-dir", previous_run, "--overwrite", *args, *SMALL]) == 2
    assert fragment in _error(capsys)
    assert sorted(p.name for p in (previous_run / "checkpoints").iterdir()) == before


# ------------------------------------------------------------------------------------------------
# The output folder
# ------------------------------------------------------------------------------------------------


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert _finetune(["--output-dir", tmp_path / "out", *SMALL]) == 2
    assert "--output-dir" in (line := _error(capsys)) and "is a file, not a folder" in line


def test_output_dir_that_cannot_be_written(tmp_path, capsys):
    """Read-only: a read-only tmpfs when running as root (which ignores permission bits), else chmod 555."""
    target = tmp_path / "readonly"
    target.mkdir()
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(target)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("root, and a read-only tmpfs cannot be mounted here: permission bits would not stop root")
    else:
        target.chmod(0o555)
    try:
        assert _finetune(["--output-dir", target / "run" if not mounted else target, *SMALL]) == 2
        line = _error(capsys)
        assert "cannot be written to" in line and "choose a folder you can write to" in line, line
    finally:
        if mounted:
            subprocess.run(["umount", str(target)], check=True)
        else:
            target.chmod(0o755)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout,fragment",
    [
        ("missing", "does not exist"),
        ("empty", "holds no image files"),
        ("flat", "image(s) outside class sub-folders"),
        ("one-class", "holds a single class ('cat'); a classifier needs at least 2 classes"),
    ],
)
def test_train_dir_problems_are_named(tmp_path, capsys, layout, fragment):
    train = tmp_path / "train"
    if layout == "empty":
        train.mkdir()
    elif layout == "flat":
        _images(train, flat=True)
    elif layout == "one-class":
        _images(train, classes=("cat",))
    assert _finetune(["--train-dir", train, "--model", "swin-digits", "--output-dir", tmp_path / "run", "--no-progress"]) == 2
    line = _error(capsys)
    assert line.startswith("error: --train-dir") and fragment in line, line
    assert "No label column found" not in line


def _saved_dataset(path: Path, train_labels, validation_labels, names=("a", "b", "c")):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})

    def split(labels):
        return datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (8, 8), (30 * y, 0, i)) for i, y in enumerate(labels)], "label": list(labels)},
            features=features,
        )

    datasets.DatasetDict(train=split(train_labels), validation=split(validation_labels)).save_to_disk(path)
    return path


def test_a_one_class_dataset_is_refused(tmp_path, capsys):
    """It used to train and report 100% validation accuracy."""
    data = _saved_dataset(tmp_path / "data", [0] * 8, [0] * 4)
    assert _finetune(["--dataset", data, "--model", "swin-digits", "--profile", "digits", "--output-dir", tmp_path / "run",
                      "--no-progress"]) == 2
    assert "The training split holds a single class ('a')" in _error(capsys)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_class_only_in_validation_is_refused(tmp_path, capsys):
    """It used to become a model output that was never trained."""
    data = _saved_dataset(tmp_path / "data", [0, 1] * 4, [0, 1, 2, 2])
    assert _finetune(["--dataset", data, "--model", "swin-digits", "--profile", "digits", "--output-dir", tmp_path / "run",
                      "--no-progress"]) == 2
    assert "Class(es) ['c'] have validation examples but no training examples" in _error(capsys)


# ------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------


def test_a_hub_model_offline_fails_at_once(tmp_path, capsys, monkeypatch):
    """--train-dir without --model means the pretrained Swin-T from the Hub: offline, and not cached, that is
    one line within seconds (it used to wait 75 s on the Hub, then print a traceback)."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    _images(tmp_path / "train")
    started = time.perf_counter()
    assert _finetune(["--train-dir", tmp_path / "train", "--output-dir", tmp_path / "run", "--no-progress"]) == 2
    assert time.perf_counter() - started < 20
    line = _error(capsys)
    assert "--model 'microsoft/swin-tiny-patch4-window7-224'" in line and "HF_HUB_OFFLINE" in line, line


def _broken_model(folder: Path, field, value) -> Path:
    model = SwinForImageClassification(SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=[2, 2], num_heads=[1, 2],
                                                  window_size=4, num_labels=3))
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("field,value", [("depths", 2), ("mlp_ratio", "four")])
def test_a_model_folder_with_a_broken_config(tmp_path, capsys, field, value):
    model = _broken_model(tmp_path / "model", field, value)
    assert _finetune(["--model", model, "--profile", "digits", "--output-dir", tmp_path / "run", *SMALL]) == 2
    line = _error(capsys)
    assert f"SwinConfig.{field}: got {value!r}" in line and "config.json" in line, line


def test_export_onnx_of_a_folder_with_a_broken_config(tmp_path, capsys):
    from swin_hf.cli import main

    model = _broken_model(tmp_path / "model", "drop_path_rate", "high")
    assert main(["export-onnx", str(model), str(tmp_path / "x.onnx")]) == 1
    line = _error(capsys)
    assert "SwinConfig.drop_path_rate: got 'high'. Use a probability in [0, 1)." in line, line


# ------------------------------------------------------------------------------------------------
# swin-hf
# ------------------------------------------------------------------------------------------------


def test_convert_from_transformers_on_a_swin_hf_folder(tmp_path, capsys):
    from swin_hf.cli import main

    SwinForImageClassification(SwinConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4, num_labels=2)).save_pretrained(tmp_path / "ours")
    assert main(["convert", "--from", "transformers", str(tmp_path / "ours"), str(tmp_path / "out")]) == 1
    line = _error(capsys)
    assert "is already a swin_hf model" in line and "from_pretrained" in line and len(line) < 400
    assert not (tmp_path / "out").exists()


def test_swin_hf_usage_errors_are_one_line(capsys):
    from swin_hf.cli import main

    assert main(["info", "swin-tiny-patch4-window7-224", "--image-size", "x"]) == 2
    assert "swin-hf info: error: argument --image-size" in _error(capsys)
    assert main(["export-onnx"]) == 2
    assert "swin-hf export-onnx: error: the following arguments are required" in _error(capsys)


def test_segmentation_data_and_model_errors_are_one_line(tmp_path, capsys):
    from swin_hf.segmentation.train import main

    assert main(["--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o"), "--accelerator", "cpu",
                 "--devices", "1"]) == 2
    assert "no such folder" in _error(capsys)
    assert not (tmp_path / "o" / "checkpoints").exists()
