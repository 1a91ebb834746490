"""Bad input is a one-line error, found before anything is deleted or trained.

Recipes: `error: ...` on stderr and exit status 2 for what the command line, the data or the output
folder must change (argparse's status for bad arguments); the swin-hf command: `swin-hf CMD: error: ...`.
"""

from __future__ import annotations

import itertools
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
    from swin_hf.training.classification import main

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
        (["--validation-fraction", "1.5"], "--validation-fraction: expected a number between 0 and 1"),
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
        ("nested", "holds 3 image(s) in the nested folder 'cat/indoor'; the class of an image is the folder directly under"),
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
    elif layout == "nested":
        _images(train, classes=("dog",))
        _images(train / "cat", classes=("indoor",))
    assert _finetune(["--train-dir", train, "--model", "swin-digits", "--output-dir", tmp_path / "run", "--no-progress"]) == 2
    line = _error(capsys)
    assert line.startswith("error: --train-dir") and fragment in line, line
    assert "No label column found" not in line


def test_an_empty_class_folder_is_named_in_the_log(tmp_path, caplog):
    """An empty class folder is not a class (imagefolder reads classes from the images); it used to vanish
    without a word."""
    from swin_hf.training.data import check_image_folder

    _images(tmp_path / "train")
    (tmp_path / "train" / "bird").mkdir()
    with caplog.at_level("WARNING"):
        assert check_image_folder(str(tmp_path / "train"), "--train-dir", min_classes=2) == {"cat": 3, "dog": 3}
    assert "class folder(s) ['bird'] hold no images and are left out of the classes" in caplog.text


def _saved_dataset(path: Path, train_labels, validation_labels, names=("a", "b", "c"), splits=("train", "validation")):
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list(names)) if names else datasets.Value("int64")})

    def split(labels):
        return datasets.Dataset.from_dict(
            {"image": [Image.new("RGB", (8, 8), (30 * y, 0, i)) for i, y in enumerate(labels)], "label": list(labels)},
            features=features,
        )

    datasets.DatasetDict(dict(zip(splits, (split(train_labels), split(validation_labels))))).save_to_disk(path)
    return path


def test_a_test_split_is_trained_on_only_when_named(tmp_path, capsys):
    """A DatasetDict with only a `test` split used to be trained on (and validated on a part of it) silently."""
    from swin_hf.training.data import DataError, choose_splits, prepare

    data = _saved_dataset(tmp_path / "data", [0, 1] * 4, [0, 1] * 4, splits=("test", "validation"))
    assert _finetune(["--dataset", data, "--model", "swin-digits", "--output-dir", tmp_path / "run", "--no-progress"]) == 2
    line = _error(capsys)
    assert "no training split, only ['test', 'validation']" in line and "--train-split test" in line, line
    splits = datasets.load_from_disk(str(data))
    prepared = prepare(splits, train_split="test")
    assert len(prepared.train) == 8 and len(prepared.validation) == 8  # validation: the `validation` split
    assert choose_splits({"test": 0}, "test") == ("test", None)  # held out from it, as for any lone split
    assert choose_splits({"data": 0, "test": 0}) == ("data", "test")
    with pytest.raises(DataError, match=r"--train-split 'tain' is not a split of the dataset \(splits: \['test'\]\)"):
        choose_splits({"test": 0}, "tain")


@pytest.mark.parametrize("recipe", ["segmentation", "detection"])
def test_the_dense_recipes_refuse_a_lone_test_split_too(recipe, monkeypatch):
    from swin_hf.training import data
    from swin_hf.training.data import DataError

    splits = datasets.DatasetDict(test=datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))]}))
    with pytest.raises(DataError, match="no training split, only \\['test'\\]"):
        if recipe == "segmentation":
            from swin_hf.segmentation.train import SegmentSettings, load_data

            monkeypatch.setattr(data, "load_splits", lambda **kwargs: splits)
            load_data(SegmentSettings(dataset="x", num_labels=2))
        else:
            from swin_hf.detection.data import prepare_detection

            prepare_detection(splits, {0: "a"})


def test_negative_integer_labels_are_refused(tmp_path, capsys):
    """-1 (a common mark for 'unlabelled') used to become a class named '-1' and shift every other class id."""
    data = _saved_dataset(tmp_path / "data", [0, 1, -1, 2] * 2, [0, 1, 2, 2], names=None)
    assert _finetune(["--dataset", data, "--model", "swin-digits", "--output-dir", tmp_path / "run", "--no-progress"]) == 2
    line = _error(capsys)
    assert "Column 'label': 1 example(s) have the negative label -1" in line and "0 and up" in line, line


