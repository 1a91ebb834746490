"""The speed paths (swin_hf/fast_paths.py) compute what the plain model computes, are set per model, keep
no state, and call the modules they stand in for.

The test models are small, so their products fall under `onednn_min_macs` and their maps under any tile
or group size; the `ALL_ON` settings lower every threshold so that each path really runs."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import swin_hf.fast_paths as fast_paths
from swin_hf import FastPaths, SwinConfig, SwinForImageClassification, convert_state_dict
from swin_hf.fast_paths import CpuFeatures, TokenLinear, in_token_tiles, residual_on_kept_samples, sample_groups, token_linear
from swin_reference import TINY, images, reference_pair
from test_parity import CASES, TOL, _gradients

ONEDNN = fast_paths._TOKEN_LINEAR is not None  # x86 CPUs with oneDNN
# every path on, every threshold low enough for the tiny models (TINY at 64x64: 2048 tokens in stage 1)
ALL_ON = FastPaths(
    onednn_products=ONEDNN, onednn_min_macs=0, mlp_tile_tokens=300, inference_group_size=2 * 32 * 32 * 16,
    skip_dropped_branches=True,
)  # fmt: skip


def with_paths(model, paths=ALL_ON):
    model.set_fast_paths(paths)
    return model


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------


def test_settings_reach_every_module_and_stay_per_model():
    a = SwinForImageClassification(SwinConfig(**TINY, num_labels=3))
    b = SwinForImageClassification(SwinConfig(**TINY, num_labels=3))
    assert a.fast_paths == FastPaths.for_this_cpu()  # the default of this machine
    a.set_fast_paths(ALL_ON)
    holders = [m for m in a.modules() if hasattr(type(m), "fast_paths")]
    assert len(holders) > 4 * 8 and all(m.fast_paths == ALL_ON for m in holders)
    assert all(m.fast_paths == FastPaths.for_this_cpu() for m in b.modules() if hasattr(type(m), "fast_paths"))
    assert a.set_fast_paths(mlp_tile_tokens=7).mlp_tile_tokens == 7  # one field changed, the rest kept
    assert a.swin.stages[0].blocks[0].mlp.fc1.fast_paths.inference_group_size == ALL_ON.inference_group_size
    assert copy.deepcopy(a).swin.stages[1].fast_paths.mlp_tile_tokens == 7


ZEN1 = CpuFeatures(x86_onednn=True, onednn_bf16=False, avx512_bf16=False, amx_bf16=False, isa="AVX2")
ZEN4 = CpuFeatures(x86_onednn=True, onednn_bf16=True, avx512_bf16=True, amx_bf16=False, isa="AVX512")
XEON_AMX = CpuFeatures(x86_onednn=True, onednn_bf16=True, avx512_bf16=True, amx_bf16=True, isa="AVX512")
ARM = CpuFeatures(x86_onednn=False, onednn_bf16=False, avx512_bf16=False, amx_bf16=False, isa="DEFAULT")


def test_default_paths_follow_what_the_cpu_can_run():
    zen4 = FastPaths.for_cpu(ZEN4)  # AVX512-BF16 without AMX (Zen 4/5 measured: BENCHMARKS.md)
    assert zen4.onednn_products and zen4.mlp_tile_tokens and zen4.inference_group_size and zen4.skip_dropped_branches
    xeon = FastPaths.for_cpu(XEON_AMX)  # (the Xeon with AMX measured: BENCHMARKS.md)
    assert not (xeon.onednn_products or xeon.mlp_tile_tokens) and xeon.skip_dropped_branches
    assert xeon.inference_group_size and not xeon.tiles_in_bf16  # groups in fp32 inference only
    avx2 = FastPaths.for_cpu(ZEN1)  # AVX2 only (Zen 1 and Zen 3 measured): oneDNN products and tiles cost
    assert not (avx2.onednn_products or avx2.mlp_tile_tokens or avx2.tiles_in_bf16)
    assert avx2.inference_group_size and avx2.skip_dropped_branches
    assert FastPaths.for_cpu(ARM) == FastPaths.plain()  # not measured: the plain model
    assert FastPaths.for_cpu(dataclasses.replace(ZEN1, isa="AVX512")) == FastPaths.plain()  # AVX-512 without bf16
    # oneDNN products need oneDNN's bf16 kernels (autocast hands them bf16): never chosen without them
    no_bf16_kernels = dataclasses.replace(ZEN4, onednn_bf16=False)
    assert not FastPaths.for_cpu(no_bf16_kernels).onednn_products
    assert not FastPaths.for_cpu(dataclasses.replace(ZEN4, x86_onednn=False)).onednn_products
    here = CpuFeatures.of_this_machine()
    assert FastPaths.for_this_cpu() == FastPaths.for_cpu(here)
    assert here.onednn_bf16 == (ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.skipif(not ONEDNN, reason="oneDNN products exist on x86 CPUs with oneDNN only")
def test_onednn_products_step_aside_for_bf16_where_onednn_has_no_bf16_kernels(monkeypatch):
    layer = TokenLinear(96, 384)
    layer.fast_paths = FastPaths(onednn_products=True)
    x = torch.randn(2, 32, 32, 96)
    monkeypatch.setattr(CpuFeatures, "of_this_machine", lambda: ZEN1)
    with torch.autocast("cpu", torch.bfloat16):
        ops = _ops(lambda: layer(x))
        out = layer(x)
    assert "aten::mkldnn_convolution" not in ops and out.dtype == torch.bfloat16
    assert "aten::mkldnn_convolution" in _ops(lambda: layer(x))  # fp32 products still take oneDNN


def test_the_default_model_runs_bf16_autocast_inference_and_training_on_this_cpu():
    """bf16 autocast with this CPU's default paths (an AVX2-only CPU once crashed here)."""
    model = SwinForImageClassification(SwinConfig(**TINY, num_labels=3, drop_path_rate=0.2))
    assert model.fast_paths == FastPaths.for_this_cpu()
    x, labels = images(4, 64, 64), torch.tensor([0, 1, 2, 0])
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        logits = model.eval()(x).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    model.train()
    with torch.autocast("cpu", torch.bfloat16):
        loss = model(x, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
def test_every_path_on_leaves_the_batch_dynamic_in_export_and_compile():
    """The paths step aside while a graph is traced: a size comparison of theirs would fix the batch."""
    model = with_paths(SwinForImageClassification(SwinConfig(**TINY, num_labels=3)).eval())

    class Logits(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).logits

    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        exported = torch.export.export(Logits(model), (images(2, 64, 64),), dynamic_shapes={"x": {0: batch}}).module()
        for n in (1, 5):
            x = images(n, 64, 64)
            torch.testing.assert_close(exported(x), model(x).logits, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------------
# every path on: the numbers of transformers' Swin
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_with_every_path_on_match_transformers(case):
    config, size = CASES[case]
    theirs, ours = reference_pair(dict(config, num_labels=5))
    with_paths(ours)
    x = images(3, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, **TOL)


def test_hidden_states_in_sample_groups_match_transformers():
    theirs, ours = reference_pair(dict(TINY, num_labels=4))
    with_paths(ours)
    batches = []
    for block in ours.swin.stages[0].blocks:
        block.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    x = images(5, 64, 64)
    with torch.inference_mode():
        got, expected = ours(x, output_hidden_states=True), theirs(x, output_hidden_states=True)
    assert batches == [2, 2, 2, 2, 1, 1]  # stage 1: groups of 2, 2 and 1 images, two blocks each
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    for mine, ref in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine, ref, **TOL)
    batches.clear()
    ours(x).logits.sum()  # autograd on: the batch runs whole
    with torch.no_grad():
        ours(x, output_attentions=True)  # attention maps asked for: whole
    assert batches == [5, 5, 5, 5]


def test_gradients_with_every_path_on_match_transformers():
    theirs, ours = reference_pair(dict(TINY, num_labels=3))
    with_paths(ours)
    x, labels = images(2, 64, 64), torch.tensor([0, 2])
    expected = convert_state_dict(_gradients(theirs, x, labels), source="transformers")
    for name, grad in _gradients(ours, x, labels).items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-3, msg=name)


