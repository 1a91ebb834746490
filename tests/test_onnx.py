"""ONNX export: onnxruntime matches PyTorch (atol 1e-4) with a dynamic batch (and dynamic height/width)."""

import pytest
import torch

from swin_hf import FastPaths, SwinConfig, SwinForImageClassification, SwinModel
from swin_hf.cli import main as swin_hf_cli
from swin_hf.export import export_onnx, run_onnx

TINY = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=4, image_size=32, patch_size=2)


def _check(model, path, shapes, output=0, attr="logits"):
    for shape in shapes:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = getattr(model(x), attr).numpy()
        got = run_onnx(path, x)[output]
        assert got.shape == expected.shape
        assert abs(got - expected).max() < 1e-4, shape


@pytest.mark.parametrize("onednn", [pytest.param(False, marks=pytest.mark.slow), True])
def test_export_classifier_dynamic_batch(tmp_path, onednn):
    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(**TINY, num_labels=5)).eval()
    if onednn:  # every product on oneDNN in eager, as in a full-size model on AMD (export traces F.linear)
        model.set_fast_paths(FastPaths(onednn_products=True, onednn_min_macs=0))
    path = export_onnx(model, tmp_path / "swin.onnx", batch_size=2, dynamic_batch=True)
    _check(model, path, [(1, 3, 32, 32), (3, 3, 32, 32)])


@pytest.mark.slow
def test_export_model_dynamic_height_width(tmp_path):
    torch.manual_seed(0)
    model = SwinModel(SwinConfig(**TINY)).eval()
    path = export_onnx(model, tmp_path / "swin.onnx", dynamic_batch=True, dynamic_hw=True)
    # every stage map a multiple of the window and larger than it: 32 -> (16, 8), 48 -> (24, 12), 64 -> (32, 16)
    _check(model, path, [(1, 3, 32, 32), (2, 3, 48, 64)], attr="last_hidden_state")
    _check(model, path, [(3, 3, 64, 48)], output=1, attr="pooler_output")


def test_export_onnx_command(tmp_path, capsys):
    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(**TINY, num_labels=4)).eval()
    model.save_pretrained(tmp_path / "model")
    assert swin_hf_cli(["export-onnx", str(tmp_path / "model"), str(tmp_path / "swin.onnx")]) == 0
    assert "dynamic batch" in capsys.readouterr().out
    _check(model, tmp_path / "swin.onnx", [(1, 3, 32, 32), (4, 3, 32, 32)])
    assert swin_hf_cli(["export-onnx", str(tmp_path / "missing"), str(tmp_path / "x.onnx")]) == 1
    assert "export-onnx: error" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Free height and width: exact at every size the graph accepts, refused (with the sizes that work) elsewhere
# ------------------------------------------------------------------------------------------------


def _sweep(model, path, sizes, attr="logits"):
    """Every (h, w) in sizes x sizes: onnxruntime equals PyTorch where the stored rule accepts the size;
    run_onnx raises a ValueError naming the accepted sizes everywhere else. Returns the accepted sizes."""
    import onnxruntime

    from swin_hf.export import check_input_size, onnx_input_sizes

    rule = onnx_input_sizes(path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    accepted = []
    for h in sizes:
        for w in sizes:
            x = torch.randn(1, 3, h, w)
            try:
                check_input_size(rule, h, w)
            except ValueError:
                with pytest.raises(ValueError, match=rf"{h}x{w} pixels do not fit this ONNX graph: its height must be"):
                    run_onnx(path, x)
                continue
            with torch.no_grad():
                expected = getattr(model(x), attr)
            expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
            got = session.run(None, {"pixel_values": x.numpy()})[0]
            assert got.shape == expected.shape and abs(got - expected).max() < 1e-4, (h, w, abs(got - expected).max())
            accepted.append((h, w))
    return accepted


@pytest.mark.slow
def test_dynamic_hw_export_is_exact_at_every_accepted_size_and_refuses_the_rest(tmp_path):
    """Patch 2, two stages, window 4: every stage is whole shifted windows at multiples of 2*2*4 = 16 from 32.
    Before the sizes were constrained, 16x16 (one window in stage 2) and 24x40 (padding) ran and were wrong."""
    from swin_hf.export import onnx_input_sizes

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(**TINY, num_labels=3)).eval()
    path = export_onnx(model, tmp_path / "swin.onnx", dynamic_hw=True)
    assert onnx_input_sizes(path) == {side: {"multiple": 16, "min": 32, "max": 8192} for side in ("height", "width")}
    accepted = _sweep(model, path, range(8, 105, 8))
    assert sorted({h for h, _ in accepted}) == [32, 48, 64, 80, 96]
    assert len(accepted) == 25
    with pytest.raises(ValueError, match="a multiple of 16 from 32 to 8192"):
        export_onnx(model, tmp_path / "other.onnx", image_size=40, dynamic_hw=True)


