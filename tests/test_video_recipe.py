"""recipes/finetune_video.py end to end on tiny settings (CPU, offline): the built-in moving-digits set, the output
folder in the video-classification pipeline, inflation of a 2D checkpoint, refused input, kill-and-resume, and
(slow) the default run's target."""

import json
import logging
import os
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from recipe_resume import sigkill_and_resume  # noqa: E402

from swin_hf import (  # noqa: E402
    SwinConfig,
    SwinForImageClassification,
    VideoSwinClassificationPipeline,
)
from swin_hf.training.video import (  # noqa: E402
    DIRECTIONS,
    TARGET_MINUTES,
    TARGET_TOP1,
    main,
    moving_digits,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--builtin-clips", "48,16", "--batch-size", "8", "--no-progress", "--cpu-threads", "1", "--precision", "32-true"]


def test_the_builtin_set_needs_time_to_tell_its_classes():
    """Every frame's digit position is uniform whatever the direction (the canvas wraps); the displacement between
    two frames is the label's direction."""
    videos, labels = moving_digits(400, frames=8, size=32, seed=3, noise=0.0)
    assert videos.shape == (400, 8, 32, 32) and videos.dtype == np.uint8 and set(labels) == {0, 1, 2, 3}

    def shift(a, b):  # (dy, dx) rolling frame a onto frame b best
        scores = {(dy, dx): float((np.roll(a, (dy, dx), (0, 1)).astype(float) * b).sum())
                  for dy in range(-3, 4) for dx in range(-3, 4)}
        return max(scores, key=scores.get)

    for video, label in zip(videos[:20], labels[:20]):
        dy, dx = shift(video[0], video[1])
        assert {(0, 1): "right", (0, -1): "left", (1, 0): "down", (-1, 0): "up"}[(int(np.sign(dy)), int(np.sign(dx)))] \
            == DIRECTIONS[label]
    # any one frame's picture says nothing of the class: each class's mean first frame is nearly flat (a digit that
    # sat in one place per class would leave its mean image as uneven as a single frame, ratio ~1)
    single = videos[:, 0].astype(float).reshape(len(videos), -1).std(1).mean()
    for c in range(4):
        assert videos[labels == c][:, 0].astype(float).mean(0).std() < 0.2 * single


def test_a_short_run_saves_a_folder_the_video_pipeline_answers_like_the_evaluation(tmp_path):
    from transformers import pipeline

    from swin_hf.training.video import VideoClips

    out = tmp_path / "run"
    assert main([*TINY, "--max-steps", "3", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and 0.0 <= metrics["best_val_top1"] <= 1.0 and metrics["from_scratch"] is True
    assert metrics["frames"] == 8 and metrics["val_examples"] == 16 and metrics["train_examples"] == 48
    assert (out / "confusion_matrix.png").exists() and (out / "training_curves.png").exists()
    card = (out / "README.md").read_text()
    assert "pipeline_tag: video-classification" in card and "VideoSwinClassificationPipeline" in card
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "video_swin_hf" and config["num_frames"] == 8 and config["image_size"] == 32

    classifier = pipeline("video-classification", model=str(out), pipeline_class=VideoSwinClassificationPipeline)
    videos, labels = moving_digits(2, seed=11)
    frames = [Image.fromarray(f, mode="L") for f in videos[0]]
    answer = classifier(frames, top_k=4)
    assert sorted(a["label"] for a in answer) == sorted(DIRECTIONS)
    assert abs(sum(a["score"] for a in answer) - 1.0) < 1e-4
    # the pipeline classifies a list of frames exactly as the recipe evaluated its clips
    model, processor = classifier.model.eval(), classifier.image_processor
    split = datasets.Dataset.from_dict({"video": [frames], "label": [int(labels[0])]},
                                       features=datasets.Features({"video": datasets.Sequence(datasets.Image()),
                                                                   "label": datasets.ClassLabel(names=list(DIRECTIONS))}))
    clip = VideoClips(split, "video", "label", processor, 8, 1, "test")[0][0]
    with torch.no_grad():
        probabilities = model(pixel_values=clip[None]).logits.softmax(-1)[0]
    for a in answer:
        assert abs(a["score"] - float(probabilities[model.config.label2id[a["label"]]])) < 1e-5


def test_a_2d_image_checkpoint_is_inflated_and_said_so(tmp_path, caplog):
    image = SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                  num_heads=[1, 2], window_size=4, num_labels=3))
    image.save_pretrained(tmp_path / "image")
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="swin_hf.training.video"):
        assert main([*TINY, "--model", str(tmp_path / "image"), "--max-steps", "1", "--lr", "1e-9",
                     "--output-dir", str(out)]) == 0
    assert any("inflating it to Video Swin" in r.getMessage() for r in caplog.records)
    assert json.loads((out / "metrics.json").read_text())["from_scratch"] is False
    from safetensors.torch import load_file

    video = load_file(out / "model.safetensors")
    kernel = image.state_dict()["swin.embeddings.proj.weight"]  # (16, 3, 4, 4)
    assert video["swin.embeddings.proj.weight"].shape == (16, 3, 2, 4, 4)
    torch.testing.assert_close(video["swin.embeddings.proj.weight"][:, :, 0], kernel.detach() / 2, rtol=0, atol=1e-6)