def test_integer_labels_are_the_class_ids(tmp_path):
    """Plain integer labels 0, 2, 5 are classes 0, 2 and 5 (not renumbered 0, 1, 2); labels that would make
    a model of mostly empty classes (years as labels) are refused with what to do."""
    from swin_hf.training.data import DataError, prepare

    data = _saved_dataset(tmp_path / "data", [0, 2, 5] * 3, [0, 2, 5], names=None)
    prepared = prepare(datasets.load_from_disk(str(data)))
    assert prepared.class_names == ["0", "1", "2", "3", "4", "5"]
    assert prepared.train["label"] == [0, 2, 5] * 3 and prepared.validation["label"] == [0, 2, 5]
    sparse = _saved_dataset(tmp_path / "years", [2015, 2016] * 3, [2015, 2016], names=None)
    with pytest.raises(DataError, match="2 distinct integer labels up to 2016; class ids are the label values"):
        prepare(datasets.load_from_disk(str(sparse)))


@pytest.mark.parametrize("dataset", ["./no-such-data", "/no/such/data", "~/no-such-data", "a/b/c"])
def test_a_missing_local_dataset_is_one_line(tmp_path, capsys, dataset):
    """It used to be sent to the Hub as a dataset name and end in a ConnectionError traceback."""
    started = time.perf_counter()
    assert _finetune(["--dataset", dataset, "--output-dir", tmp_path / "run", "--no-progress"]) == 2
    assert time.perf_counter() - started < 20
    line = _error(capsys)
    assert f"--dataset {dataset!r}: no such folder or file" in line, line


def test_an_unreachable_hub_dataset_is_one_line(monkeypatch):
    from swin_hf.training.data import DataError, load_splits

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match="not a local folder or file, and the Hugging Face Hub could not be reached"):
        load_splits("org/name")


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


# ------------------------------------------------------------------------------------------------
# Paths read from data files stay inside their dataset folder
# ------------------------------------------------------------------------------------------------


def _coco(root: Path, file_names) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(exist_ok=True)
    Image.new("RGB", (40, 30)).save(root / "train" / "a.png")
    images = [{"id": i, "file_name": name, "width": 40, "height": 30} for i, name in enumerate(file_names)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 10, 12], "iscrowd": 0} for i in range(len(images))]
    (root / "annotations" / "train.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}))
    return root


@pytest.fixture
def outside(tmp_path) -> Path:
    """An image outside every dataset folder of a test."""
    (tmp_path / "secret").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "secret" / "x.png")
    return tmp_path / "secret" / "x.png"


@pytest.mark.parametrize("escape", ["dotdot", "absolute", "symlink"])
def test_coco_file_names_must_stay_inside_the_dataset_folder(tmp_path, outside, escape):
    """A file_name of ../../secret/x.png, /abs/x.png or a symlink leading out used to be read as given."""
    from swin_hf.detection.data import coco_folder_dataset
    from swin_hf.training.data import DataError

    root = tmp_path / "coco"
    name = {"dotdot": "../../secret/x.png", "absolute": str(outside), "symlink": "link.png"}[escape]
    _coco(root, ["a.png", name])
    (root / "train" / "link.png").symlink_to(outside)
    with pytest.raises(DataError) as caught:
        coco_folder_dataset(str(root))
    message = str(caught.value)
    assert "\n" not in message and str(root / "annotations" / "train.json") in message, message
    assert f"image 1 (file_name {name!r})" in message and "outside the dataset folder" in message, message


def test_coco_symlinks_inside_the_dataset_folder_keep_working(tmp_path):
    from swin_hf.detection.data import coco_folder_dataset

    root = _coco(tmp_path / "coco", ["a.png", "b.png", "../train/a.png"])
    (root / "elsewhere").mkdir()
    Image.new("RGB", (40, 30)).save(root / "elsewhere" / "real.png")
    (root / "train" / "b.png").symlink_to(root / "elsewhere" / "real.png")
    splits, _ = coco_folder_dataset(str(root))
    paths = [image["path"] for image in splits["train"].cast_column("image", datasets.Image(decode=False))["image"]]
    assert len(paths) == 3 and all(Image.open(p).size == (40, 30) for p in paths)


