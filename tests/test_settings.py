"""Recipe settings declared once (swin_hf.training.settings): the command line, --config files and the
settings.json a run writes, for every recipe."""

import dataclasses
import json

import pytest
from safetensors.torch import load_file

from swin_hf.training.classification import ClassificationSettings, ClassificationTask, main as finetune_main
from swin_hf.training.settings import RecipeSettings, build_parser, parse_settings, shared_option_names

TINY = ["--max-steps", "2", "--max-train-samples", "64", "--max-eval-samples", "32", "--batch-size", "8", "--no-progress"]


def _parse(argv):
    return parse_settings(ClassificationSettings, [str(a) for a in argv], "finetune.py", "")


def _recipe_settings():
    from swin_hf.detection.train import DetectSettings
    from swin_hf.segmentation.train import SegmentSettings
    from swin_hf.training.simmim import SimMIMSettings
    from swin_hf.training.video import VideoSettings

    return {"finetune.py": ClassificationSettings, "segment.py": SegmentSettings, "detect.py": DetectSettings,
            "pretrain_simmim.py": SimMIMSettings, "finetune_video.py": VideoSettings}


def test_every_recipe_exposes_the_shared_options():
    """Each recipe's settings extend RecipeSettings, so each command line has every shared option (from the
    dataclass, not a hand-kept list), and each option has one line of help."""
    shared = {field.name for field in dataclasses.fields(RecipeSettings)}
    assert {"max_steps", "epochs", "grad_accum", "ema_decay", "checkpoint_every", "resume", "compile", "precision",
            "streaming", "config", "max_minutes"} <= shared
    for prog, cls in _recipe_settings().items():
        assert issubclass(cls, RecipeSettings)
        assert shared <= {field.name for field in dataclasses.fields(cls)}
        text = build_parser(cls, prog, "").format_help()
        for flag in shared_option_names():
            expected = "--no-progress" if flag == "--progress" else flag
            if flag != "--debug-record-ranks":
                assert expected in text, (prog, expected)
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), (prog, field.name)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "nan"], "argument --lr: expected a finite number > 0, got 'nan'"),
        (["--grad-accum", "0"], "argument --grad-accum: expected a whole number >= 1, got '0'"),
        (["--crop-scale", "0.9,0.1"], "argument --crop-scale: expected 'lo,hi' with 0 < lo <= hi <= 1"),
        (["--profile", "fast"], "argument --profile: expected one of auto, digits, finetune, got 'fast'"),
    ],
)
def test_a_bad_command_line_value_is_one_line_naming_the_option(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit:
        _parse(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and expected in err and err.count("\n") == 1 and "finetune.py --help" in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"lr": -1}', "lr: expected a finite number > 0, got -1"),
        ('{"grad-accum": 1.5}', "grad_accum: expected a whole number >= 1, got 1.5"),
        ('{"learning_rate": 0.1}', "unknown setting 'learning_rate' for ClassificationSettings"),
        ('{"lr": 0.1', "not valid JSON"),
        ('[1, 2]', "expected a mapping of setting names to values, got list"),
        ('{"compile": "maybe"}', "compile: expected true or false, got 'maybe'"),
    ],
)
def test_a_bad_settings_file_is_one_line_naming_the_file_and_setting(tmp_path, content, expected, capsys):
    path = tmp_path / "settings.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exit:
        _parse(["--config", path])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and expected in err and str(path) in err and err.count("\n") == 1


def test_settings_file_values_are_defaults_the_command_line_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text("lr: 0.01\nbatch-size: 4\ncrop_scale: [0.5, 0.9]\nprogress: false\n")
    settings = _parse(["--config", tmp_path / "run.yaml", "--batch-size", "8"])
    assert settings.lr == 0.01 and settings.batch_size == 8 and settings.crop_scale == (0.5, 0.9) and not settings.progress
    assert _parse(["--config", tmp_path / "run.yaml", "--no-progress"]).progress is False
    with pytest.raises(SystemExit):
        _parse(["--config", tmp_path / "missing.json"])


def test_auto_settings_are_filled_from_the_profile():
    digits = ClassificationTask.resolve(_parse([]))
    assert (digits.model, digits.lr, digits.epochs, digits.crop_scale) == ("swin-digits", 3e-3, 30, (0.75, 1.0))
    finetune = ClassificationTask.resolve(_parse(["--dataset", "org/set", "--lr", "1e-4"]))
    assert finetune.model == "microsoft/swin-tiny-patch4-window7-224" and finetune.lr == 1e-4 and finetune.mixup == 0.4


def test_a_run_saves_its_settings_and_config_reruns_it_exactly(tmp_path):
    """settings.json holds the resolved values ('auto' filled in); --config with it, into another folder,
    trains the same weights; a command-line option still overrides the file."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert finetune_main([*TINY, "--output-dir", str(first)]) == 0
    saved = json.loads((first / "settings.json").read_text())
    assert saved["model"] == "swin-digits" and saved["lr"] == 3e-3 and saved["max_steps"] == 2
    assert "resume" not in saved and "config" not in saved
    assert finetune_main(["--config", str(first / "settings.json"), "--output-dir", str(second)]) == 0
    a = load_file(first / "checkpoints" / "final-weights.safetensors")
    b = load_file(second / "checkpoints" / "final-weights.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert json.loads((second / "settings.json").read_text())["output_dir"] == str(second)
