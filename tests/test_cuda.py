"""On a CUDA GPU the model computes what the CPU-tested code does.

CI has no GPU, so these are skipped there (and reported as skipped). On a GPU machine:
`python -m pytest tests/test_cuda.py` (seconds). What differs on CUDA: attn_implementation "auto" runs the
spelled-out attention there, no speed path of fast_paths.py runs (each is for CPU tensors), stochastic
depth multiplies by a mask, and autocast runs softmax in fp32 unless told the dtype.
"""

import sys
from pathlib import Path

import pytest
import torch

from swin_hf import convert_state_dict
from swin_reference import TINY, images, reference_pair
from test_fast_paths import attention_dtypes_kept_for_backward
from test_parity import TOL, _gradients

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import full_fp32  # noqa: E402 - the harness's own switch, so that both mean the same

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def true_fp32():
    """No TF32 in fp32 products and convolutions: the comparisons are about the code, not the rounding."""
    with full_fp32():
        yield


def _pair(**overrides):
    theirs, ours = reference_pair(dict(TINY, num_labels=3, **overrides))
    return theirs.cuda(), ours.cuda()


def test_logits_and_gradients_match_transformers():
    theirs, ours = _pair()
    x, labels = images(2, 64, 64).cuda(), torch.tensor([0, 2]).cuda()
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, **TOL)
    theirs_grads = convert_state_dict(_gradients(theirs, x, labels), source="transformers")
    for name, grad in _gradients(ours, x, labels).items():
        torch.testing.assert_close(grad, theirs_grads[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("autocast", [False, True])
def test_every_attention_implementation_gives_the_same_logits(autocast):
    _, ours = _pair()
    x = images(4, 64, 64).cuda()
    outputs = []
    for implementation in ("auto", "eager", "sdpa"):
        ours.set_attn_implementation(implementation)
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            outputs.append(ours(x).logits.float())
    tol = dict(atol=3e-2, rtol=3e-2) if autocast else TOL
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], **tol)


def test_auto_attention_is_spelled_out_on_cuda():
    _, ours = _pair()
    with torch.profiler.profile() as prof, torch.inference_mode():
        ours(images(1, 64, 64).cuda())
    ops = {event.key for event in prof.key_averages()}
    assert "aten::scaled_dot_product_attention" not in ops and "aten::_softmax" in ops


def test_bf16_training_keeps_no_fp32_attention_probabilities_on_cuda():
    """CUDA's autocast runs softmax in fp32 unless its dtype is given; the spelled-out attention gives it,
    so the probabilities stay bf16 there too, kept once for backward."""
    square = attention_dtypes_kept_for_backward("cuda")
    assert square and all(dtype == torch.bfloat16 for dtype in square), square


def test_stochastic_depth_on_cuda_keeps_the_expected_value():
    """On CUDA a dropped branch is multiplied by zero, a kept one by 1/(1-p): the mean over many draws
    is the branch itself."""
    _, ours = _pair(drop_path_rate=0.5)
    block = ours.swin.stages[0].blocks[1].train()
    block.drop_path = 0.25
    x = torch.zeros(4096, 3, device="cuda")
    out = block.residual(x, lambda t: torch.ones_like(t))
    kept = out[:, 0] != 0
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.03


def test_a_bf16_training_step_never_waits_for_the_device():
    """A training step (autocast forward, backward, fused AdamW) issues its work without ever waiting for
    the GPU: a wait would leave the GPU idle while the host catches up (an H200 step at batch 64 took
    68 ms for 32 ms of kernels, BENCHMARKS.md "GPU"). In sync debug mode "error", any wait raises and
    names the operation."""
    _, ours = _pair(drop_path_rate=0.2)  # stochastic depth's mask path included
    ours.train()
    optimizer = torch.optim.AdamW(ours.parameters(), fused=True)
    x, labels = images(4, 64, 64).cuda(), torch.tensor([0, 1, 2, 0]).cuda()

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            loss = ours(x, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step builds the cached window geometry and the optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
