"""Swin V2 (config.version = 2): the numbers of transformers' Swinv2 with the same weights, its presets,
window transfer without resizing, and bf16 at large logits.

transformers' Swinv2 fixes its windows from `config.image_size` when it is built, so every size gets a
freshly built reference whose image_size is that size."""

import copy

import pytest
import torch
import transformers

import swin_hf
from swin_hf import SwinConfig, convert_state_dict
from swin_reference import images, randomize, train_steps

TOL = dict(atol=1e-5, rtol=1e-4)
TINY_V2 = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=4, patch_size=2)
HEADS = {
    "classification": (transformers.Swinv2ForImageClassification, swin_hf.SwinForImageClassification),
    "model": (transformers.Swinv2Model, swin_hf.SwinModel),
    "backbone": (transformers.Swinv2Backbone, swin_hf.SwinBackbone),
}


def v2_pair(config: dict, size: tuple[int, int], head: str = "classification", seed: int = 0):
    """(transformers Swinv2, swin_hf V2) in eval mode with identical weights, built for `size`."""
    theirs_cls, ours_cls = HEADS[head]
    config = dict(config, image_size=list(size))
    theirs = randomize(theirs_cls(transformers.Swinv2Config(**config)), seed).eval()
    with torch.no_grad():  # temperatures on both sides of the clamp at log(100)
        for name, p in theirs.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(torch.linspace(0.5, 6.0, p.numel()).view_as(p))
    ours = ours_cls(SwinConfig(**config, version=2)).eval()
    state = convert_state_dict(theirs.state_dict(), source="transformers")
    if head == "backbone":  # transformers' Swinv2Backbone has no `swinv2.` prefix and no final norm
        state = {("swin." + k if not k.startswith("hidden_states_norms.") else k): v for k, v in state.items()}
        missing, unexpected = ours.load_state_dict(state, strict=False)
        assert set(missing) == {"swin.norm.weight", "swin.norm.bias"} and not unexpected
    else:
        ours.load_state_dict(state, strict=True)
    return theirs, ours