def test_a_raw_onnxruntime_user_reads_the_accepted_sizes_from_the_metadata(tmp_path):
    """What README tells a user of plain onnxruntime: the accepted sizes are JSON under the metadata key
    `swin_hf.input_size`; a refused size fails inside the graph (a Reshape node) or runs wrong, while
    run_onnx refuses it first naming the sizes that work."""
    import json

    import onnxruntime

    from swin_hf.export import SIZE_KEY, onnx_input_sizes

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(**{**TINY, "depths": [1, 1]}, num_labels=3)).eval()
    path = export_onnx(model, tmp_path / "swin.onnx", dynamic_hw=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rule = json.loads(session.get_modelmeta().custom_metadata_map[SIZE_KEY])
    assert SIZE_KEY == "swin_hf.input_size" and rule == onnx_input_sizes(path)
    assert rule["height"] == {"multiple": 16, "min": 32, "max": 8192}
    x = torch.randn(1, 3, 40, 40)
    with pytest.raises(Exception, match="Reshape"):
        session.run(None, {"pixel_values": x.numpy()})
    with pytest.raises(ValueError, match="40x40 pixels do not fit this ONNX graph: its height must be a multiple of 16"):
        run_onnx(path, x)


@pytest.mark.slow
@pytest.mark.parametrize("paths", ["this-cpu", "all-on"])
def test_dynamic_hw_export_with_speed_paths_on(tmp_path, paths):
    """The graph is traced from the plain model whatever paths the model runs eagerly (this CPU's defaults,
    or every path on with thresholds low enough to run): no path's size check fixes the batch or the size,
    and the model keeps its own paths afterwards."""
    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(**TINY, num_labels=3)).eval()
    chosen = FastPaths.for_this_cpu() if paths == "this-cpu" else FastPaths(
        onednn_products=True, onednn_min_macs=0, mlp_tile_tokens=50, inference_group_size=4096, skip_dropped_branches=True
    )
    model.set_fast_paths(chosen)
    path = export_onnx(model, tmp_path / "swin.onnx", dynamic_hw=True, batch_size=3)
    assert model.fast_paths == chosen
    _check(model, path, [(1, 3, 32, 32), (5, 3, 48, 64)])


@pytest.mark.slow
def test_dynamic_hw_backbone_and_fixed_size_exports(tmp_path):
    """A backbone graph with free height and width (feature maps at every accepted size); a fixed-size
    graph accepts its own size only."""
    from swin_hf import SwinBackbone

    torch.manual_seed(0)
    backbone = SwinBackbone(SwinConfig(**TINY, out_features=["stage1", "stage2"])).eval()
    path = export_onnx(backbone, tmp_path / "backbone.onnx", dynamic_hw=True, image_size=(32, 48))
    accepted = _sweep(backbone, path, range(8, 65, 8), attr="feature_maps")
    assert sorted({h for h, _ in accepted}) == [32, 48, 64]
    model = SwinForImageClassification(SwinConfig(**TINY, num_labels=3)).eval()
    fixed = export_onnx(model, tmp_path / "fixed.onnx", image_size=(24, 40))
    assert _sweep(model, fixed, [24, 32, 40]) == [(24, 40)]


def test_export_onnx_command_refuses_missing_paths_and_typos_at_once(tmp_path, capsys):
    import time

    started = time.perf_counter()
    assert swin_hf_cli(["export-onnx", "swin-tiny-patch4-window7-22", str(tmp_path / "x.onnx")]) == 1
    assert "did you mean 'swin-tiny-patch4-window7-224'" in capsys.readouterr().err
    assert swin_hf_cli(["export-onnx", str(tmp_path / "no" / "such"), str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "no such folder" in err and "Repo id" not in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - started < 10  # no Hub requests, no retries
    assert swin_hf_cli(["export-onnx", "swin-tiny-patch4-window7-224", str(tmp_path / "x.onnx"), "--image-size", "-64"]) == 2
    err = capsys.readouterr().err
    assert "--image-size: expected a whole number of pixels >= 1, got '-64'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()
