"""--streaming: data read as it is used, from local parquet, arrow, webdataset and image files made here
(the same code reads the Hub). Each process reads its own part, the position in the stream is resumable
(exactly, after SIGKILL), validation is bounded, and memory stays flat however large the data.
CPU, offline, tiny models.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from swin_hf.training.streaming import StreamReader, start_position

sys.path.insert(0, os.path.dirname(__file__))
from recipe_resume import sigkill_and_resume  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "finetune.py"
TINY = ["--batch-size", "8", "--no-progress", "--log-every", "2", "--max-eval-samples", "16"]
FEATURES = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _main(args) -> int:
    from swin_hf.training.classification import main

    return main([str(a) for a in args])


def _digits(count: int, offset: int = 0) -> datasets.Dataset:
    """`count` of scikit-learn's digits (as 8x8 grey PNG images with ClassLabel labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = range(offset, offset + count)
    images = [Image.fromarray(np.uint8(digits.images[i % len(digits.images)] * 255 / 16), mode="L") for i in rows]
    return datasets.Dataset.from_dict({"image": images, "label": [int(digits.target[i % len(digits.images)]) for i in rows]},
                                      features=FEATURES)


def _write(fmt: str, folder: Path, train: int = 96, validation: int = 24) -> list[str]:
    """Files of `fmt` in `folder` (train split in 4 shards, validation in 1); returns the recipe's options."""
    splits = {"train": _digits(train), "validation": _digits(validation, offset=train)}
    if fmt == "parquet":
        folder.mkdir()
        for name, split in splits.items():
            shards = 4 if name == "train" else 1
            for i in range(shards):
                split.shard(shards, i).to_parquet(folder / f"{name}-{i:05d}-of-{shards:05d}.parquet")
        return ["--dataset", folder]
    if fmt == "arrow":  # a saved DatasetDict (arrow files), cut into shards to stream
        datasets.DatasetDict(splits).save_to_disk(folder)
        return ["--dataset", folder]
    if fmt == "webdataset":  # tar shards of (PNG, class index) samples, as webdataset writes them
        folder.mkdir()
        for name, split in splits.items():
            shards = 4 if name == "train" else 1
            for s in range(shards):
                with tarfile.open(folder / f"{name}-{s:04d}.tar", "w") as tar:
                    for i, row in enumerate(split.shard(shards, s)):
                        png = io.BytesIO()
                        row["image"].save(png, format="PNG")
                        for suffix, payload in (("png", png.getvalue()), ("cls", str(row["label"]).encode())):
                            info = tarfile.TarInfo(f"{name}{s}_{i:05d}.{suffix}")
                            info.size = len(payload)
                            tar.addfile(info, io.BytesIO(payload))
        return ["--dataset", folder, "--label-column", "cls", "--label-names", ",".join(str(i) for i in range(10))]
    # imagefolder: class sub-folders of image files
    for name, split in splits.items():
        for i, row in enumerate(split):
            (folder / name / str(row["label"])).mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / name / str(row["label"]) / f"{i:05d}.png")
    return ["--train-dir", folder / "train", "--validation-dir", folder / "validation"]


# ------------------------------------------------------------------------------------------------
# The reader: every process its own part, and a position that resumes exactly
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_each_process_reads_its_own_part_and_resumes_at_any_position(world_size):
    """6 shards of 60 examples: with 1 or 2 processes whole shards are dealt out, with 4 (6 is not a multiple)
    every 4th example; together the processes read every example of a pass once. From the position after
    any example, a new reader continues with exactly the examples that followed."""
    stream = datasets.Dataset.from_dict({"n": list(range(60))}).to_iterable_dataset(num_shards=6)
    seen = []
    for rank in range(world_size):
        reader = StreamReader(stream, rank, world_size, seed=3, shuffle_block=7)
        share = 60 // world_size
        read = list(itertools.islice(reader.examples(start_position()), share + 10))  # into the second pass
        first_pass = [row["n"] for row, _ in read[:share]]
        assert first_pass != sorted(first_pass)  # shuffled
        seen += first_pass
        for cut in (0, 6, 7, share - 1, share + 3):
            again = StreamReader(stream, rank, world_size, seed=3, shuffle_block=7)
            continued = [row["n"] for row, _ in itertools.islice(again.examples(read[cut][1]), 5)]
            assert continued == [row["n"] for row, _ in read[cut + 1 : cut + 6]], (rank, cut)
    assert sorted(seen) == list(range(60))


