"""The CPU fast paths compute the paper's math: per-token linear layers on oneDNN (token_linear) and the
MLP in token tiles (_LeanMLP / _mlp_forward) give the numbers plain F.linear / nn modules give.

The test models are small, so their products fall under ONEDNN_MIN_MACS and would run on F.linear; the
`onednn` fixture lowers the threshold to 0 so that every product takes the oneDNN path."""

import copy
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import swin_hf.modeling_swin as modeling
from swin_hf import convert_state_dict
from swin_hf.modeling_swin import TokenLinear, token_linear, token_linear_backward
from swin_reference import TINY, images, reference_pair
from test_parity import CASES, TOL, _gradients


@pytest.fixture
def onednn(monkeypatch):
    monkeypatch.setattr(modeling, "ONEDNN_MIN_MACS", 0)


@pytest.fixture
def small_tiles(monkeypatch):
    """MLP tiles of 100 tokens: many tiles, the last one partial (512 tokens per stage-1 batch of 2 at 64x64)."""
    monkeypatch.setattr(modeling, "MLP_TILE_TOKENS", 100)


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("path", ["onednn", "f.linear"])
def test_token_linear_forward_and_backward_equal_f_linear(shape, bias, path, monkeypatch):
    monkeypatch.setattr(modeling, "ONEDNN_MIN_MACS", 0 if path == "onednn" else 10**12)
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(20, 12, requires_grad=True)
    b = torch.randn(20, requires_grad=True) if bias else None
    grad = torch.randn(*shape[:-1], 20)

    out = token_linear(x, weight, b)
    ref = F.linear(x, weight, b)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.shape == ref.shape and out.is_contiguous()

    params = [x, weight] + ([b] if bias else [])
    got = torch.autograd.grad(out, params, grad)
    expected = torch.autograd.grad(ref, params, grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-5)

    # the hand-written backward (used by the MLP) gives the same three gradients
    grad_x, grad_w, grad_b = token_linear_backward(grad, x.detach(), weight.detach(), has_bias=bias)
    torch.testing.assert_close(grad_x, expected[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grad_w, expected[1], atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(grad_b, expected[2], atol=1e-4, rtol=1e-5)
    else:
        assert grad_b is None


def test_token_linear_accepts_non_contiguous_tokens(onednn):
    x = torch.randn(4, 6, 12).transpose(0, 1)  # (6, 4, 12), not contiguous
    weight, bias = torch.randn(5, 12), torch.randn(5)
    torch.testing.assert_close(token_linear(x, weight, bias), F.linear(x, weight, bias), atol=1e-5, rtol=1e-5)


def _ops(fn) -> set[str]:
    with torch.profiler.profile() as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("threads", [1, 2])
def test_large_products_run_on_onednn_small_ones_on_f_linear(threads):
    layer = TokenLinear(96, 384)
    assert isinstance(layer, nn.Linear)  # same parameters, same state dict keys as nn.Linear
    assert set(layer.state_dict()) == {"weight", "bias"}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # conv2d's own dispatch would leave oneDNN at 1 thread; ours does not
    try:
        large = _ops(lambda: layer(torch.randn(2, 32, 32, 96)))  # 2048 tokens x 96 x 384 = 75M MACs
        small = _ops(lambda: layer(torch.randn(3, 96)))
    finally:
        torch.set_num_threads(before)
    assert "aten::mkldnn_convolution" in large and not large & {"aten::addmm", "aten::mm"}
    assert "aten::addmm" in small and "aten::mkldnn_convolution" not in small


def test_token_linear_under_bf16_autocast_runs_in_bf16(onednn):
    x, weight, bias = torch.randn(3, 5, 12), torch.randn(20, 12), torch.randn(20)
    with torch.autocast("cpu", torch.bfloat16):
        out, ref = token_linear(x, weight, bias), F.linear(x, weight, bias)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_on_onednn_match_transformers(case, onednn):
    config, size = CASES[case]
    theirs, ours = reference_pair(dict(config, num_labels=5))
    x = images(2, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, **TOL)


def test_tiled_mlp_on_onednn_gradients_match_transformers(small_tiles, onednn):
    theirs, ours = reference_pair(dict(TINY, num_labels=3))
    assert len(modeling._tiles(2 * 16 * 16, torch.device("cpu"))) == 6  # the tiles are really in use
    x, labels = images(2, 64, 64), torch.tensor([0, 2])
    theirs(x, labels=labels).loss.backward()
    ours(x, labels=labels).loss.backward()
    expected = convert_state_dict({n: p.grad for n, p in theirs.named_parameters()}, source="transformers")
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-5, rtol=1e-3, msg=name)


def test_tiled_mlp_inference_equals_plain_modules(small_tiles, onednn):
    mlp, norm = modeling.SwinMLP(modeling.SwinConfig(**TINY), 16), nn.LayerNorm(16)
    x = torch.randn(2, 9, 31, 16)  # 558 tokens: 6 tiles, the last of 58
    with torch.no_grad():
        plain = mlp.fc2(mlp.act(mlp.fc1(norm(x))))
        torch.testing.assert_close(mlp(x, norm), plain, atol=1e-6, rtol=1e-5)


def test_tiled_mlp_under_bf16_autocast_matches_untiled(small_tiles, onednn, monkeypatch):
    mlp, norm = modeling.SwinMLP(modeling.SwinConfig(**TINY), 16), nn.LayerNorm(16)
    x = torch.randn(2, 9, 31, 16)

    def run():
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            out = mlp(xx, norm)
        out.float().square().sum().backward()
        grads = [xx.grad] + [p.grad.clone() for p in (*mlp.parameters(), *norm.parameters())]
        mlp.zero_grad(), norm.zero_grad()
        return out, grads

    tiled_out, tiled_grads = run()
    monkeypatch.setattr(modeling, "MLP_TILE_TOKENS", 10**9)
    whole_out, whole_grads = run()
    assert tiled_out.dtype == torch.bfloat16
    torch.testing.assert_close(tiled_out, whole_out)
    for tiled, whole in zip(tiled_grads, whole_grads):
        assert tiled.dtype == torch.float32  # parameter gradients come back in the parameters' dtype
        torch.testing.assert_close(tiled, whole, atol=1e-2, rtol=1e-2)


def test_lean_mlp_backward_recomputes_layernorm_in_the_dtype_forward_ran_it_in(monkeypatch):
    """Backward recomputes LayerNorm(x) in the dtype forward's LayerNorm ran in. CUDA's autocast runs
    LayerNorm in fp32 (casting a bf16 x and the weights); a recompute in x's bf16 against the fp32
    weights is refused there (RuntimeError in every bf16 training step from stage 2 on, seen on an H200).
    CPU's autocast leaves LayerNorm alone and accepts mixed dtypes, so here CUDA's rule is imitated by a
    LayerNorm that casts its inputs to fp32, and each recompute's input dtype is recorded; the gradients
    are checked against plain modules under the same rule."""
    mlp, norm = modeling.SwinMLP(modeling.SwinConfig(**TINY), 16), nn.LayerNorm(16)
    x = torch.randn(2, 7, 7, 16).bfloat16()  # a stage's input after patch merging under autocast
    recomputed, layer_norm, native_layer_norm = [], F.layer_norm, torch.native_layer_norm

    def layer_norm_in_fp32(input, *args, **kwargs):  # autocast's fp32 rule, as CUDA applies it
        args = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
        return layer_norm(input.float(), *args, **kwargs)

    def spy(input, *args, **kwargs):  # backward's recompute, which also returns the mean and 1/std
        recomputed.append(input.dtype)
        return native_layer_norm(input, *args, **kwargs)

    def run(module_path: bool):
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", torch.bfloat16):
            out = mlp.fc2(mlp.act(mlp.fc1(norm(xx)))) if module_path else mlp(xx, norm)
        out.float().square().sum().backward()
        grads = [xx.grad] + [p.grad.clone() for p in (*mlp.parameters(), *norm.parameters())]
        mlp.zero_grad(), norm.zero_grad()
        return grads

    monkeypatch.setattr(F, "layer_norm", layer_norm_in_fp32)
    monkeypatch.setattr(torch, "native_layer_norm", spy)
    lean = run(module_path=False)
    assert recomputed == [torch.float32]
    plain = run(module_path=True)
    assert lean[0].dtype == torch.bfloat16
    for a, b in zip(lean, plain):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_lean_mlp_switch_gives_the_same_training_gradients(monkeypatch, act):
    """LEAN_MLP = False (plain modules in training, for a GPU step that waits for the host) computes the
    same gradients as the lean form, and really leaves _LeanMLP out. "gelu" takes the lean backward's
    direct GELU gradient; other activations the autograd fallback."""
    config = modeling.SwinConfig(**TINY, num_labels=3, drop_path_rate=0.0, hidden_act=act)
    model = modeling.SwinForImageClassification(config).train()
    x, labels = images(2, 64, 64), torch.tensor([0, 2])
    calls, apply = [], modeling._LeanMLP.apply
    monkeypatch.setattr(modeling._LeanMLP, "apply", lambda *a: calls.append(1) or apply(*a))
    inner_graphs, grad = [], torch.autograd.grad  # the lean backward's autograd fallback
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: inner_graphs.append(1) or grad(*a, **k))
    grads = []
    for lean in (True, False):
        monkeypatch.setattr(modeling, "LEAN_MLP", lean)
        calls.clear()
        grads.append(_gradients(model, x, labels))
        assert len(calls) == (sum(TINY["depths"]) if lean else 0)
    assert len(inner_graphs) == (0 if act == "gelu" else sum(TINY["depths"]))
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], atol=1e-6, rtol=1e-4, msg=name)