def _path_only_parquet(folder: Path, image_paths, column="image", other=None) -> Path:
    """A parquet file whose images are stored as paths without their bytes (as datasets' to_parquet writes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    features = {column: datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    rows = {column: [{"bytes": None, "path": str(p)} for p in image_paths], "label": [i % 2 for i in range(len(image_paths))]}
    if other:
        features[other] = datasets.Image()
        rows[other] = [{"bytes": None, "path": str(image_paths[0])}] * len(image_paths)
    datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(str(folder / "train.parquet"))
    return folder


def test_a_local_dataset_naming_images_outside_its_folder_is_one_line(tmp_path, outside, capsys):
    """Parquet (or a saved DatasetDict) rows stored as paths are opened as given: outside --dataset they are refused."""
    (tmp_path / "data").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "inside.png")
    data = _path_only_parquet(tmp_path / "data", [outside] * 2 + [tmp_path / "data" / "inside.png"] * 6)
    assert _finetune(["--dataset", data, "--model", "swin-digits", "--output-dir", tmp_path / "run", "--no-progress"]) == 2
    line = _error(capsys)
    assert f"--dataset {str(data)!r}, split 'train': column 'image', row 0 names {str(outside)!r}" in line, line
    assert "outside the dataset folder" in line


def test_segmentation_masks_outside_the_dataset_folder_are_refused(tmp_path, outside):
    """The label-map column is checked like the images (here the images are inside, the masks are not)."""
    from swin_hf.segmentation.train import SegmentSettings, load_data
    from swin_hf.training.data import DataError

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (8, 8)).save(data / "inside.png")
    _path_only_parquet(data, [data / "inside.png"] * 4, other="annotation")
    table = datasets.load_dataset(str(data))["train"].to_dict()
    table["annotation"] = [{"bytes": None, "path": str(outside)}] * 4
    datasets.Dataset.from_dict(table, features=datasets.load_dataset(str(data))["train"].features).to_parquet(str(data / "train.parquet"))
    with pytest.raises(DataError, match=r"column 'annotation', row 0 names .*outside the dataset folder"):
        load_data(SegmentSettings(dataset=str(data), num_labels=2))


def test_train_dir_symlinks_leading_out_are_refused_and_inside_ones_kept(tmp_path, outside):
    from swin_hf.training.data import DataError, load_splits

    train = _images(tmp_path / "train")
    (train / "cat" / "inside.png").symlink_to(train / "dog" / "dog0.png")
    assert len(load_splits(train_dir=str(train))["train"]) == 7
    (train / "dog" / "out.png").symlink_to(outside)
    with pytest.raises(DataError, match=r"--train-dir / --validation-dir, split 'train': column 'image', row \d+ names .*out\.png"):
        load_splits(train_dir=str(train))


def test_the_path_rule(tmp_path):
    from swin_hf.training.data import DataError, path_inside

    (tmp_path / "data" / "sub").mkdir(parents=True)
    assert path_inside(str(tmp_path / "data" / "sub" / ".." / "x.png"), str(tmp_path / "data"), "f", "e") == str(
        (tmp_path / "data" / "x.png").resolve())
    assert path_inside(str(tmp_path / "cache" / "x.png"), [str(tmp_path / "data"), str(tmp_path / "cache")], "f", "e")
    (tmp_path / "data" / "sub" / "link.png").symlink_to(tmp_path / "x.png")
    for folders_seen in (None, {}):  # (the same answers with the cache used for many files)
        assert path_inside(str(tmp_path / "data" / "sub" / "y.png"), str(tmp_path / "data"), "f", "e", folders_seen)
        for escape in ("../x.png", "sub/../../x.png", "../data2/x.png", "sub/link.png", "sub/../.."):  # (data2 shares "data")
            with pytest.raises(DataError, match=r"^f: e names .* outside the dataset folder"):
                path_inside(str(tmp_path / "data" / escape), str(tmp_path / "data"), "f", "e", folders_seen)


def test_streamed_rows_naming_images_outside_the_dataset_folder_are_refused(tmp_path, outside):
    """With --streaming the rows are checked as they are read (a stream cannot be read through first)."""
    from swin_hf.training.data import DataError, load_splits

    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (8, 8)).save(data / "inside.png")
    _path_only_parquet(data, [data / "inside.png"] * 3 + [outside])
    rows = iter(load_splits(str(data), streaming=True)["train"])
    assert [row["image"]["path"] for row in itertools.islice(rows, 3)] == [str(data / "inside.png")] * 3
    with pytest.raises(DataError, match=r"split 'train': column 'image', a streamed row names .*outside the dataset folder"):
        next(rows)


def test_a_weight_index_naming_shards_outside_the_model_folder_is_refused(tmp_path):
    """model.safetensors.index.json names its shards; one outside the model folder used to be read."""
    import torch
    from safetensors.torch import save_file
    from transformers.utils import cached_file

    from swin_hf.convert import _read_weights
    from swin_hf.training.data import DataError

    save_file({"w": torch.zeros(1)}, tmp_path / "outside.safetensors")
    model = tmp_path / "model"
    model.mkdir()
    save_file({"v": torch.ones(1)}, model / "shard.safetensors")
    for shard, refused in (("shard.safetensors", False), ("../outside.safetensors", True)):
        (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
        if refused:
            with pytest.raises(DataError, match=r"model\.safetensors\.index\.json: weight_map entry '\.\./outside\.safetensors' names"):
                _read_weights(str(model), {}, cached_file)
        else:
            assert set(_read_weights(str(model), {}, cached_file)) == {"v"}
