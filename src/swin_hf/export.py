"""ONNX export of swin_hf models (`pip install swin_hf[export]`: onnx, onnxruntime, onnxscript).

    >>> from swin_hf import SwinForImageClassification, export_onnx
    >>> model = SwinForImageClassification.from_pretrained("...")  # doctest: +SKIP
    >>> export_onnx(model, "swin.onnx", image_size=224)  # doctest: +SKIP

The graph takes `pixel_values` (batch, channels, height, width) and returns `logits` for
SwinForImageClassification, `last_hidden_state` and `pooler_output` for SwinModel, and the feature maps
for SwinBackbone. The batch dimension is dynamic by default.
"""

from __future__ import annotations

import os

import torch
from torch import nn


class _OnnxOutputs(nn.Module):
    """Calls the model with tensors-only outputs and names them for the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        out = None
        kind = type(model).__name__
        if kind.endswith("ForImageClassification"):
            out = ("logits",)
        elif kind.endswith("Backbone"):
            out = tuple(f"feature_map_{i}" for i in range(len(model.out_features)))
        else:
            out = ("last_hidden_state",) + (("pooler_output",) if getattr(model, "add_pooling_layer", False) else ())
        self.output_names = list(out)

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values, return_dict=True)
        if "logits" in self.output_names:
            return out.logits
        if self.output_names[0].startswith("feature_map"):
            return tuple(out.feature_maps)
        return tuple(getattr(out, name) for name in self.output_names)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 2,
    dynamic_batch: bool = True,
    dynamic_hw: bool = False,
    opset_version: int = 18,
    verify: bool = True,
    atol: float = 1e-4,
) -> str:
    """Export `model` (SwinForImageClassification, SwinModel or SwinBackbone) to an ONNX file at `path`.

    Args:
        image_size: the (height, width) the graph is traced at; defaults to `model.config.image_size`.
        batch_size: the batch of the example input used for tracing.
        dynamic_batch: leave the batch dimension free (the graph then runs with any batch size).
        dynamic_hw: also leave height and width free. Window sizes, padding and the SW-MSA masks depend
            on the feature-map sizes, so torch.export specialises them unless every stage keeps the same
            case; only inputs whose every stage map is a multiple of the window and larger than it
            (e.g. multiples of 32 * window_size for patch 4 and 4 stages) then give correct results.
            Prefer one export per resolution.
        opset_version: ONNX opset (>= 18).
        verify: run the exported graph with onnxruntime on the example input and raise if its outputs
            differ from PyTorch's by more than `atol`.

    Returns:
        the path written, as a string.
    """
    path = os.fspath(path)
    config = model.config
    if image_size is None:
        image_size = config.image_size
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    wrapper = _OnnxOutputs(model).eval()
    example = torch.randn(batch_size, config.num_channels, height, width)

    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if dynamic_hw:
        dims[2] = torch.export.Dim.AUTO
        dims[3] = torch.export.Dim.AUTO
    dynamic_shapes = {"pixel_values": dims} if dims else None

    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            path,
            input_names=["pixel_values"],
            output_names=wrapper.output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset_version,
            dynamo=True,
            external_data=False,
        )
        del program
        if verify:
            expected = wrapper(example)
            expected = (expected,) if isinstance(expected, torch.Tensor) else expected
            got = run_onnx(path, example)
            for name, e, g in zip(wrapper.output_names, expected, got):
                diff = float(abs(e.numpy() - g).max())
                if diff > atol:
                    raise RuntimeError(f"ONNX output {name!r} differs from PyTorch by {diff:.2e} (> {atol}).")
    return path


def run_onnx(path: str | os.PathLike, pixel_values: torch.Tensor) -> list:
    """Run an exported graph with onnxruntime (CPU); returns the outputs as numpy arrays."""
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixel_values.detach().cpu().numpy()})
