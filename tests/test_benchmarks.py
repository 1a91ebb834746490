"""The benchmark harness runs end to end and reports what BENCHMARKS.md quotes. Nothing here is timed:
each run is one round of one step at batch 1, and only the report's structure and its non-timing
numbers (logit agreement, memory of checkpointing) are checked."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

THROUGHPUT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
ONE_STEP = ["--batch-size", "1", "--rounds", "1", "--iters", "1", "--warmup", "0"]


def _throughput(tmp_path, *args) -> dict:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(THROUGHPUT), *ONE_STEP, *args, "--json", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_bf16_inference_report(tmp_path):
    report = _throughput(tmp_path, "--mode", "infer", "--dtype", "bf16", "--no-memory", "--agreement-batches", "1")
    assert report["max_logits_diff"] < 1e-4  # same weights, same function (fp32)
    # transformers' fp32 baseline ran in the same rounds, and is reported apart from the timed rows
    assert set(report["timings"]) == {"ours", "transformers"}
    assert report["transformers_fp32_images_per_s"] > 0
    agreement = report["bf16_top1_agreement"]
    assert set(agreement) == {"ours", "transformers"} and all(0 <= a <= 1 for a in agreement.values())


@pytest.mark.slow
def test_training_report_with_checkpointing_measures_memory(tmp_path):
    report = _throughput(tmp_path, "--mode", "train", "--gradient-checkpointing")
    assert set(report["timings"]) == {"ours", "ours+ckpt", "transformers"}
    peaks = {name: m["step_peak_mib"] for name, m in report["memory"].items()}
    assert all(math.isfinite(p) and p > 0 for p in peaks.values()), peaks
    # Swin-T at batch 1: ~160 MiB per step without checkpointing, ~140 with (each in a fresh process)
    assert peaks["ours+ckpt"] < peaks["ours"], peaks


@pytest.mark.slow
def test_bf16_report_without_fp32_baseline_or_agreement(tmp_path):
    """The GPU suite's flags (benchmarks/gpu.sh): no transformers-fp32 row, no agreement check."""
    args = ("--mode", "infer", "--dtype", "bf16", "--no-memory", "--no-fp32-baseline", "--agreement-batches", "0")
    report = _throughput(tmp_path, *args)
    assert set(report["timings"]) == {"ours", "transformers"}
    assert report["transformers_fp32_images_per_s"] is None and report["bf16_top1_agreement"] is None


@pytest.mark.slow
def test_host_stand_in_report_with_a_plain_column(tmp_path):
    """The host stand-in (every model shrunk, batch 2, 1 thread) with ours once more with every speed path
    off; the shrunk models still share their weights."""
    report = _throughput(tmp_path, "--mode", "train", "--host-stand-in", "--plain-column")
    assert report["max_logits_diff"] < 1e-4
    assert list(report["timings"])[:3] == ["ours", "ours, plain", "transformers"]  # (then timm, if it imports)
    assert report["args"]["batch_size"] == 2 and report["args"]["threads"] == 1 and report["memory"] == {}


def test_plain_copy_has_every_path_off_and_leaves_the_model_alone():
    sys.path.insert(0, str(THROUGHPUT.parent))
    from throughput import plain_copy

    from swin_hf import FastPaths, SwinConfig, SwinForImageClassification

    model = SwinForImageClassification(SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4))
    model.set_fast_paths(skip_dropped_branches=True, mlp_tile_tokens=64)
    plain = plain_copy(model)
    assert plain.fast_paths == FastPaths.plain() and plain.swin.stages[0].blocks[0].fast_paths == FastPaths.plain()
    assert model.fast_paths.mlp_tile_tokens == 64 and model.swin.stages[0].blocks[0].fast_paths.mlp_tile_tokens == 64


@pytest.mark.slow
def test_fast_paths_benchmark_times_every_path_against_the_plain_model(tmp_path):
    """benchmarks/fast_paths.py at its smallest: one round of one step per variant, a tiny model."""
    script = THROUGHPUT.parent / "fast_paths.py"
    args = ["--model", "swin-tiny-patch4-window7-224", "--batch-size", "1", "--rounds", "1", "--warmup", "0"]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--modes", "infer-fp32", "train-bf16", "--host-stand-in"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "infer-fp32" in out and "train-bf16" in out and "torch " in out
    for name in ("plain", "onednn_products", "mlp_tile_tokens", "transformers"):
        assert name in out, name
    assert "skip_dropped_branches" in out.split("train-bf16")[1]  # inert in inference, timed in training
    assert "inference_group_size" not in out.split("train-bf16")[1]


@pytest.mark.slow
def test_host_work_on_the_meta_device():
    """host_meta.py runs every model on the meta device (shapes only): one row per implementation, each
    with the operators one training step dispatches."""
    script = THROUGHPUT.parent / "host_meta.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", "1", "--iters", "1", "--batch-size", "2"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines()[2:]:
        name, ms, ops, ratio = line.rsplit(maxsplit=3)
        rows[name.strip()] = (float(ms), int(ops), ratio)
    assert {"ours", "transformers"} <= set(rows)
    assert all(ms > 0 and ops > 1000 for ms, ops, _ in rows.values()), rows
    assert rows["transformers"][2] == "1.00x"


@pytest.mark.slow
def test_swinv2_runs_against_transformers_swinv2(tmp_path):
    """--model swinv2-...: ours and transformers' Swinv2 with the same weights (stand-in sizes, one step)."""
    report = _throughput(tmp_path, "--model", "swinv2-tiny-patch4-window8-256", "--mode", "train", "--host-stand-in")
    assert report["max_logits_diff"] < 1e-4
    assert set(report["timings"]) == {"ours", "transformers"}


@pytest.mark.slow
def test_serving_benchmark_checks_every_form_and_says_where_the_time_goes():
    """benchmarks/serving.py at its smallest (a tiny model, one round): every form's logits are compared
    with transformers' fp32, every row and the roofline line are printed, and --profile's table of kinds
    covers the optimized form's time."""
    script = THROUGHPUT.parent / "serving.py"
    args = ["--smoke", "--batch-sizes", "2", "--variants", "freezing,no-compile", "--profile"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    diffs = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "max |logits - transformers fp32|" in line]
    assert len(diffs) == 4 and max(diffs) < 0.05, out  # fp32 eager, best (bf16 or fp32), ours x2
    for row in ("transformers fp32", "transformers best", "ours optimized", "ours no-compile", "roofline"):
        assert row in out.split("batch 2:")[1], row
    table = out.split("where ours optimized spends")[1]
    products = next(line for line in table.splitlines() if line.strip().startswith("products"))
    assert float(products.split()[-2]) > 0  # the products were seen under the profiler
    assert "the same call untimed" in table


def test_detection_step_benchmark_times_every_variant_on_the_same_batches():
    """benchmarks/detection_step.py at its smallest: one line per variant, the first at 1.00x; a setting that
    is not detect.py's is refused."""
    script = THROUGHPUT.parent / "detection_step.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--variants", "denoising_queries=10,denoising_queries=0"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if "s a step" in line]
    assert [row.split()[0] for row in rows] == ["denoising_queries=10", "denoising_queries=0"], done.stdout
    assert rows[0].rstrip().endswith("1.00x the first") and "commit" in done.stdout
    refused = subprocess.run([sys.executable, str(script), "--smoke", "--variants", "queries=3"], capture_output=True,
                             text=True)
    assert refused.returncode != 0 and "'queries' is not a detect.py setting" in refused.stderr
