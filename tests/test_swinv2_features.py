"""Swin V2 has everything Swin V1 has: SimMIM (with transformers' Swinv2ForMaskedImageModeling as the
reference), torch.compile with no graph breaks, ONNX export checked against onnxruntime, gradient
checkpointing, output_attentions / output_hidden_states, any input size with no state change in forward."""

import copy

import pytest
import torch
import transformers

import swin_hf
from swin_hf import SimMIMMaskGenerator, SwinConfig, SwinForImageClassification, SwinForMaskedImageModeling, SwinModel
from swin_hf import convert_state_dict
from swin_hf.export import export_onnx, run_onnx
from swin_reference import images, randomize
from test_any_size import _module_state
from test_parity import _gradients, check_checkpointing_gives_identical_gradients

# four stages at 64x64 (maps 32, 16, 8, 4 with patch 2): the last one smaller than the window
TINY_V2 = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4, patch_size=2, image_size=64,
               pretrained_window_sizes=[3, 3, 3, 2], version=2)
SMALL_V2 = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, patch_size=2, image_size=32, version=2)


def _v2(cls=SwinForImageClassification, seed=0, **config):
    """A V2 model whose every parameter is random (post-norms and temperatures too, so none is trivially 0)."""
    model = randomize(cls(SwinConfig(**config)), seed, std=0.1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(torch.linspace(1.0, 4.0, p.numel()).view_as(p))
    return model.eval()


# -------------------------------------------------------------------------------------------------
# SimMIM
# -------------------------------------------------------------------------------------------------


def _masks(batch, size=64, patch=2, seed=0):
    generator = SimMIMMaskGenerator(input_size=size, mask_patch_size=16, model_patch_size=patch, mask_ratio=0.6, seed=seed)
    return torch.stack([generator() for _ in range(batch)])


def test_simmim_v2_matches_transformers_swinv2_for_masked_image_modeling():
    fields = {k: v for k, v in TINY_V2.items() if k != "version"}
    theirs = randomize(transformers.Swinv2ForMaskedImageModeling(transformers.Swinv2Config(**fields, encoder_stride=16)), std=0.1)
    theirs.eval()
    state = theirs.state_dict()
    decoder = {k: v for k, v in state.items() if k.startswith("decoder.")}  # the same names on both sides
    encoder = convert_state_dict({k: v for k, v in state.items() if k not in decoder}, source="transformers")
    ours = SwinForMaskedImageModeling(SwinConfig(**TINY_V2, encoder_stride=16)).eval()
    ours.load_state_dict({**encoder, **decoder}, strict=True)
    x, mask = images(2, 64, 64), _masks(2)
    with torch.no_grad():
        expected, got = theirs(x, bool_masked_pos=mask), ours(x, bool_masked_pos=mask)
    torch.testing.assert_close(got.reconstruction, expected.reconstruction, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-4)


def test_simmim_v2_trains_and_round_trips(tmp_path):
    model = SwinForMaskedImageModeling(SwinConfig(**TINY_V2, encoder_stride=16))
    model.train()
    x, mask = images(2, 64, 64), _masks(2)
    out = model(x, bool_masked_pos=mask)
    assert out.reconstruction.shape == (2, 3, 64, 64) and out.loss.ndim == 0
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["swin.embeddings.mask_token"].abs().sum() > 0  # masked patches reach the loss
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the zero-initialised post-norms (the official init) get a gradient first; behind them the branches do not yet
    assert grads["swin.stages.0.blocks.0.norm1.weight"].abs().sum() > 0
    assert not grads["swin.stages.0.blocks.0.attn.cpb_mlp.0.weight"].any()
    model.eval().save_pretrained(tmp_path)
    loaded = swin_hf.SwinForMaskedImageModeling.from_pretrained(tmp_path).eval()
    assert loaded.config.version == 2 and loaded.config.pretrained_window_sizes == [3, 3, 3, 2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, bool_masked_pos=mask).reconstruction, model(x, bool_masked_pos=mask).reconstruction, atol=0, rtol=0)
    # the pre-trained encoder loads into a classifier with every swin.* weight
    classifier = SwinForImageClassification.from_pretrained(tmp_path, num_labels=3)
    for key, value in model.state_dict().items():
        if key.startswith("swin.") and "mask_token" not in key:
            torch.testing.assert_close(classifier.state_dict()[key], value, atol=0, rtol=0)