def attention_dtypes_kept_for_backward(device: str) -> list[torch.dtype]:
    """The dtypes of the N x N tensors autograd keeps in a bf16-autocast training step on `device`."""
    model = modeling.SwinForImageClassification(modeling.SwinConfig(**TINY, num_labels=3)).train().to(device)
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
    """Under bf16 autocast, autograd keeps nothing N x N in fp32 for backward: the softmax runs in the
    logits' dtype (an fp32 softmax would be kept next to its bf16 cast, +14% step peak memory)."""
    square = attention_dtypes_kept_for_backward("cpu")
    assert square and all(dtype == torch.bfloat16 for dtype in square), square


@pytest.mark.parametrize("kept_seed", [0, 3, 5])
def test_stochastic_depth_runs_the_branch_on_kept_samples_only(kept_seed):
    """residual() on CPU computes the branch for the kept samples only, and gives the outputs and
    gradients of the usual form (branch on every sample, dropped ones multiplied by zero)."""
    lin = nn.Linear(6, 6)
    batches = []

    def branch(t):
        batches.append(len(t))
        return lin(t).tanh()

    x = torch.randn(8, 3, 6)

    def run(skip):
        xx = x.clone().requires_grad_()
        torch.manual_seed(kept_seed)
        out = modeling.residual(xx, branch, 0.5, training=True, skip_dropped=skip)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads = [xx.grad, lin.weight.grad.clone(), lin.bias.grad.clone()]
        lin.zero_grad()
        return out, grads

    out, grads = run(skip=True)
    expected, expected_grads = run(skip=False)
    assert batches[1] == 8  # the usual form computed every sample
    torch.manual_seed(kept_seed)
    kept = int(torch.empty(8).bernoulli_(0.5).sum())
    assert batches[0] == kept and 0 < kept < 8  # this one only the kept ones (seeds chosen so)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)
    for g, e in zip(grads, expected_grads):
        # the gradients reach ~1000 (the loss weights reach 143) and are sums over the samples in another
        # order (kept ones only): fp32 rounding is ~1e-7 of that scale (3e-5 on torch 2.7's kernels)
        torch.testing.assert_close(g, e, atol=1e-6 * e.abs().max().item(), rtol=1e-5)