def test_positions_are_plain_values_for_weights_only_checkpoints(tmp_path):
    stream = datasets.Dataset.from_dict({"n": list(range(20))}).to_iterable_dataset(num_shards=2)
    _, position = next(itertools.islice(StreamReader(stream, shuffle_block=4).examples(start_position()), 5, 6))
    torch.save({"stream": [position]}, tmp_path / "position.pt")
    assert torch.load(tmp_path / "position.pt", weights_only=True)["stream"] == [position]


# ------------------------------------------------------------------------------------------------
# The recipes on streamed files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "webdataset", "imagefolder"])
def test_finetune_streams_local_files(fmt, tmp_path, capsys):
    source = _write(fmt, tmp_path / fmt)
    out = tmp_path / "run"
    assert _main([*source, "--streaming", "--max-steps", 4, "--steps-per-epoch", 2, "--model", "swin-digits",
                  "--profile", "digits", "--output-dir", out, *TINY]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["streaming"] is True and metrics["steps"] == 4 and metrics["epochs"] == 2
    assert metrics["val_examples"] == 16 and metrics["num_classes"] == 10  # the bounded validation stream
    assert "train_examples" not in metrics  # a stream's length is not known
    printed = capsys.readouterr().out
    assert printed.count("epoch ") >= 2 and "images/s" in printed
    checkpoint = torch.load(next((out / "checkpoints").glob("step-*.ckpt")), weights_only=True)
    assert len(checkpoint["stream"]) == 1 and checkpoint["stream"][0]["offset"] > 0


def test_streaming_errors_are_one_line(tmp_path, capsys):
    assert _main(["--streaming", "--output-dir", tmp_path / "a", *TINY]) == 2
    assert "error: --streaming needs --max-steps" in capsys.readouterr().err
    assert _main(["--steps-per-epoch", 3, "--output-dir", tmp_path / "b", *TINY]) == 2
    assert "error: --steps-per-epoch is for --streaming runs" in capsys.readouterr().err
    only_train = tmp_path / "only-train"
    only_train.mkdir()
    _digits(16).to_parquet(only_train / "train-00000-of-00001.parquet")
    digits = ["--model", "swin-digits", "--profile", "digits", *TINY]
    assert _main(["--dataset", only_train, "--streaming", "--max-steps", 2, "--output-dir", tmp_path / "c", *digits]) == 2
    assert "--streaming needs a training and a validation split" in capsys.readouterr().err
    wds = _write("webdataset", tmp_path / "wds", train=16, validation=8)[:2]  # no --label-names
    assert _main([*wds, "--label-column", "cls", "--streaming", "--max-steps", 2, "--output-dir", tmp_path / "d", *digits]) == 2
    assert "pass --label-names" in capsys.readouterr().err


def test_segmentation_streams_and_resumes_at_its_position(tmp_path):
    """The segmentation recipe takes the same streaming path; a resumed run continues from the saved position."""
    from swin_hf.segmentation.train import main as segment_main

    seg = ["--streaming", "--steps-per-epoch", 2, "--batch-size", 4, "--image-size", 32, "--hidden-size", 32,
           "--max-eval-samples", 4, "--num-overlays", 1, "--no-progress", "--accelerator", "cpu", "--devices", 1]
    out = tmp_path / "seg"  # (a run's last step writes no checkpoint: the first epoch's end, step 2, is resumed)
    assert segment_main([str(a) for a in ["--max-steps", 4, "--output-dir", out, *seg]]) == 0
    saved = torch.load(out / "checkpoints" / "step-00000002.ckpt", weights_only=True)["stream"][0]
    assert saved["offset"] == 8 or saved["block"] > 0  # 2 steps of 4 examples taken
    assert segment_main([str(a) for a in ["--max-steps", 6, "--output-dir", out, "--resume",
                                          "--allow-changed-config", "max_steps,epochs", *seg]]) == 0
    resumed = torch.load(out / "checkpoints" / "step-00000004.ckpt", weights_only=True)["stream"][0]
    assert (resumed["pass"], resumed["block"], resumed["offset"]) == (0, 0, 16)  # 8 more, after the first 8
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6


def test_simmim_streams_validates_on_the_head_of_the_stream_and_resumes_at_its_position(tmp_path):
    """SimMIM's validation is the first --max-eval-samples images of the stream, which training skips; a
    resumed run continues from the saved position."""
    from swin_hf.training.simmim import main as simmim_main

    out = tmp_path / "simmim"
    simmim = ["--streaming", "--batch-size", 8, "--max-eval-samples", 16, "--log-every", 1, "--output-dir", out,
              "--no-progress", "--accelerator", "cpu", "--devices", 1]
    assert simmim_main([str(a) for a in ["--max-steps", 3, "--checkpoint-every", 2, *simmim]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and len([row for row in metrics["history"] if "train_loss" in row]) == 3
    assert metrics["val_examples"] == 16 and metrics["best_val_loss"] > 0  # the first 16 images of the stream
    assert (out / "reconstructions.png").exists() and (out / "README.md").exists()
    saved = torch.load(out / "checkpoints" / "step-00000002.ckpt", weights_only=True)["stream"][0]
    assert saved["offset"] == 16 or saved["block"] > 0  # 2 steps of 8 taken after the skipped validation images
    assert simmim_main([str(a) for a in ["--max-steps", 4, "--resume", "--allow-changed-config", "max_steps,epochs",
                                          *simmim]]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


# ------------------------------------------------------------------------------------------------
# SIGKILL and --resume: the same weights as a run never interrupted
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_streamed_run_killed_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    source = [str(a) for a in _write("parquet", tmp_path / "data", train=120)]
    common = [sys.executable, str(SCRIPT), *source, "--streaming", "--max-steps", "9", "--steps-per-epoch", "3",
              "--checkpoint-every", "2", "--shuffle-block", "10", "--deterministic", "--seed", "5",
              "--model", "swin-digits", "--profile", "digits", "--ema-decay", "0.9", *TINY]
    sigkill_and_resume(common, tmp_path, _env(), checkpoint="step-*4.ckpt")


# ------------------------------------------------------------------------------------------------
# Memory: flat however large the data
# ------------------------------------------------------------------------------------------------

MEASURE = textwrap.dedent("""
    import resource, sys
    import datasets
    from lightning.fabric import Fabric
    from swin_hf import SwinImageProcessor
    from swin_hf.training.data import ClassificationRows
    from swin_hf.training.streaming import StreamLoader, undecoded
    from swin_hf.training.classification import PreprocessCache

    folder, block, first, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    split = datasets.load_dataset(folder, split="train", streaming=True)
    fabric = Fabric(accelerator="cpu", devices=1)
    rows = ClassificationRows("image", "label", PreprocessCache(SwinImageProcessor.for_image_size(64, crop_pct=1.0), False), 10)
    loader = StreamLoader(fabric, undecoded(split, ["image"]), rows, batch_size=32, batches_per_epoch=10**9, shuffle_block=block)
    taken, peaks = 0, []
    for batch in loader:
        taken += len(batch["labels"])
        if taken in (first, total):
            peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        if taken >= total:
            break
    print(taken, *peaks)
""")


@pytest.mark.slow
def test_memory_stays_flat_over_data_forty_times_the_shuffle_block(tmp_path):
    """Peak RSS after 320 examples of a stream of 8 parquet shards of 500 64x64 images, and after a whole
    pass and a half (6400 examples, 64 shuffle blocks of 100; ~50 MB of PNGs a pass, ~300 MB as the decoded
    tensors): the same within the allocator's noise, where keeping what was read would add hundreds of MB."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    for shard in range(8):
        images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(500)]
        datasets.Dataset.from_dict({"image": images, "label": [i % 10 for i in range(500)]}, features=features) \
            .to_parquet(tmp_path / f"train-{shard:05d}-of-00008.parquet")
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path), "100", "320", "6400"], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    taken, early, late = map(int, done.stdout.split()[-3:])
    assert taken == 6400 and late - early < 40, (early, late)  # MiB


def test_simmim_training_stream_skips_exactly_the_validation_images():
    """Validation (the head of the stream) and the training stream together are the split, each image once."""
    from lightning.fabric import Fabric

    from swin_hf.training.data import load_splits
    from swin_hf.training.settings import parse_settings
    from swin_hf.training.simmim import SimMIMSettings, SimMIMTask

    settings = SimMIMTask.resolve(parse_settings(SimMIMSettings, ["--streaming", "--max-steps", "1", "--max-eval-samples",
                                                                  "16"], "pretrain_simmim.py", ""))
    data = SimMIMTask(settings).load_data(Fabric(accelerator="cpu", devices=1))
    validation = [data.validation.split[i]["image"]["bytes"] for i in range(len(data.validation))]
    train = [row["image"]["bytes"] for row in data.train]
    whole = [row["image"]["bytes"] for row in load_splits(streaming=True)["train"].decode(False)]
    assert len(validation) == 16 and len(train) == len(whole) - 16
    assert validation == whole[:16] and sorted(validation + train) == sorted(whole)
