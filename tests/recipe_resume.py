"""Test helper for the recipe tests: a run killed with SIGKILL at a checkpoint and continued with --resume
ends with exactly the weights of the same run never interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _finished(command: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def sigkill_and_resume(command: list[str], folder: Path, env: dict, checkpoint: str = "step-*.ckpt",
                       timeout: int = 600) -> tuple[dict, dict]:
    """Run the recipe `command` (a command line with every option but --output-dir) twice from the
    repository root: into folder/full uninterrupted, and into folder/killed, killed with SIGKILL as soon as
    its checkpoints/ holds a file matching `checkpoint` and then run again with --resume. Asserts that the
    kill came before the run finished (no metrics.json yet), that the resumed run said it resumed, and that
    both runs end with the same final weights to the bit. Returns both metrics.json (uninterrupted,
    resumed) for the recipe's own comparisons."""
    from safetensors.torch import load_file

    full, killed = folder / "full", folder / "killed"
    _finished([*command, "--output-dir", str(full)], env, timeout)
    proc = subprocess.Popen([*command, "--output-dir", str(killed)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None and not list((killed / "checkpoints").glob(checkpoint)):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (killed / "metrics.json").exists()
    assert "Resumed from" in _finished([*command, "--output-dir", str(killed), "--resume"], env, timeout).stdout

    weights = [load_file(run / "checkpoints" / "final-weights.safetensors") for run in (full, killed)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=0, atol=0, msg=key)
    return tuple(json.loads((run / "metrics.json").read_text()) for run in (full, killed))
