"""The five recipes on the one training loop: the same options behave the same way in each, and a run
killed after a mid-epoch checkpoint resumes to the weights of the run never interrupted."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from recipe_resume import sigkill_and_resume  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# each recipe's smallest run of its built-in data (a few tiny batches), as (script, main's module, options)
RECIPES = {
    "finetune": ("finetune.py", "swin_hf.training.classification",
                 ["--max-train-samples", "32", "--max-eval-samples", "16", "--batch-size", "8"]),
    "segment": ("segment.py", "swin_hf.segmentation.train",
                ["--image-size", "32", "--hidden-size", "16", "--max-train-samples", "16", "--max-eval-samples", "4",
                 "--batch-size", "4", "--num-overlays", "1"]),
    "segment_instance": ("segment.py", "swin_hf.segmentation.train",
                         ["--task", "instance", "--image-size", "64", "--hidden-size", "32", "--num-queries", "5",
                          "--decoder-layers", "2", "--train-num-points", "64", "--batch-size", "4", "--max-train-samples",
                          "16", "--max-eval-samples", "4", "--num-pictures", "1"]),
    "detect": ("detect.py", "swin_hf.detection.train",
               ["--image-size", "64", "--hidden-size", "32", "--num-queries", "10", "--decoder-layers", "2",
                "--batch-size", "4", "--max-train-samples", "16", "--max-eval-samples", "4", "--num-pictures", "1"]),
    "pretrain_simmim": ("pretrain_simmim.py", "swin_hf.training.simmim",
                        ["--max-train-samples", "40", "--max-eval-samples", "8", "--batch-size", "8"]),
    "finetune_video": ("finetune_video.py", "swin_hf.training.video",
                       ["--builtin-clips", "40,8", "--batch-size", "8"]),
}
# options every recipe shares, each set away from its default
SHARED = ["--grad-accum", "2", "--ema-decay", "0.5", "--checkpoint-every", "1", "--warmup-steps", "1", "--layer-decay", "0.9",
          "--max-minutes", "30", "--min-lr-ratio", "0.1", "--log-every", "1", "--eval-every-epochs", "1", "--no-progress",
          "--keep-checkpoints", "0", "--seed", "1", "--cpu-threads", "1", "--precision", "32-true"]


def _main(name):
    import importlib

    return importlib.import_module(RECIPES[name][1]).main


@pytest.mark.parametrize("name", list(RECIPES))
def test_the_shared_options_work_the_same_in_every_recipe(name, tmp_path):
    """Two optimiser steps of two micro-batches each, with EMA, a checkpoint after every step (mid-epoch),
    the warmup, layer decay and time limit: every recipe writes the same kind of folder (the model, the
    resolved settings, metrics.json with steps and the best evaluation, curves, card, a checkpoint per step,
    the final weights), and --resume to more steps continues from the last checkpoint."""
    _, _, options = RECIPES[name]
    out = tmp_path / "run"
    assert _main(name)([*options, *SHARED, "--max-steps", "2", "--output-dir", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "settings.json", "metrics.json", "README.md", "training_curves.png", "logs",
            "checkpoints"} <= names
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["grad_accum"], settings["ema_decay"], settings["checkpoint_every"], settings["max_steps"]) == (2, 0.5, 1, 2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["best_step"] == 2 and metrics["train_minutes"] >= 0
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "step-00000001.ckpt" in checkpoints and "final-weights.safetensors" in checkpoints
    # the saved settings rerun the same run (into another folder: the command line overrides the file)
    again = tmp_path / "again"
    assert _main(name)(["--config", str(out / "settings.json"), "--output-dir", str(again)]) == 0
    weights = [load_file(run / "checkpoints" / "final-weights.safetensors") for run in (out, again)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=0, msg=key)
    assert _main(name)([*options, *SHARED, "--max-steps", "3", "--output-dir", str(out), "--resume",
                        "--allow-changed-config", "max_steps"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_bad_value_is_one_line_naming_the_option_in_every_recipe(name, tmp_path, capsys):
    settings = tmp_path / "settings.yaml"
    settings.write_text("ema_decay: 1.5\n")
    assert _main(name)(["--grad-accum", "0"]) == 2
    assert _main(name)(["--config", str(settings)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "argument --grad-accum: expected a whole number >= 1, got '0'" in err[0]
    assert f"--config {settings}: ema_decay: expected a number from 0 up to 1 (1 excluded), got 1.5" in err[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["segment", "pretrain_simmim"])
def test_a_killed_run_resumes_to_the_uninterrupted_weights(name, tmp_path):
    """SIGKILL after a mid-epoch checkpoint, then --resume: the same final weights, to the bit, as the run
    never interrupted (finetune.py and detect.py have their own such tests with more of their options)."""
    script, _, options = RECIPES[name]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, str(ROOT / "recipes" / script), *options, "--epochs", "2", "--checkpoint-every", "1",
               "--ema-decay", "0.9", "--grad-accum", "2", "--no-progress", "--cpu-threads", "1"]
    sigkill_and_resume(command, tmp_path, env, checkpoint="step-00000002.ckpt")