def test_training_with_stochastic_depth_is_the_same_with_and_without_the_paths():
    """drop_path_rate 0.5: the same loss and gradients whether the dropped branches are skipped (and the
    MLP tiled, and the products on oneDNN) or computed and zeroed, for the same random draws."""
    _, model = reference_pair(dict(TINY, num_labels=3, drop_path_rate=0.5))
    model.train()
    x, labels = images(4, 64, 64), torch.tensor([0, 2, 1, 1])
    results = []
    for paths in (ALL_ON, FastPaths.plain()):
        model.set_fast_paths(paths)
        torch.manual_seed(0)
        model.zero_grad()
        loss = model(x, labels=labels).loss
        loss.backward()
        results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, grads), (expected, expected_grads) = results
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_with_and_without_the_paths_agree():
    _, model = reference_pair(dict(TINY, num_labels=3))
    x = images(3, 64, 64)
    outs = []
    for paths in (ALL_ON, FastPaths.plain()):
        model.set_fast_paths(paths)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            outs.append(model(x).logits)
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    torch.testing.assert_close(outs[0].float(), outs[1].float(), atol=0.05, rtol=0.05)


# --------------------------------------------------------------------------------------------------
# the paths one by one
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not ONEDNN, reason="oneDNN products exist on x86 CPUs with oneDNN only")
@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_product_forward_and_backward_equal_f_linear(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(20, 12, requires_grad=True)
    b = torch.randn(20, requires_grad=True) if bias else None
    grad = torch.randn(*shape[:-1], 20)
    out, ref = token_linear(x, weight, b), F.linear(x, weight, b)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.shape == ref.shape and out.is_contiguous()
    params = [x, weight] + ([b] if bias else [])
    for g, e in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-5)
    noncontiguous = torch.randn(4, 6, 12).transpose(0, 1)
    torch.testing.assert_close(token_linear(noncontiguous, weight, b), F.linear(noncontiguous, weight, b), atol=1e-5, rtol=1e-5)


