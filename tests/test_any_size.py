"""Any input size: no crash, no hidden state, windows clamped to small maps as the official code does."""

import copy

import pytest
import torch
import transformers

import swin_hf
from swin_hf import SwinConfig, SwinForImageClassification, SwinModel, convert_state_dict
from swin_hf.modeling_swin import relative_position_index, shifted_window_mask
from swin_reference import TINY, images, randomize


@pytest.fixture(scope="module")
def swin_t():
    torch.manual_seed(0)
    config = SwinConfig.from_preset("swin-tiny-patch4-window7-224", num_labels=10)
    return randomize(SwinForImageClassification(config), std=0.05).eval()


def _module_state(model):
    """Everything a forward could mutate: non-tensor attributes of every module, and every tensor."""
    attributes = {
        name: {k: repr(v) for k, v in vars(module).items() if not k.startswith("_")}
        for name, module in model.named_modules()
    }
    return attributes, {k: v.clone() for k, v in model.state_dict().items()}


def test_swin_t_at_every_size_in_any_order_matches_a_fresh_model(swin_t):
    sizes = [128, 160, 192, 224]
    inputs = {s: images(1, s, s, seed=s) for s in sizes}
    with torch.no_grad():
        fresh = {s: copy.deepcopy(swin_t)(inputs[s]).logits for s in sizes}
    attributes_before, tensors_before = _module_state(swin_t)
    orders = [[224, 128, 192, 160, 224], [160, 128]]  # every size again after others, up and down
    with torch.no_grad():
        for order in orders:
            for s in order:
                torch.testing.assert_close(swin_t(inputs[s]).logits, fresh[s], atol=0, rtol=0)
    attributes_after, tensors_after = _module_state(swin_t)
    assert attributes_after == attributes_before
    for k, v in tensors_before.items():
        assert torch.equal(tensors_after[k], v), k


def test_transformers_crashes_at_these_sizes_where_we_do_not():
    """The bug this project fixes (transformers 5.23): its Swin-T fails on 192x192 and keeps failing at 224."""
    theirs = transformers.SwinForImageClassification(transformers.SwinConfig()).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="must match"):
        theirs(images(1, 192, 192))


def test_a_map_smaller_than_the_window_reads_the_centre_of_the_bias_table():
    """Ours with M=7 on a 6x6 map == transformers built for M=6 whose 11x11 tables are the centre of ours."""
    config = dict(embed_dim=16, depths=[2], num_heads=[2], window_size=6, image_size=24, patch_size=4, num_labels=3)
    theirs = randomize(transformers.SwinForImageClassification(transformers.SwinConfig(**config))).eval()
    state = convert_state_dict(theirs.state_dict(), source="transformers")
    for key in [k for k in state if k.endswith("relative_position_bias_table")]:
        table = torch.randn(13, 13, 2) * 5  # offsets that never occur on a 6x6 map: must not matter
        table[1:-1, 1:-1] = state[key].view(11, 11, 2)
        state[key] = table.view(169, 2)
    ours = SwinForImageClassification(SwinConfig(**dict(config, window_size=7))).eval()
    ours.load_state_dict(state)
    x = images(2, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, atol=1e-5, rtol=1e-4)


def test_derived_tensors_are_cached_and_never_stored():
    model = SwinModel(SwinConfig(**TINY)).eval()
    assert not [k for k in model.state_dict() if "index" in k or "mask" in k]
    assert not list(model.buffers())
    x = images(1, 64, 64)
    with torch.no_grad():
        model(x)
        masks, indices = shifted_window_mask.cache_info(), relative_position_index.cache_info()
        model(x)
    assert shifted_window_mask.cache_info().misses == masks.misses
    assert relative_position_index.cache_info().misses == indices.misses
    assert shifted_window_mask.cache_info().hits > masks.hits


def test_masks_made_under_inference_mode_serve_training():
    model = SwinForImageClassification(SwinConfig(**dict(TINY, num_labels=2)))
    x = images(2, 56, 72)
    shifted_window_mask.cache_clear(), relative_position_index.cache_clear()
    with torch.inference_mode():
        model(x)
    model(x, labels=torch.tensor([0, 1])).loss.backward()  # would fail on cached inference tensors
    assert model.swin.embeddings.proj.weight.grad is not None


def test_shift_mask_separates_the_regions_of_a_shifted_window():
    mask = shifted_window_mask(8, 8, 4, 2, torch.device("cpu"))  # 4 windows of 16 tokens
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window holds one region
    # bottom-right window: 4 regions of 2x2 tokens; token (0,0) sees only its own region's 4 tokens
    assert int((mask[3, 0] == 0).sum()) == 4 and set(mask.unique().tolist()) == {-100.0, 0.0}


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 1, 64, 64), r"pixel_values of shape \(batch, 3, height, width\), got \(1, 1, 64, 64\).*convert\('RGB'\)"),
        ((1, 4, 64, 64), r"got \(1, 4, 64, 64\)"),
        ((3, 64, 64), r"got \(3, 64, 64\)"),
        ((1, 3, 1, 64), r"Image of 1x64 pixels is smaller than one 2x2 patch"),
    ],
)
def test_bad_inputs_raise_clear_errors(shape, message):
    model = swin_hf.SwinModel(SwinConfig(**TINY))
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


def test_tiny_images_down_to_one_patch_run():
    model = SwinForImageClassification(SwinConfig(**dict(TINY, num_labels=2))).eval()
    for size in [(2, 2), (3, 17), (17, 3), (31, 31)]:
        with torch.no_grad():
            assert model(images(1, *size)).logits.shape == (1, 2)