@pytest.mark.parametrize("drop_path", [1.0 - 1e-9, 1e-9])
def test_stochastic_depth_with_every_branch_dropped_or_kept(drop_path):
    lin, calls = nn.Linear(5, 5), []

    def branch(t):
        calls.append(len(t))
        return lin(t)

    x = torch.randn(4, 5)
    out = modeling.residual(x, branch, drop_path, training=True)
    out.sum().backward()
    if drop_path > 0.5:
        # all dropped: the output is the input, and the branch runs on one sample only, so that its
        # parameters get zero gradients (not None) as with the usual form, which optimizers rely on
        assert calls == [1]
        torch.testing.assert_close(out, x, atol=0, rtol=0)
        assert lin.weight.grad is not None and not lin.weight.grad.any() and not lin.bias.grad.any()
    else:
        assert calls == [4]
        torch.testing.assert_close(out, x + lin(x) / (1 - drop_path))
    torch.testing.assert_close(modeling.residual(x, lin, drop_path, training=False), x + lin(x))


def test_training_with_stochastic_depth_equals_the_zeroed_branch_form(monkeypatch):
    """A whole model in training mode (drop_path_rate 0.5): the same loss and gradients whether the
    dropped branches are skipped or computed and zeroed, for the same random draws."""
    _, model = reference_pair(dict(TINY, num_labels=3, drop_path_rate=0.5))
    model.train()
    x, labels = images(4, 64, 64), torch.tensor([0, 2, 1, 1])
    skipped = []
    plain = modeling.residual

    def spy(x, branch, p, training, skip_dropped=True):
        def counted(t):
            skipped.append(len(x) - len(t))
            return branch(t)

        return plain(x, counted, p, training, skip_dropped and skip)

    monkeypatch.setattr(modeling, "residual", spy)
    results = []
    for skip in (True, False):
        torch.manual_seed(0)
        model.zero_grad()
        loss = model(x, labels=labels).loss
        loss.backward()
        results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert sum(skipped) > 0  # some branches were really skipped in the first run
    (loss, grads), (expected, expected_grads) = results
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_inference_in_sample_groups_matches_transformers(monkeypatch):
    """CPU inference runs a stage's blocks on groups of samples when its map is large; the logits and
    every stage's output are transformers' (the groups are forced small here: TINY at 64x64 holds 32*32*16
    activations per image in stage 1 and 16*16*32 in stage 2, so at most 2 and 4 images per group)."""
    monkeypatch.setattr(modeling, "INFERENCE_GROUP_ACTIVATIONS", 2 * 32 * 32 * 16)
    theirs, ours = reference_pair(dict(TINY, num_labels=4))
    batches = []
    for block in ours.modules():
        if isinstance(block, modeling.SwinBlock):
            block.register_forward_pre_hook(lambda module, args: batches.append(len(args[0])))
    x = images(5, 64, 64)
    with torch.inference_mode():
        got = ours(x, output_hidden_states=True)
        expected = theirs(x, output_hidden_states=True)
    assert batches[:6] == [2, 2, 2, 2, 1, 1]  # stage 1: groups of 2, 2 and 1 images, two blocks each
    assert batches[6:10] == [3, 3, 2, 2]  # stage 2: two even groups
    assert batches[10:] == [5] * 4  # stages 3-4: small enough to run whole
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    for mine, ref in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine, ref, **TOL)

    # with autograd recording, or when attention maps are asked for, the batch runs whole
    batches.clear()
    ours(x).logits.sum()
    with torch.no_grad():
        ours(x, output_attentions=True)
    assert batches == [5] * 16