def _saved(tmp_path, rows: dict, features) -> str:
    folder = str(tmp_path / "data")
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict(train=split, validation=split).save_to_disk(folder)
    finally:
        datasets.enable_progress_bars()
    return folder


FRAMES = datasets.Sequence(datasets.Image())
LABEL = datasets.ClassLabel(names=["a", "b"])


def _frames(n):
    return [Image.fromarray(np.full((16, 16), 30 * i, np.uint8)) for i in range(n)]


@pytest.mark.parametrize(
    ("rows", "features", "expected"),
    [
        ({"video": [_frames(8), _frames(3)], "label": [0, 1]}, datasets.Features(video=FRAMES, label=LABEL),
         "row 1 has 3 frame(s), fewer than a clip of --frames 8 needs (8)"),
        ({"video": [_frames(8), _frames(8)], "target": [0, 1]}, datasets.Features(video=FRAMES, target=LABEL),
         "has no column 'label' (columns: ['video', 'target']); name the right one with --label-column"),
        ({"video": [_frames(8), _frames(8)], "label": [0, 1]}, datasets.Features(video=FRAMES, label=datasets.Value("int64")),
         "--label-column 'label' is a Value, not a ClassLabel"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(tmp_path, capsys, rows, features, expected):
    folder = _saved(tmp_path, rows, features)
    assert main([*TINY, "--dataset", folder, "--max-steps", "1", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_video_files_without_pyav_are_refused_naming_pyav(tmp_path, capsys):
    try:
        import av  # noqa: F401

        pytest.skip("PyAV is installed here")
    except ImportError:
        pass
    folder = _saved(tmp_path, {"video": ["a.mp4", "b.mp4"], "label": [0, 1]},
                    datasets.Features(video=datasets.Value("string"), label=LABEL))
    assert main([*TINY, "--dataset", folder, "--max-steps", "1", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read with PyAV, not installed here: `pip install av`" in err[0]


def test_the_model_option_refuses_an_image_preset(tmp_path, capsys):
    assert main([*TINY, "--model", "swin-tiny-patch4-window7-224", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "is an image preset" in err and "video-swin-tiny" in err


def test_streaming_reads_the_builtin_set_as_a_stream(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--streaming", "--max-steps", "2", "--steps-per-epoch", "1", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["streaming"] is True and metrics["steps"] == 2 and metrics["epochs"] == 2 and metrics["val_examples"] == 16


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, str(ROOT / "recipes" / "finetune_video.py"), *TINY, "--epochs", "2", "--checkpoint-every",
               "1", "--ema-decay", "0.9", "--grad-accum", "2"]
    full, resumed = sigkill_and_resume(command, tmp_path, env, checkpoint="step-00000002.ckpt")
    assert full["best_val_top1"] == resumed["best_val_top1"] and full["steps"] == resumed["steps"] == 6


@pytest.mark.slow
def test_the_default_run_reaches_its_target(tmp_path):
    """`python recipes/finetune_video.py` with no option: >= 90% validation top-1 within 10 minutes of training."""
    out = tmp_path / "run"
    assert main(["--no-progress", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_val_top1"] >= TARGET_TOP1 and metrics["train_time_s"] <= 60 * TARGET_MINUTES, metrics
