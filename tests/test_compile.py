"""torch.compile: fullgraph with no graph breaks, and dynamic shapes without recompiling every call."""

import pytest
import torch

import swin_hf.fast_paths as fast_paths
import swin_hf.modeling_swin as modeling
from swin_hf import FastPaths, SwinConfig, SwinForImageClassification

ONEDNN = fast_paths._TOKEN_LINEAR is not None
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="the opaque product is registered on x86 CPUs with oneDNN only")
# every product on oneDNN however small (in a full-size model the products are large enough anyway)
ONEDNN_PATHS = FastPaths(onednn_products=True, onednn_min_macs=0)

TINY = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, image_size=32, patch_size=2, num_labels=5)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(paths: FastPaths | None = None):
    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(**TINY)).eval()
    if paths is not None:
        model.set_fast_paths(paths)
    return model


@pytest.mark.slow
def test_fullgraph_compile_matches_eager():
    model = _model()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).logits
        got = compiled(x).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def _traced_calls(model, x) -> list[str]:
    """The function calls in the graph torch.compile captures for model(x)."""
    calls = []

    def backend(gm, example_inputs):
        calls.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch.compile(model, fullgraph=True, backend=backend)(x)
    return calls


@pytest.mark.slow
@needs_onednn
def test_compile_traces_the_products_as_one_opaque_op_and_export_as_linear():
    """With oneDNN products on, torch.compile keeps them on oneDNN through swin_hf::token_linear (as F.linear
    they would become MKL sgemms); torch.export, whose graphs go to ONNX and other runtimes, sees F.linear."""
    model, x = _model(ONEDNN_PATHS), torch.randn(2, 3, 32, 32)
    products = sum(isinstance(m, fast_paths.TokenLinear) for m in model.modules())  # qkv, proj, fc1, fc2, merges
    calls = _traced_calls(model, x)
    assert sum("swin_hf.token_linear" in c for c in calls) == products == 17
    assert calls.count(str(torch._C._nn.linear)) == 1  # the classifier head, an nn.Linear
    exported = [str(n.target) for n in torch.export.export(model, (x,)).graph.nodes if n.op == "call_function"]
    assert exported.count("aten.linear.default") == products + 1 and not any("swin_hf" in c for c in exported)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts F.linear's inputs; the op is left out
        calls = _traced_calls(model, x)
    assert calls.count(str(torch._C._nn.linear)) == products + 1 and not any("swin_hf" in c for c in calls)
    model.set_fast_paths(onednn_products=False)  # off: plain F.linear everywhere
    calls = _traced_calls(model, x)
    assert calls.count(str(torch._C._nn.linear)) == products + 1 and not any("swin_hf" in c for c in calls)


@pytest.mark.slow
@needs_onednn
def test_fullgraph_capture_of_the_onednn_path():
    """Eager runs oneDNN directly and the traced graph swin_hf::token_linear: one graph through
    AOTAutograd, forward and backward (the op's registered gradient) equal to eager."""
    model = _model(ONEDNN_PATHS).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    torch.manual_seed(1)
    loss = compiled(x, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(1)  # same drop-path draws
    expected = model(x, labels=labels).loss
    expected.backward()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_fullgraph_compile_training_step():
    """Inductor's training step, stochastic depth included, gives eager's gradients. Both draw the same
    drop-path samples: the same seed, and Inductor told to call eager's random ops (its own generator
    would draw other samples, which made this test pass or fail with the torch version)."""
    model = _model().train()
    assert model.config.drop_path_rate > 0
    compiled = torch.compile(model, fullgraph=True)
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    torch.manual_seed(1)
    with torch._inductor.config.patch(fallback_random=True):
        loss = compiled(x, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(1)
    model(x, labels=labels).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_dynamic_shapes_do_not_recompile_every_call():
    """Graph capture with symbolic shapes (backend="eager": Inductor's codegen adds minutes on a small CPU
    and is not what is being tested) for two batch sizes and two image sizes."""
    from torch._dynamo.utils import counters

    model = _model()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="eager")
    counters.clear()
    # stage maps stay multiples of the window and larger than it (16/8 and 24/12)
    with torch.no_grad():
        for batch, size in [(1, 32), (3, 32), (2, 48)]:
            x = torch.randn(batch, 3, size, size)
            torch.testing.assert_close(compiled(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs <= 2, f"{graphs} graphs captured for 3 calls"


@pytest.mark.slow
@needs_onednn
def test_a_second_copy_of_the_speed_paths_reuses_the_registered_op(tmp_path):
    """save_pretrained copies modeling_swin.py and fast_paths.py next to the weights; loading that copy as
    remote code in a process that already imported swin_hf must not register swin_hf::token_linear twice
    (an error), and the copy's model compiles onto the same op."""
    import sys

    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model = _model(ONEDNN_PATHS)
    model.save_pretrained(tmp_path)
    remote_cls = get_class_from_dynamic_module("modeling_swin.SwinForImageClassification", str(tmp_path))
    remote_paths = sys.modules[remote_cls.__module__.rsplit(".", 1)[0] + ".fast_paths"]
    assert remote_paths is not fast_paths and remote_paths._TOKEN_LINEAR is fast_paths._TOKEN_LINEAR
    copy = remote_cls.from_pretrained(tmp_path).eval()
    copy.set_fast_paths(remote_paths.FastPaths(onednn_products=True, onednn_min_macs=0))
    x = torch.randn(2, 3, 32, 32)
    assert sum("swin_hf.token_linear" in c for c in _traced_calls(copy, x)) == 17
    with torch.no_grad():
        got = torch.compile(copy, fullgraph=True, backend="aot_eager")(x).logits
        torch.testing.assert_close(got, model(x).logits, atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_shifted_windows_compile_with_inductor_for_dynamic_shapes():
    """SW-MSA's geometry (cyclic shift, partition, reverse, shift back) under Inductor with symbolic sizes,
    which every torch.compile(model, dynamic=True) on CPU goes through. (With torch.roll there and back,
    Inductor's CPU code generation fails: 'StrictLessThan' object has no attribute 'diff', torch 2.13.)"""

    def shift_partition_reverse(x):  # (B, H, W, C), windows of 4x4, shift 2
        B, H, W, C = x.shape
        windows = modeling.window_partition(modeling.cyclic_shift(x, 2), 4) * 2.0
        return modeling.cyclic_shift(modeling.window_reverse(windows, 4, H, W), -2)

    compiled = torch.compile(shift_partition_reverse, dynamic=True, fullgraph=True)
    for size in (16, 24):
        x = torch.randn(2, size, size, 8)
        torch.testing.assert_close(compiled(x), x * 2.0, atol=0, rtol=0)
        torch.testing.assert_close(modeling.cyclic_shift(x, 2), torch.roll(x, (-2, -2), (1, 2)), atol=0, rtol=0)