def _count_chunked_attention(monkeypatch) -> list:
    calls = []
    real = modeling.chunked_attention
    monkeypatch.setattr(modeling, "chunked_attention", lambda q, *rest: calls.append(q.shape) or real(q, *rest))
    return calls


def test_inference_attention_in_chunks_matches_transformers(monkeypatch):
    """CPU inference spells attention out over chunks of windows (chunked_attention). Forced to chunks of
    3 windows' logits (TINY: window 4, so N = 16), stage 1's W-MSA runs 320 windows in 107 chunks, the last
    one partial, and its SW-MSA (64 windows x 1 head per sample) one sample per chunk; the logits and every
    stage's output are still transformers'."""
    monkeypatch.setattr(modeling, "ATTENTION_CHUNK_LOGITS", 3 * 16 * 16)
    calls = _count_chunked_attention(monkeypatch)
    softmaxes = []
    real_softmax = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda x, dim: softmaxes.append(len(x)) or real_softmax(x, dim))
    theirs, ours = reference_pair(dict(TINY, num_labels=4))
    x = images(5, 64, 64)
    with torch.inference_mode():
        got = ours(x, output_hidden_states=True)
        expected = theirs(x, output_hidden_states=True)
    assert calls[:2] == [(5 * 64, 1, 16, 16), (5, 64, 16, 16)]  # stage 1: W-MSA, then SW-MSA (windows x heads)
    assert len(calls) == 8  # every block of the four stages
    assert softmaxes[:107] == [3] * 106 + [2] and softmaxes[107:112] == [1] * 5
    torch.testing.assert_close(got.logits, expected.logits, **TOL)
    for mine, ref in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine, ref, **TOL)


def test_chunked_attention_only_in_cpu_inference(monkeypatch):
    """Not with autograd recording, not in training mode (even with autograd off, as in a checkpointed
    block's first pass), not in a block whose attention map is returned, not when switched off: SDPA or
    the spelled-out path with its own backward runs there."""
    calls = _count_chunked_attention(monkeypatch)
    _, ours = reference_pair(dict(TINY, num_labels=4))
    x = images(2, 64, 64)
    with torch.no_grad():
        ours(x, output_attentions=True)  # each stage returns its last block's map
    assert len(calls) == 4
    calls.clear()
    ours(x).logits.sum()
    with torch.no_grad():
        ours.train()(x)
        ours.eval()
        monkeypatch.setattr(modeling, "CHUNKED_INFERENCE_ATTENTION", False)
        ours(x)
    assert calls == []
    monkeypatch.setattr(modeling, "CHUNKED_INFERENCE_ATTENTION", True)
    with torch.no_grad():
        ours(x)
    assert len(calls) == 8


