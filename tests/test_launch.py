"""Launching the recipes: the `lightning` command (installed by `pip install -e .`, handing over to
Lightning Fabric's launcher), concurrent runs on one machine, two nodes on one machine, FSDP2 on CPU
(gloo) against DDP, and what the processes print. All network use stays on 127.0.0.1 with ports chosen
at run time. CPU, offline, tiny models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from swin_hf.training.launcher import fabric_run_arguments, free_port, split_launch_arguments

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "finetune.py"
TINY = ["--max-train-samples", "64", "--max-eval-samples", "40", "--batch-size", "8", "--log-every", "1"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LT_", "MASTER_", "WORLD_SIZE", "RANK", "LOCAL_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _lightning(*args: str) -> list[str]:
    """`lightning ARGS` as the console script runs it (the same function, from this checkout)."""
    return [sys.executable, "-m", "swin_hf.training.launcher", *args]


def _finish(procs: list[subprocess.Popen], timeout: int = 600) -> list[tuple[str, str]]:
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            proc.kill()
        assert proc.returncode == 0, f"{proc.args} failed:\n{out[-3000:]}\n{err[-5000:]}"
        outputs.append((out, err))
    return outputs


# ------------------------------------------------------------------------------------------------
# The `lightning` command
# ------------------------------------------------------------------------------------------------


def test_lightning_run_arguments_become_fabric_run_arguments():
    port = lambda address: 41234  # noqa: E731
    script = ["recipes/finetune.py", "--lr", "1e-3", "--main-port", "7"]  # the script's own options stay its own
    assert fabric_run_arguments(["run", *script], port) == ["run", "--main-port", "41234", *script]
    assert fabric_run_arguments(["run", "model", "--devices", "2", *script], port) == [
        "run", "--devices", "2", "--main-port", "41234", *script]
    assert fabric_run_arguments(["run", "--main_port=99", *script], port) == ["run", "--main_port=99", *script]
    many = ["run", "--num-nodes", "2", "--node-rank", "1", "--main-address", "10.0.0.1", *script]
    assert fabric_run_arguments(many, port) == many  # several machines must agree on the port: Fabric's default
    assert fabric_run_arguments(["run", "--help"], port) == ["run", "--help"]
    options, given, rest = split_launch_arguments(["--accelerator=cpu", "--devices", "2", "x.py", "--devices", "3"])
    assert options == {"--accelerator": "cpu", "--devices": "2"} and rest == ["x.py", "--devices", "3"] and len(given) == 3
    assert 0 < free_port() < 65536


def test_the_package_installs_a_lightning_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lightning"] == "swin_hf.training.launcher:main"
    done = subprocess.run(_lightning("run", "model", "--help"), env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--main-port" in done.stdout and "SCRIPT" in done.stdout


# each script run as `python recipes/NAME.py --help` would run it (its folder first on sys.path, run as
# __main__), all in one interpreter: what is tested is the scripts' own start, not the imports they share
_RUN_SCRIPTS = """
import contextlib, io, json, os, runpy, sys
results = {}
for script in sys.argv[1:]:
    sys.path[0], sys.argv, out = os.path.dirname(script), [script, "--help"], io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code or 0
    results[os.path.basename(script)] = [code, out.getvalue()]