def _ops(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.skipif(not ONEDNN, reason="oneDNN products exist on x86 CPUs with oneDNN only")
def test_token_linear_takes_onednn_only_when_asked_and_large_enough():
    layer = TokenLinear(96, 384)
    assert isinstance(layer, nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}
    large, small = torch.randn(2, 32, 32, 96), torch.randn(3, 96)  # 75M and 110k multiply-adds
    assert "aten::mkldnn_convolution" not in _ops(lambda: layer(large))  # off by default on a bare layer
    layer.fast_paths = FastPaths(onednn_products=True)
    assert "aten::mkldnn_convolution" in _ops(lambda: layer(large))
    assert "aten::mkldnn_convolution" not in _ops(lambda: layer(small))
    with torch.autocast("cpu", torch.bfloat16):
        out = layer(large)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.linear(large, layer.weight, layer.bias), atol=0.1, rtol=0.02)


def test_token_tiles_equal_the_branch_and_call_it_per_tile():
    layer, calls = nn.Linear(6, 6), []

    def branch(t):
        calls.append(t.shape[0])
        return layer(t).tanh()

    x = torch.randn(2, 9, 31, 6, requires_grad=True)  # 558 tokens: tiles of 100, the last of 58
    out = in_token_tiles(branch, x, FastPaths(mlp_tile_tokens=100))
    assert calls == [100] * 5 + [58]
    torch.testing.assert_close(out, branch(x), atol=1e-6, rtol=1e-6)
    assert out.shape == x.shape
    (g_tiled,) = torch.autograd.grad(out.square().sum(), x)
    (g_whole,) = torch.autograd.grad(branch(x).square().sum(), x)
    torch.testing.assert_close(g_tiled, g_whole, atol=1e-6, rtol=1e-5)


def test_sample_groups_only_in_cpu_inference():
    x, paths = torch.randn(5, 32, 32, 16), FastPaths(inference_group_size=2 * 32 * 32 * 16)
    with torch.no_grad():
        assert sample_groups(x, paths) == [slice(0, 2), slice(2, 4), slice(4, 6)]
        assert sample_groups(x, FastPaths(inference_group_size=10**9)) == [slice(0, 5)]
        assert sample_groups(x, FastPaths()) == [slice(None)]
    assert sample_groups(x, paths) == [slice(None)]  # autograd on


def test_tiles_and_groups_stay_in_fp32_where_asked():
    x = torch.randn(5, 32, 32, 16)
    fp32_only = FastPaths(inference_group_size=2 * 32 * 32 * 16, mlp_tile_tokens=1000, tiles_in_bf16=False)
    calls = []
    with torch.no_grad():
        assert len(sample_groups(x, fp32_only)) == 3
        assert sample_groups(x.bfloat16(), fp32_only) == [slice(None)]
        with torch.autocast("cpu", torch.bfloat16):
            assert sample_groups(x, fp32_only) == [slice(None)]
            in_token_tiles(lambda t: calls.append(len(t)) or t, x, fp32_only)
        in_token_tiles(lambda t: calls.append(len(t)) or t, x, fp32_only)
    assert calls == [5] + [1000] * 5 + [120]  # whole (the batch of 5 maps), then 5120 tokens in tiles


