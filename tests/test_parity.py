"""Numerical parity with transformers' Swin: same weights in, same numbers out (fp32)."""

import pytest
import torch

from swin_hf import convert_state_dict
from swin_reference import TINY, TWO_STAGES, images, reference_pair

TOL = dict(atol=1e-5, rtol=1e-4)

CASES = {
    "tiny-64": (TINY, (64, 64)),
    "tiny-non-square-odd-97x131": (TINY, (97, 131)),
    "tiny-non-multiple-of-patch-65x63": (TINY, (66, 63)),
    # the last stage's 4x4 map equals the window: the window is kept, the shift dropped
    "clamped-window": (dict(TWO_STAGES, image_size=32, window_size=4), (32, 32)),
    "window-5-patch-2-3-stages": (dict(embed_dim=16, depths=[1, 2, 3], num_heads=[2, 2, 4], window_size=5, image_size=80, patch_size=2), (96, 88)),
    "absolute-embeddings": (dict(TINY, use_absolute_embeddings=True), (64, 64)),
    "no-qkv-bias-mlp-2": (dict(TWO_STAGES, qkv_bias=False, mlp_ratio=2.0), (32, 40)),
    "swin-t-depths-224": (dict(embed_dim=24, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7), (224, 224)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case):
    config, size = CASES[case]
    theirs, ours = reference_pair(dict(config, num_labels=5))
    x = images(2, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, **TOL)


def test_absolute_embeddings_at_another_size_match_transformers_interpolation():
    theirs, ours = reference_pair(dict(TINY, use_absolute_embeddings=True, num_labels=3))
    x = images(2, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x, interpolate_pos_encoding=True).logits, **TOL)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_hidden_states_attentions_and_pooling_match_transformers(implementation):
    theirs, ours = reference_pair(TINY, head="model")
    theirs.set_attn_implementation("eager")  # transformers returns no attention maps under sdpa
    ours.set_attn_implementation(implementation)
    assert ours.config._attn_implementation == implementation
    x = images(2, 64, 80)
    with torch.no_grad():
        a = theirs(x, output_hidden_states=True, output_attentions=True)
        b = ours(x, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(b.last_hidden_state, a.last_hidden_state, **TOL)
    torch.testing.assert_close(b.pooler_output, a.pooler_output, **TOL)
    for name in ("hidden_states", "reshaped_hidden_states", "attentions"):
        ref, got = getattr(a, name), getattr(b, name)
        assert len(got) == len(ref), name
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, **TOL)
    assert b.reshaped_hidden_states[1].shape == (2, 32, 16, 20)  # (B, C, H, W) after stage 1's merging


@pytest.mark.parametrize("size", [(64, 64), (97, 131), (70, 90)])
def test_backbone_feature_maps_match_transformers(size):
    config = dict(TINY, out_features=["stem", "stage1", "stage2", "stage3", "stage4"])
    theirs, ours = reference_pair(config, head="backbone")
    x = images(2, *size)
    with torch.no_grad():
        a, b = theirs(x).feature_maps, ours(x).feature_maps
    assert len(a) == len(b) == 5
    for r, g in zip(a, b):
        torch.testing.assert_close(g, r, **TOL)


def test_eager_sdpa_and_auto_give_the_same_outputs_and_gradients():
    _, ours = reference_pair(dict(TINY, num_labels=4))
    x = images(2, 72, 60)
    results = {}
    for implementation in ("eager", "sdpa", "auto"):
        ours.zero_grad()
        ours.set_attn_implementation(implementation)
        assert ours.config._attn_implementation == implementation
        logits = ours(x).logits
        logits.square().sum().backward()
        results[implementation] = (logits.detach(), {n: p.grad.clone() for n, p in ours.named_parameters()})
    for other in ("sdpa", "auto"):
        torch.testing.assert_close(results[other][0], results["eager"][0], **TOL)
        for name, grad in results["eager"][1].items():
            torch.testing.assert_close(results[other][1][name], grad, atol=1e-4, rtol=1e-3, msg=name)


def _attention_ops(model, x, grad: bool) -> set[str]:
    with torch.profiler.profile() as prof, torch.set_grad_enabled(grad):
        model(x)
    return {e.key for e in prof.key_averages()} & {"aten::scaled_dot_product_attention", "aten::_softmax"}


def test_default_attention_is_auto_sdpa_in_inference_spelled_out_while_the_bias_trains():
    """"auto" (the default) calls SDPA where the relative position bias gets no gradient, and the spelled-out
    form where it does (SDPA has no kernel for a trainable mask); "sdpa" and "eager" mean just that."""
    _, ours = reference_pair(TINY)
    assert ours.config._attn_implementation == "auto"
    x = images(1, 64, 64)
    sdpa, spelled = {"aten::scaled_dot_product_attention"}, {"aten::_softmax"}
    assert _attention_ops(ours, x, grad=False) == sdpa
    assert _attention_ops(ours, x, grad=True) == spelled
    ours.requires_grad_(False)  # a frozen encoder: its biases get no gradient
    assert _attention_ops(ours, x, grad=True) == sdpa
    ours.requires_grad_(True)
    ours.set_attn_implementation("sdpa")
    assert "aten::scaled_dot_product_attention" in _attention_ops(ours, x, grad=True)
    ours.set_attn_implementation("eager")
    assert _attention_ops(ours, x, grad=False) == spelled


def _gradients(model, x, labels):
    model.zero_grad()
    model(x, labels=labels).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradients_match_transformers():
    theirs, ours = reference_pair(dict(TINY, num_labels=3))
    x, labels = images(2, 64, 64), torch.tensor([0, 2])
    theirs_grads = convert_state_dict(_gradients(theirs, x, labels), source="transformers")
    ours_grads = _gradients(ours, x, labels)
    assert theirs_grads.keys() == ours_grads.keys()
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, theirs_grads[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.5])
def test_gradient_checkpointing_gives_identical_gradients(drop_path_rate):
    """Also with stochastic depth: the recomputed forward draws the same samples to drop (the random
    state is restored), so the branches skipped in forward are the ones skipped in the recompute."""
    _, ours = reference_pair(dict(TINY, num_labels=3, drop_path_rate=drop_path_rate))
    check_checkpointing_gives_identical_gradients(ours, images(4, 64, 64), torch.tensor([1, 2, 0, 1]))


def check_checkpointing_gives_identical_gradients(model, x, labels):
    model.train()  # checkpointing is active in training mode only
    torch.manual_seed(0)
    plain = _gradients(model, x, labels)
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for stage in model.swin.stages for block in stage.blocks)
    torch.manual_seed(0)
    checkpointed = _gradients(model, x, labels)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_bfloat16_weights_run_and_stay_close_to_fp32():
    _, ours = reference_pair(dict(TINY, num_labels=10))
    x = images(4, 64, 64)
    with torch.no_grad():
        fp32 = ours(x).logits
        bf16 = ours.to(torch.bfloat16)(x.bfloat16()).logits
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, atol=0.15, rtol=0.05)