print(json.dumps(results))
"""


def test_every_recipe_script_runs_as_plain_python_from_a_checkout(tmp_path):
    scripts = sorted(str(p) for p in (ROOT / "recipes").glob("*.py") if not p.name.startswith("_"))
    assert {Path(s).name for s in scripts} == {"detect.py", "finetune.py", "finetune_video.py", "pretrain_simmim.py", "segment.py"}
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}  # the scripts find src/ themselves
    done = subprocess.run([sys.executable, "-c", _RUN_SCRIPTS, *scripts], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for name, (code, text) in results.items():
        assert code == 0 and "fabric run" in text and "--output-dir" in text, (name, text[-500:])
    assert "--bbox-format" in results["detect.py"][1] and "rt_detr" in results["detect.py"][1]


def test_the_launchers_thread_count_does_not_override_the_recipes(tmp_path, monkeypatch):
    """Fabric's launcher sets OMP_NUM_THREADS to CPUs / processes when the user has not: the digits profile's
    one thread still applies. An OMP_NUM_THREADS of the user's wins."""
    from swin_hf.training.classification import main
    from swin_hf.training.launcher import LAUNCHER_SET_THREADS

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        for from_launcher, expected in ((True, 1), (False, 2)):
            if from_launcher:
                monkeypatch.setenv(LAUNCHER_SET_THREADS, "1")
            else:
                monkeypatch.delenv(LAUNCHER_SET_THREADS)
            torch.set_num_threads(2)
            out = tmp_path / str(expected)
            assert main([str(a) for a in ["--output-dir", out, "--max-steps", 1, "--no-progress", *TINY]]) == 0
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_a_fresh_install_runs_two_single_device_launches_at_once(tmp_path):
    """README's `pip install -e ".[recipes]"` in a new environment puts `lightning` on its PATH; two
    `lightning run` launches started together (each without --main-port; `fabric run` would give both port
    29400) both finish. The environment is a plain venv with its own pip, and the install builds in pip's
    isolated build environment as a user's would, so no build tool of this machine's is assumed; it sees
    the installed packages (--system-site-packages) so that nothing large is downloaded."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e", f"{ROOT}[recipes]"],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    lightning = venv / "bin" / "lightning"
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    runs = [tmp_path / name for name in ("a", "b")]
    procs = [subprocess.Popen([str(lightning), "run", "model", "--accelerator", "cpu", str(SCRIPT), "--output-dir", str(out),
                               "--max-steps", "2", "--no-progress", *TINY], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for out in runs]
    for (out, _), run in zip(_finish(procs), runs):
        assert "validation top-1" in out and json.loads((run / "metrics.json").read_text())["steps"] == 2


# ------------------------------------------------------------------------------------------------
# Several machines (two nodes on this one), and what the processes print
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_nodes_of_one_process_train_identical_weights_and_report_once(tmp_path):
    out, record = tmp_path / "run", tmp_path / "ranks"
    port = str(free_port())
    procs = [subprocess.Popen(
        _lightning("run", "--accelerator", "cpu", "--devices", "1", "--num-nodes", "2", "--node-rank", str(node),
                   "--main-address", "127.0.0.1", "--main-port", port, str(SCRIPT), "--output-dir", str(out),
                   "--max-steps", "3", "--debug-record-ranks", str(record), "--ema-decay", "0.9", *TINY),
        env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    (out0, err0), (out1, err1) = _finish(procs)
    ranks = [json.loads((record / f"rank{r}-epoch0.json").read_text()) for r in range(2)]
    seen = [{i for batch in rank["indices"] for i in batch} for rank in ranks]
    assert len(seen[0]) == len(seen[1]) == 24 and not seen[0] & seen[1]  # each node its own part of the data
    assert ranks[0]["weights"] == ranks[1]["weights"] and ranks[0]["first"] == ranks[1]["first"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["strategy"] == "ddp" and metrics["images_per_s"] > 0
    # one report, one progress bar, one line per epoch: all from node 0
    assert out0.count("validation top-1") == 1 and "validation top-1" not in out1
    assert "2 processes (2 nodes x 1 process), strategy ddp" in err0 and "strategy ddp" not in err1
    assert "train:" in err0 and "train:" not in err1
    assert "epoch 1/1 (step 3/3): train loss" in out0 and "per process x 2" in out0 and "epoch 1/1" not in out1


# ------------------------------------------------------------------------------------------------
# Sharded training (FSDP2) on CPU
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fsdp_on_cpu_trains_exactly_as_ddp_and_saves_whole_tensors(tmp_path):
    """Two processes with --strategy fsdp (every Swin block sharded, gloo) and two with ddp, launched at the
    same time, each process streaming its own part of the data: the same final weights, best model and EMA;
    every saved tensor is whole (a checkpoint reads with weights_only=True into an unsharded model, the best
    model loads with from_pretrained), and the checkpoints hold both processes' stream positions."""
    from safetensors.torch import load_file

    from swin_hf import SwinForImageClassification

    runs = {strategy: tmp_path / strategy for strategy in ("fsdp", "ddp")}
    procs = [subprocess.Popen(
        _lightning("run", "--accelerator", "cpu", "--devices", "2", "--strategy", strategy, str(SCRIPT), "--output-dir",
                   str(out), "--max-steps", "6", "--streaming", "--steps-per-epoch", "3", "--ema-decay", "0.9",
                   "--deterministic", "--no-progress", *TINY),
        env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for strategy, out in runs.items()]
    (_, fsdp_err), _ = _finish(procs)
    assert "strategy fsdp (FSDP2)" in fsdp_err
    assert json.loads((runs["fsdp"] / "metrics.json").read_text())["strategy"] == "fsdp (FSDP2)"
    for name in ("checkpoints/final-weights.safetensors", "model.safetensors"):
        fsdp, ddp = load_file(runs["fsdp"] / name), load_file(runs["ddp"] / name)
        assert fsdp.keys() == ddp.keys()
        for key in ddp:
            torch.testing.assert_close(fsdp[key], ddp[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    model = SwinForImageClassification.from_pretrained(runs["fsdp"])
    configs = [json.loads((out / "config.json").read_text()) for out in runs.values()]
    assert configs[0]["auto_map"] == configs[1]["auto_map"] and configs[0]["architectures"] == ["SwinForImageClassification"]
    assert {p.name for p in runs["fsdp"].glob("*.py")} == {p.name for p in runs["ddp"].glob("*.py")}  # no FSDP code
    checkpoints = [torch.load(out / "checkpoints" / "step-00000003.ckpt", weights_only=True) for out in runs.values()]
    assert checkpoints[0]["stream"] == checkpoints[1]["stream"] and len(checkpoints[0]["stream"]) == 2
    for key, value in model.state_dict().items():
        assert checkpoints[0]["model"][key].shape == value.shape and checkpoints[0]["ema"]["shadow"][key].shape == value.shape
        torch.testing.assert_close(checkpoints[0]["ema"]["shadow"][key], checkpoints[1]["ema"]["shadow"][key], rtol=0, atol=1e-6)
    assert set(checkpoints[0]["optimizer"]["state"]) == set(checkpoints[1]["optimizer"]["state"])  # keyed by name in both