def test_chunked_attention_under_bf16_autocast_matches_sdpa(monkeypatch):
    """Under bf16 autocast the chunks run their products in bf16 and the softmax in fp32, as SDPA's CPU
    kernel does; the logits agree with SDPA's to bf16 precision."""
    _, ours = reference_pair(dict(TINY, num_labels=4))
    x = images(3, 64, 64)
    outputs = {}
    for chunked in (True, False):
        monkeypatch.setattr(modeling, "CHUNKED_INFERENCE_ATTENTION", chunked)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[chunked] = ours(x).logits.float()
    with torch.inference_mode():
        fp32 = ours(x).logits
    spread = fp32.std().item()
    torch.testing.assert_close(outputs[True], outputs[False], atol=0.05 * spread, rtol=0)
    torch.testing.assert_close(outputs[True], fp32, atol=0.05 * spread, rtol=0)


@pytest.mark.parametrize("shape", [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize("autocast", [False, True])
def test_inference_products_on_reordered_weights_equal_f_linear(shape, autocast, onednn):
    """An inference product (pack=True) runs oneDNN's matmul on a copy of the weight reordered once;
    the result is F.linear's, in fp32 and under bf16 autocast, for any leading shape."""
    x, weight, bias = torch.randn(shape), torch.randn(20, 12), torch.randn(20)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out, ref = token_linear(x, weight, bias, pack=True), F.linear(x, weight, bias)
        no_bias = token_linear(x.transpose(0, -2), weight, pack=True)
        ref_no_bias = F.linear(x.transpose(0, -2), weight)
    assert weight in modeling._PACKED  # the reordered path was taken
    assert out.dtype == ref.dtype and out.shape == ref.shape
    tol = dict(atol=0.05, rtol=0.02) if autocast else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(no_bias, ref_no_bias, **tol)


def test_reordered_weights_follow_the_weights(onednn, monkeypatch):
    """The reordered copy is made once per weight, in eval mode with autograd off, and remade whenever the
    weight changes (in place, new storage, another dtype). It is never made in training mode (not even
    with autograd off, as in a checkpointed block's first pass), nor with autograd on, nor after
    PACK_INFERENCE_WEIGHTS = False; the model going back to training (or away) frees it."""
    model = modeling.SwinForImageClassification(modeling.SwinConfig(**TINY, num_labels=3)).eval()
    layer = model.swin.stages[0].blocks[0].mlp.fc1
    x = torch.randn(1, 5, 16)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)

    layer(x).sum().backward()  # autograd on: no copy
    model.swin(images(1, 64, 64)).pooler_output.sum().backward()  # (the MLP's autograd Function too)
    model.train()
    with torch.no_grad():
        model(images(1, 64, 64))  # training mode
    model.eval()
    assert not any(p in modeling._PACKED for p in model.parameters())
    check()
    packed = modeling._PACKED[layer.weight][1]
    check()
    assert modeling._PACKED[layer.weight][1] is packed  # reused
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # in place (an optimizer step, load_state_dict, EMA)
    check()
    layer.weight.data = torch.randn(64, 16)  # new storage
    check()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.linear(x, layer.weight, layer.bias), atol=0.1, rtol=0.02)
    check()  # back to fp32

    with torch.no_grad():
        model(images(1, 64, 64))
    params = list(model.parameters())
    assert sum(p in modeling._PACKED for p in params) >= 2 * 4 * 4  # every block's qkv, proj, fc1, fc2
    model.train()
    assert not any(p in modeling._PACKED for p in params)
    model.eval()
    with torch.no_grad():
        model(images(1, 64, 64))
    count = len(modeling._PACKED)
    del model, layer, params
    gc.collect()
    assert len(modeling._PACKED) < count  # weak references: gone with the model

    monkeypatch.setattr(modeling, "PACK_INFERENCE_WEIGHTS", False)
    weight = torch.randn(20, 12)
    with torch.no_grad():
        token_linear(torch.randn(3, 12), weight, pack=True)
    assert weight not in modeling._PACKED