# -------------------------------------------------------------------------------------------------
# torch.compile, ONNX
# -------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_v2_compiles_with_no_graph_breaks_in_inference_and_training(fresh_dynamo):
    """fullgraph=True raises at the first graph break; the eager backends make it quick to check."""
    model = _v2(**SMALL_V2, num_labels=3)
    x, labels = images(2, 32, 32), torch.tensor([0, 2])
    with torch.no_grad():
        expected = model(x).logits
        torch.testing.assert_close(torch.compile(model, fullgraph=True, backend="eager")(x).logits, expected, atol=1e-5, rtol=1e-5)
    model.train()
    torch.manual_seed(0)
    compiled = _gradients(torch.compile(model, fullgraph=True, backend="aot_eager"), x, labels)
    torch.manual_seed(0)
    for name, grad in _gradients(model, x, labels).items():
        torch.testing.assert_close(compiled["_orig_mod." + name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_v2_onnx_export_matches_pytorch_with_a_dynamic_batch(tmp_path):
    # maps 8 and 4 at 32 pixels: a shifted stage, then one unshifted window; pre-training windows 3
    model = _v2(**dict(SMALL_V2, patch_size=4, pretrained_window_sizes=[3, 3]), num_labels=4)
    path = export_onnx(model, tmp_path / "swinv2.onnx", batch_size=2, dynamic_batch=True)
    for batch in (1, 3):
        x = images(batch, 32, 32, seed=batch)
        with torch.no_grad():
            expected = model(x).logits.numpy()
        assert abs(run_onnx(path, x)[0] - expected).max() < 1e-4


# -------------------------------------------------------------------------------------------------
# Gradient checkpointing, outputs, any size
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_path_rate", [0.0, 0.5])
def test_v2_gradient_checkpointing_gives_identical_gradients(drop_path_rate):
    model = _v2(**TINY_V2, num_labels=3, drop_path_rate=drop_path_rate)
    check_checkpointing_gives_identical_gradients(model, images(4, 64, 64), torch.tensor([1, 2, 0, 1]))


def test_v2_hidden_states_and_attentions_in_dicts_and_tuples():
    model = _v2(SwinModel, **TINY_V2)
    x = images(2, 64, 64)
    with torch.no_grad():
        out = model(x, output_hidden_states=True, output_attentions=True)
        as_tuple = model(x, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert [tuple(h.shape) for h in out.hidden_states] == [(2, 1024, 16), (2, 256, 32), (2, 64, 64), (2, 16, 128), (2, 16, 128)]
    assert [tuple(m.shape) for m in out.reshaped_hidden_states][1:3] == [(2, 32, 16, 16), (2, 64, 8, 8)]
    # (B * windows, heads, N, N): 4x4 windows, the last stage (4x4 tokens) one window
    assert [tuple(a.shape) for a in out.attentions] == [(128, 1, 16, 16), (32, 2, 16, 16), (8, 4, 16, 16), (2, 8, 16, 16)]
    assert all(torch.allclose(a.sum(-1), torch.ones(())) for a in out.attentions)
    flat = [out.last_hidden_state, out.pooler_output, *out.hidden_states, *out.attentions, *out.reshaped_hidden_states]
    assert len(as_tuple) == 5 and all(torch.equal(a, b) for a, b in zip([as_tuple[0], as_tuple[1], *as_tuple[2], *as_tuple[3], *as_tuple[4]], flat))


def test_v2_at_every_size_in_any_order_matches_a_fresh_model():
    """Window 8 at 64..160 pixels and an odd size: stages smaller than the window are attended as one window
    of their size (coordinates normalised by the pre-training window where there is one); nothing changes
    inside the model from one call to the next."""
    model = _v2(**dict(TINY_V2, window_size=8, patch_size=4, pretrained_window_sizes=[6, 6, 6, 3]), num_labels=5)
    sizes = [(64, 64), (96, 96), (160, 160), (97, 131)]
    inputs = {s: images(1, *s, seed=s[0]) for s in sizes}
    with torch.no_grad():
        fresh = {s: copy.deepcopy(model)(inputs[s]).logits for s in sizes}
    attributes_before, tensors_before = _module_state(model)
    with torch.no_grad():
        for order in ([(160, 160), (64, 64), (97, 131), (96, 96)], [(97, 131), (96, 96), (64, 64), (160, 160), (97, 131)]):
            for s in order:
                torch.testing.assert_close(model(inputs[s]).logits, fresh[s], atol=0, rtol=0)
    attributes_after, tensors_after = _module_state(model)
    assert attributes_after == attributes_before
    assert all(torch.equal(tensors_after[k], v) for k, v in tensors_before.items())
