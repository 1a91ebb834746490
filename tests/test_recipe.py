"""End-to-end tests of recipes/finetune.py on tiny data with a tiny Swin, on CPU, offline.

In-process runs cover the default dataset, imagefolders with odd images, and the output folder;
subprocess runs cover the launchers (fabric run with 2 DDP processes, accelerate launch) and
SIGKILL-and-resume equivalence.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import swin_hf
import torch
from PIL import Image

from swin_hf.training.launcher import free_port
from swin_hf.training.checkpoint import LOCK_FILE

sys.path.insert(0, os.path.dirname(__file__))
from recipe_resume import sigkill_and_resume  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SCRIPT = ROOT / "recipes" / "finetune.py"
TINY = ["--max-train-samples", "64", "--max-eval-samples", "40", "--batch-size", "8", "--no-progress", "--log-every", "1"]
OUTPUT_FILES = {
    "config.json",
    "settings.json",
    "model.safetensors",
    "preprocessor_config.json",
    "README.md",
    "metrics.json",
    "training_curves.png",
    "confusion_matrix.png",
}


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _main(args):
    from swin_hf.training.classification import main

    return main([str(a) for a in args])


def _run(cmd, timeout=600, **kwargs):
    result = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def test_default_dataset_few_steps_and_output_folder_loads_in_pipeline(tmp_path, capsys):
    out = tmp_path / "run"
    assert _main(["--output-dir", out, "--max-steps", 3, *TINY]) == 0
    printed = capsys.readouterr().out
    assert "validation top-1" in printed and "target" not in printed  # the target is for the full default run
    assert OUTPUT_FILES <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["num_classes"] == 10 and metrics["val_examples"] == 40
    assert 0.0 <= metrics["best_val_top1"] <= 1.0 and metrics["best_val_top5"] >= metrics["best_val_top1"]
    assert any("train_loss" in row for row in metrics["history"])
    assert (out / "logs" / "metrics.csv").exists() and list((out / "logs" / "tensorboard").glob("events.*"))
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: image-classification" in card and "sklearn-digits" in card
    assert "best_val_top1" in card and "| lr |" in card

    import swin_hf  # noqa: F401  (registers the Auto classes)
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label[3] == "3" and model.config.num_labels == 10
    assert AutoImageProcessor.from_pretrained(out).crop_size == {"height": 16, "width": 16}
    classifier = pipeline("image-classification", model=str(out))
    predictions = classifier(Image.new("L", (8, 8), 128), top_k=3)
    assert len(predictions) == 3 and {p["label"] for p in predictions} <= {str(i) for i in range(10)}


def _write(path, image, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)


def test_imagefolder_with_mixed_modes_and_a_corrupt_file(tmp_path, capsys):
    modes = [("L", "png"), ("RGBA", "png"), ("P", "png"), ("CMYK", "jpeg"), ("RGB", "jpeg")]
    for split, count in (("train", 6), ("val", 2)):
        for label, colour in (("cat", 40), ("dog", 200)):
            for i in range(count):
                mode, ext = modes[i % len(modes)]
                image = Image.new("RGB", (20 + i, 18), (colour, 255 - colour, i * 20)).convert(mode)
                _write(tmp_path / split / label / f"{i}.{ext}", image)
    broken = tmp_path / "train" / "dog" / "broken.png"
    good = tmp_path / "train" / "dog" / "0.png"
    broken.write_bytes(good.read_bytes()[:50])  # truncated PNG
    out = tmp_path / "run"
    args = ["--train-dir", tmp_path / "train", "--validation-dir", tmp_path / "val", "--model", "swin-digits",
            "--image-size", 16, "--epochs", 2, "--batch-size", 4, "--no-progress", "--output-dir", out,
            "--ema-decay", 0.9, "--grad-accum", 2]
    assert _main(args) == 0  # finetune profile: RandAugment, erasing, mixup/cutmix, layer decay all on
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_images"] == 1  # the broken file, counted once though both epochs read it
    assert "unreadable image(s) skipped" in printed
    assert metrics["train_examples"] == 13 and metrics["val_examples"] == 4 and metrics["num_classes"] == 2
    assert "best_val_top5" not in metrics  # fewer than 5 classes
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"}


def test_data_errors_stop_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    assert _main(["--label-column", "digit", "--output-dir", out, *TINY]) == 2
    assert "Label column 'digit' is not in the dataset" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_saved_datasetdict_directory(tmp_path):
    from swin_hf.training.data import digits_dataset_dict

    splits = digits_dataset_dict()
    import datasets

    saved = datasets.DatasetDict(train=splits["train"].select(range(48)))  # no validation split
    saved.save_to_disk(tmp_path / "saved")
    out = tmp_path / "run"
    assert _main(["--dataset", tmp_path / "saved", "--model", "swin-digits", "--profile", "digits",
                  "--validation-fraction", 0.25, "--max-steps", 2, "--output-dir", out, *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == 36 and metrics["val_examples"] == 12


@pytest.mark.slow
def test_two_process_ddp_with_fabric_run(tmp_path):
    out, record = tmp_path / "run", tmp_path / "ranks"
    # (its own port: fabric run's default, 29400, may be taken by another run on this machine)
    cmd = ["fabric", "run", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--main-port", str(free_port()),
           str(SCRIPT), "--output-dir", str(out), "--max-steps", "3", "--debug-record-ranks", str(record), "--ema-decay", "0.9", *TINY]
    result = _run(cmd)
    ranks = [json.loads((record / f"rank{r}-epoch0.json").read_text()) for r in range(2)]
    seen = [{i for batch in rank["indices"] for i in batch} for rank in ranks]
    assert len(seen[0]) == len(seen[1]) == 24 and not seen[0] & seen[1]  # different data per rank
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients were averaged: identical weights
    assert ranks[0]["first"] == ranks[1]["first"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["val_examples"] == 40  # eval gathered across ranks
    assert result.stdout.count("validation top-1") == 1  # only rank 0 reports
    code = {p.name for p in out.glob("*.py")}  # swin_hf's own modules, copied for trust_remote_code
    assert code and code <= {p.name for p in Path(swin_hf.__file__).parent.glob("*.py")}
    # (the lock file stays, empty and unlocked; the owner file goes with the lock: README, One run per folder)
    assert {p.name for p in out.iterdir()} - OUTPUT_FILES - code <= {"logs", "checkpoints", LOCK_FILE}


@pytest.mark.slow
def test_accelerate_launch_cpu(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--cpu", str(SCRIPT),
           "--output-dir", str(out), "--max-steps", "2", *TINY]
    result = _run(cmd)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and metrics["steps"] == 2
    assert "validation top-1" in result.stdout


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    common = [sys.executable, str(SCRIPT), "--max-train-samples", "48", "--max-eval-samples", "16",
              "--batch-size", "8", "--epochs", "2", "--checkpoint-every", "2", "--deterministic",
              "--no-progress", "--seed", "3", "--ema-decay", "0.9", "--grad-accum", "1"]
    full, resumed = sigkill_and_resume(common, tmp_path, _env())
    assert full["best_val_top1"] == resumed["best_val_top1"]


def test_finetune_from_a_saved_model_reheads_for_the_dataset_labels(tmp_path):
    from swin_hf import SwinConfig, SwinForImageClassification
    from swin_hf.training.classification import RECIPE_PRESETS

    pretrained = SwinForImageClassification(
        SwinConfig(**RECIPE_PRESETS["swin-digits"], num_labels=3, id2label={0: "x", 1: "y", 2: "z"})
    )
    pretrained.save_pretrained(tmp_path / "pretrained")
    out = tmp_path / "run"
    assert _main(["--model", tmp_path / "pretrained", "--profile", "digits", "--max-steps", 1, "--lr", 1e-9,
                  "--output-dir", out, *TINY]) == 0
    tuned = SwinForImageClassification.from_pretrained(out)
    assert tuned.config.num_labels == 10 and tuned.config.id2label[9] == "9"
    # the backbone came from the checkpoint (lr ~0: practically unchanged), the head is new
    torch.testing.assert_close(tuned.swin.embeddings.proj.weight, pretrained.swin.embeddings.proj.weight, atol=1e-6, rtol=0)
    assert tuned.classifier.weight.shape == (10, pretrained.config.hidden_size)
    assert json.loads((out / "metrics.json").read_text())["from_scratch"] is False


@pytest.mark.slow
def test_default_run_reaches_95_percent(tmp_path):
    """The README's main job, unchanged: `python recipes/finetune.py` (built-in digits, tiny Swin from
    scratch). Accuracy is asserted always; the < 5 minute target only on an unshared machine (load
    average below the core count), since wall time on a busy machine says nothing about the recipe."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = _run([sys.executable, str(SCRIPT), "--output-dir", str(tmp_path / "run"), "--no-progress"], timeout=3600)
    wall = time.perf_counter() - started
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    print(f"default run: top-1 {metrics['best_val_top1']:.2%} in {wall:.0f}s (load average at start {load:.1f})")
    assert metrics["best_val_top1"] >= 0.95
    assert "target >= 95% in < 5 min" in result.stdout
    if load < (os.cpu_count() or 2) - 0.5:
        assert wall < 300


def test_switches_gradient_checkpointing_bf16_and_accumulation(tmp_path):
    out = tmp_path / "run"
    assert _main(["--gradient-checkpointing", "--precision", "bf16-mixed", "--grad-accum", 2, "--max-steps", 2,
                  "--ema-decay", 0.99, "--layer-decay", 0.75, "--output-dir", out, *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2