@pytest.mark.parametrize("kept_seed", [0, 3, 5])
def test_stochastic_depth_runs_the_branch_on_kept_samples_only(kept_seed):
    lin, batches = nn.Linear(6, 6), []

    def branch(t):
        batches.append(len(t))
        return lin(t).tanh()

    x = torch.randn(8, 3, 6)
    torch.manual_seed(kept_seed)
    keep = torch.empty(8).bernoulli_(0.5)

    def run(skip):
        xx = x.clone().requires_grad_()
        out = residual_on_kept_samples(xx, branch, keep, 2.0) if skip else xx + branch(xx) * (keep * 2.0).view(-1, 1, 1)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads = [xx.grad, lin.weight.grad.clone(), lin.bias.grad.clone()]
        lin.zero_grad()
        return out, grads

    out, grads = run(skip=True)
    expected, expected_grads = run(skip=False)
    assert batches == [int(keep.sum()), 8] and 0 < keep.sum() < 8  # (seeds chosen so)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    for g, e in zip(grads, expected_grads):  # sums over the samples in another order: fp32 rounding
        torch.testing.assert_close(g, e, atol=1e-6 * e.abs().max().item(), rtol=1e-5)


def test_stochastic_depth_with_every_branch_dropped_still_gives_zero_gradients():
    lin, calls = nn.Linear(5, 5), []
    x = torch.randn(4, 5)
    out = residual_on_kept_samples(x, lambda t: calls.append(len(t)) or lin(t), torch.zeros(4), 2.0)
    out.sum().backward()
    assert calls == [1]  # one sample, times zero: its parameters get zero gradients (not None)
    torch.testing.assert_close(out, x, atol=0, rtol=0)
    assert lin.weight.grad is not None and not lin.weight.grad.any()


def attention_dtypes_kept_for_backward(device: str) -> list[torch.dtype]:
    """The dtypes of the N x N tensors autograd keeps in a bf16-autocast training step on `device`."""
    model = SwinForImageClassification(SwinConfig(**TINY, num_labels=3)).train().to(device)
    N = TINY["window_size"] ** 2
    saved = []

    def pack(t):
        saved.append((tuple(t.shape[-2:]), t.dtype))
        return t

    x, labels = images(2, 64, 64).to(device), torch.tensor([0, 2], device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(device, torch.bfloat16):
        loss = model(x, labels=labels).loss
    loss.backward()
    return [dtype for shape, dtype in saved if shape == (N, N)]


def test_bf16_training_keeps_no_fp32_attention_probabilities():
    """Under bf16 autocast, autograd keeps nothing N x N in fp32 for backward (an fp32 softmax kept next
    to its bf16 cast would cost step memory)."""
    square = attention_dtypes_kept_for_backward("cpu")
    assert square and all(dtype == torch.bfloat16 for dtype in square), square


# --------------------------------------------------------------------------------------------------
# nothing goes around the modules, nothing is kept between calls
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("paths", [ALL_ON, FastPaths.plain()], ids=["paths-on", "plain"])
def test_forward_hooks_see_every_product(paths):
    model = with_paths(SwinForImageClassification(SwinConfig(**TINY, num_labels=3)).eval(), paths)
    calls = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(lambda m, args, out, name=name: calls.append(name))
    with torch.no_grad():
        model(images(1, 64, 64))  # one image: no groups
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(calls) == linear
    tiles = -(-32 * 32 // paths.mlp_tile_tokens) if paths.mlp_tile_tokens else 1  # stage 1: 1024 tokens
    assert calls.count("swin.stages.0.blocks.0.mlp.fc1") == tiles


@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_steps_between_inference_calls_change_the_outputs(fused):
    """No cache of weights or biases: AdamW(fused=True) updates in place without bumping version counters,
    and an inference call after each step answers with the new weights."""
    model = with_paths(SwinForImageClassification(SwinConfig(**TINY, num_labels=3))).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=fused, foreach=False if fused else None)
    x, labels = images(2, 64, 64), torch.tensor([0, 2])
    served = []
    for _ in range(3):
        with torch.no_grad():
            served.append(model(x).logits)
        model(x, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            fresh = copy.deepcopy(model)(x).logits
            torch.testing.assert_close(model(x).logits, fresh, atol=0, rtol=0)
    assert (served[1] - served[0]).abs().max() > 0.01 and (served[2] - served[1]).abs().max() > 0.01


def test_in_place_weight_edits_are_seen_by_the_next_call():
    model = with_paths(SwinForImageClassification(SwinConfig(**TINY, num_labels=3))).eval()
    x = images(2, 64, 64)
    with torch.no_grad():
        before = model(x).logits
        model.swin.stages[0].blocks[0].mlp.fc1.weight.data.mul_(3.0)
        model.swin.stages[0].blocks[1].attn.relative_position_bias_table.data.add_(1.0)
        after = model(x).logits
        torch.testing.assert_close(after, copy.deepcopy(model)(x).logits, atol=0, rtol=0)
    assert (after - before).abs().max() > 1e-3