def test_attention_bias_is_built_once_in_inference_and_follows_the_table(monkeypatch):
    """In inference each block builds its bias (B, plus the mask in SW-MSA) once and reuses it: across a
    forward's sample groups and across forwards. It is rebuilt when the table changes (in place, new
    storage), when the map size changes the window or the mask, and for another dtype; with autograd on,
    or in training mode, it is built on every call and never kept. The reference is a copy of the model
    run with autograd on (the bias is then gathered anew, differentiably)."""
    monkeypatch.setattr(modeling, "INFERENCE_GROUP_ACTIVATIONS", 2 * 32 * 32 * 16)  # stage 1: 3 groups of 5
    builds = []
    real_build = modeling.WindowAttention._build_attention_bias
    monkeypatch.setattr(
        modeling.WindowAttention, "_build_attention_bias", lambda self, *a: builds.append(a[-1]) or real_build(self, *a)
    )
    model = modeling.SwinForImageClassification(modeling.SwinConfig(**TINY, num_labels=3)).eval()
    tables = [m.relative_position_bias_table for m in model.modules() if isinstance(m, modeling.WindowAttention)]
    assert len(tables) == 8

    def check(x):
        builds.clear()
        with torch.no_grad():
            got = model(x).logits
        fresh = copy.deepcopy(model)(x).logits.detach()  # autograd on: built anew (and the copy's cache dropped)
        torch.testing.assert_close(got, fresh, **TOL)
        return len(builds) - 8  # the inference forward's builds (the copy's builds all 8)

    x = images(5, 64, 64)
    assert check(x) == 8  # once per block, although stage 1 ran three groups
    assert check(x) == 0  # kept
    with torch.no_grad():
        tables[0].mul_(-3.0).add_(0.5)  # in place: an optimizer step, load_state_dict, EMA
        tables[5].add_(1.0)
    assert check(x) == 2
    tables[3].data = torch.randn_like(tables[3])  # new storage
    assert check(x) == 1
    # 48x48: maps 24, 12, 6, 3. New masks in stages 1-2 (their W-MSA bias depends on the window only);
    # stage 3 pads 6 to 8, the 64x64 map size, so its mask is the same; stage 4 gets windows of 3
    assert check(images(2, 48, 48)) == 1 + 1 + 0 + 2
    assert check(x) == 4  # back to 64x64: the blocks that changed
    builds.clear()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        model(x)
    assert builds == []  # chunked attention takes the fp32 bias under autocast too
    monkeypatch.setattr(modeling, "CHUNKED_INFERENCE_ATTENTION", False)
    builds.clear()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        model(x)
    assert builds == [torch.bfloat16] * 8  # SDPA's mask in the products' dtype
    builds.clear()
    with torch.no_grad():
        model.train()(x)
        model.train()(x)
    assert len(builds) == 16  # training mode: built every call


@pytest.mark.parametrize("fused", [True, False])
def test_inference_between_optimizer_steps_in_eval_mode_sees_the_new_weights(fused, onednn):
    """A fine-tune that stays in eval mode: forward with autograd on, AdamW step, an inference forward in
    between. AdamW(fused=True) updates the weights in place without bumping their version counters, so
    the inference caches (reordered weights, attention biases) must go with the forward that has autograd
    on; the inference logits after each step are those of the updated weights."""
    model = modeling.SwinForImageClassification(modeling.SwinConfig(**TINY, num_labels=3)).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=fused, foreach=False if fused else None)
    x, labels = images(2, 64, 64), torch.tensor([0, 2])
    table = model.swin.stages[0].blocks[1].attn.relative_position_bias_table
    before = []
    for _ in range(3):
        with torch.no_grad():
            served = model(x).logits  # fills the caches
        assert model.swin.stages[0].blocks[1].attn._inference_bias is not None
        assert model.swin.stages[0].blocks[1].attn in modeling._BIAS_HOLDERS  # drop_inference_caches looks here
        assert model.swin.stages[0].blocks[0].mlp.fc1.weight in modeling._PACKED
        before.append(served)
        version = table._version
        model(x, labels=labels).loss.backward()
        assert model.swin.stages[0].blocks[1].attn not in modeling._BIAS_HOLDERS
        assert model.swin.stages[0].blocks[0].mlp.fc1.weight not in modeling._PACKED
        torch.testing.assert_close(model(x).logits.detach(), served, **TOL)  # (autograd on: computed anew)
        optimizer.step()
        optimizer.zero_grad()
        assert (table._version == version) == fused  # what the caches cannot rely on
    assert (before[1] - before[0]).abs().max() > 0.01 and (before[2] - before[1]).abs().max() > 0.01