CASES = {
    "square-64": (TINY_V2, (64, 64)),
    "non-square-odd-97x131": (TINY_V2, (97, 131)),
    "last-stage-equals-window": (dict(TINY_V2, depths=[2, 2], num_heads=[2, 4], patch_size=4), (32, 32)),
    "pretrained-windows": (dict(TINY_V2, pretrained_window_sizes=[3, 3, 5, 2]), (64, 64)),
    "no-qkv-bias-mlp-2": (dict(TINY_V2, qkv_bias=False, mlp_ratio=2.0), (64, 80)),
    # (the last stage is 8x10 tokens: the official rule and transformers' agree on window 8, unshifted)
    "window-8-three-stages": (dict(embed_dim=24, depths=[2, 2, 2], num_heads=[3, 6, 12], window_size=8), (128, 160)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers_swinv2(case):
    config, size = CASES[case]
    theirs, ours = v2_pair(dict(config, num_labels=5), size)
    x = images(2, *size)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, **TOL)


@pytest.mark.parametrize("paths", ["default", "all-on"])
def test_hidden_states_attentions_and_gradients_match_transformers_swinv2(paths):
    from test_fast_paths import ALL_ON

    theirs, ours = v2_pair(dict(TINY_V2, num_labels=3), (64, 64))
    if paths == "all-on":
        ours.set_fast_paths(ALL_ON)
    x, labels = images(2, 64, 64), torch.tensor([0, 2])
    with torch.no_grad():
        a = theirs(x, output_hidden_states=True, output_attentions=True)
        b = ours(x, output_hidden_states=True, output_attentions=True)
    for name in ("hidden_states", "reshaped_hidden_states", "attentions"):
        for r, g in zip(getattr(a, name), getattr(b, name), strict=True):
            torch.testing.assert_close(g, r, **TOL)
    theirs(x, labels=labels).loss.backward()
    ours(x, labels=labels).loss.backward()
    expected = convert_state_dict({n: p.grad for n, p in theirs.named_parameters()}, source="transformers")
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.parametrize("size", [(64, 64), (80, 96)])
def test_backbone_feature_maps_match_transformers_swinv2(size):
    config = dict(TINY_V2, out_features=["stem", "stage1", "stage2", "stage3", "stage4"])
    theirs, ours = v2_pair(config, size, head="backbone")
    x = images(2, *size)
    with torch.no_grad():
        for r, g in zip(theirs(x).feature_maps, ours(x).feature_maps, strict=True):
            torch.testing.assert_close(g, r, **TOL)


def test_eager_sdpa_and_auto_agree_on_v2():
    _, ours = v2_pair(dict(TINY_V2, num_labels=4), (64, 64))
    x = images(2, 64, 64)
    logits = {}
    for implementation in ("eager", "sdpa", "auto"):
        ours.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = ours(x).logits
    torch.testing.assert_close(logits["sdpa"], logits["eager"], **TOL)
    torch.testing.assert_close(logits["auto"], logits["eager"], **TOL)


V2_PARAMS = {  # transformers' Swinv2ForImageClassification on the meta device, these presets' heads
    "swinv2-tiny-patch4-window8-256": 28_347_154,
    "swinv2-tiny-patch4-window16-256": 28_347_154,
    "swinv2-small-patch4-window8-256": 49_728_418,
    "swinv2-small-patch4-window16-256": 49_728_418,
    "swinv2-base-patch4-window8-256": 87_918_816,
    "swinv2-base-patch4-window16-256": 87_918_816,
    "swinv2-base-patch4-window12-192-22k": 109_280_841,
    "swinv2-large-patch4-window12-192-22k": 228_772_549,
    "swinv2-base-patch4-window12to16-192to256-22kto1k-ft": 87_918_816,
    "swinv2-base-patch4-window12to24-192to384-22kto1k-ft": 87_918_816,
    "swinv2-large-patch4-window12to16-192to256-22kto1k-ft": 196_739_932,
    "swinv2-large-patch4-window12to24-192to384-22kto1k-ft": 196_739_932,
}


@pytest.mark.parametrize("name", sorted(V2_PARAMS))
def test_v2_presets_have_the_reference_parameter_counts(name):
    config = SwinConfig.from_preset(name, **({} if "22k-" in name or name.endswith("22k") else {"num_labels": 1000}))
    assert config.version == 2
    with torch.device("meta"):
        ours = swin_hf.SwinForImageClassification(config)
        fields = {k: getattr(config, k) for k in ("embed_dim", "depths", "num_heads", "window_size", "image_size")}
        theirs = transformers.Swinv2ForImageClassification(
            transformers.Swinv2Config(**fields, pretrained_window_sizes=config.pretrained_window_sizes, num_labels=config.num_labels)
        )
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == V2_PARAMS[name]


def test_a_window_8_checkpoint_runs_and_trains_at_window_16_without_resizing(tmp_path):
    """The continuous position bias has no table tied to a window: a window-8 checkpoint loads into a
    window-16 model as is (pretrained_window_sizes kept), gives the same bias a fresh window-16 model with
    those weights gives, and fine-tunes."""
    small = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], patch_size=4, num_labels=3, version=2)
    source = randomize(swin_hf.SwinForImageClassification(SwinConfig(**small, window_size=8, image_size=64)), std=0.1)
    source.save_pretrained(tmp_path / "w8")
    moved = swin_hf.SwinForImageClassification.from_pretrained(
        tmp_path / "w8", window_size=16, image_size=128, pretrained_window_sizes=[8, 8]
    )
    assert moved.config.window_size == 16 and moved.config.pretrained_window_sizes == [8, 8]
    for key, tensor in source.state_dict().items():
        torch.testing.assert_close(moved.state_dict()[key], tensor, atol=0, rtol=0)
    x = images(2, 128, 128)
    with torch.no_grad():
        assert torch.isfinite(moved(x).logits).all()
    losses = train_steps(moved, 5, 1e-3, pixel_values=x, labels=torch.tensor([0, 2]))
    assert losses[-1] < losses[0]


def test_bf16_autocast_forward_and_backward_stay_finite_at_large_logits():
    """Temperatures at the clamp (tau = 100) and large activations: cosine attention keeps the logits
    within +-116 whatever the activations, so bf16 autocast stays finite forward and backward."""
    model = randomize(swin_hf.SwinForImageClassification(SwinConfig(**TINY_V2, num_labels=3, version=2)), std=0.3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.fill_(10.0)  # clamped to log(100)
    model.train()
    x = images(2, 64, 64) * 50.0
    with torch.autocast("cpu", torch.bfloat16):
        out = model(x, labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_res_post_norm_blocks_start_as_identity():
    """The official initialisation sets the post-norms of every V2 block to zero, so that a freshly built
    model's blocks add nothing to the residual stream."""
    model = swin_hf.SwinModel(SwinConfig(**TINY_V2, version=2))
    block = model.stages[0].blocks[0]
    assert not block.norm1.weight.any() and not block.norm2.weight.any()
    x = torch.randn(1, 8, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(block(x, 4, 2, None)[0], x)
    v1 = swin_hf.SwinModel(SwinConfig(**TINY_V2)).stages[0].blocks[0]
    assert (v1.norm1.weight == 1).all()


def test_a_transformers_swinv2_checkpoint_loads_through_from_pretrained(tmp_path):
    theirs, _ = v2_pair(dict(TINY_V2, num_labels=3), (64, 64))
    theirs.save_pretrained(tmp_path / "theirs")
    ours = swin_hf.SwinForImageClassification.from_pretrained(tmp_path / "theirs").eval()
    assert ours.config.version == 2 and ours.config.model_type == "swin_hf"
    x = images(2, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, theirs(x).logits, **TOL)
    copy.deepcopy(ours).save_pretrained(tmp_path / "ours")
    again = swin_hf.SwinForImageClassification.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, theirs(x).logits, **TOL)
