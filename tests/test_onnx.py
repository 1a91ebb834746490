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


@pytest.mark.parametrize("onednn", [False, True])
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
