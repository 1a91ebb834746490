"""ONNX export of swin_hf models (`pip install swin_hf[export]`: onnx, onnxruntime, onnxscript).

    >>> from swin_hf import SwinForImageClassification, export_onnx
    >>> model = SwinForImageClassification.from_pretrained("...")  # doctest: +SKIP
    >>> export_onnx(model, "swin.onnx", image_size=224)  # doctest: +SKIP

The graph takes `pixel_values` (batch, channels, height, width) and returns `logits` for
SwinForImageClassification, `last_hidden_state` and `pooler_output` for SwinModel, and the feature maps
for SwinBackbone. The batch dimension is dynamic by default.

Height and width: a traced graph keeps the branches the model took at the traced size (whether a stage
map is padded to whole windows, whether it is attended as one window), so it is only right at sizes
that take the same branches. A fixed-size export accepts its own size; `dynamic_hw=True` accepts the
sizes at which every stage is split into whole shifted windows with no padding: multiples of
patch x 2^(stages-1) x window, from twice that. The accepted sizes are stored in the file's metadata (`swin_hf.input_size`) and
`run_onnx` checks them before running (`onnx_input_sizes`, `check_input_size`).
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from .fast_paths import FastPaths

SIZE_KEY = "swin_hf.input_size"
MAX_SIDE = 8192


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


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def dynamic_size_rule(model: nn.Module) -> dict:
    """The input sizes a `dynamic_hw` graph of `model` is exact at, per side: {"height": {"multiple", "min",
    "max"}, "width": {...}}. At a multiple of patch x 2^(stages-1) x window every stage map is a whole number
    of windows (no padding, no odd patch merging); from twice that, every map is larger than the window, so
    no stage is attended as one window. (torch.export also assumes the number of multiples is not 1.)"""
    config = model.config
    rule = {}
    for side, patch in zip(("height", "width"), _pair(config.patch_size)):
        multiple = patch * 2 ** (len(config.depths) - 1) * config.window_size
        rule[side] = {"multiple": multiple, "min": 2 * multiple, "max": max(2 * multiple, MAX_SIDE // multiple * multiple)}
    return rule


def _describe(side: dict) -> str:
    if side["min"] == side["max"]:
        return f"exactly {side['min']}"
    return f"a multiple of {side['multiple']} from {side['min']} to {side['max']}"


def _fits(side: dict, value: int) -> bool:
    return side["min"] <= value <= side["max"] and (value - side["min"]) % side["multiple"] == 0


def check_input_size(sizes: dict, height: int, width: int) -> None:
    """Raise ValueError unless (height, width) is among `sizes` (as `onnx_input_sizes` returns them),
    naming the sizes that work."""
    if _fits(sizes["height"], height) and _fits(sizes["width"], width):
        return
    raise ValueError(
        f"pixel_values of {height}x{width} pixels do not fit this ONNX graph: its height must be "
        f"{_describe(sizes['height'])} and its width {_describe(sizes['width'])} (e.g. {sizes['height']['min']}x"
        f"{sizes['width']['min']}); at other sizes its outputs would be wrong. Resize the images, or export "
        "another graph (swin_hf.export_onnx with image_size=..., or dynamic_hw=True)."
    )


def onnx_input_sizes(path: str | os.PathLike) -> dict | None:
    """The accepted input sizes stored in an exported file's metadata, or None for a file without them."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    found = {p.key: p.value for p in model.metadata_props}
    return json.loads(found[SIZE_KEY]) if SIZE_KEY in found else None


def _write_sizes(path: str, sizes: dict) -> None:
    import onnx

    model = onnx.load(path)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, SIZE_KEY: json.dumps(sizes)})
    onnx.save(model, path)


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
        dynamic_hw: also leave height and width free, over the sizes where the graph is exact
            (`dynamic_size_rule`: multiples of patch x 2^(stages-1) x window from twice that, e.g. 448,
            672, ... for Swin-T). Without `image_size` the graph is traced at the smallest of them not
            below the config's size; an `image_size` outside them raises ValueError naming them. The
            accepted sizes are stored in the file and checked by `run_onnx`.
        opset_version: ONNX opset (>= 18).
        verify: run the exported graph with onnxruntime on the example input and raise if its outputs
            differ from PyTorch's by more than `atol`.

    Returns:
        the path written, as a string.
    """
    path = os.fspath(path)
    config = model.config
    explicit = image_size is not None
    height, width = _pair(image_size if explicit else config.image_size)
    if min(height, width) <= 0:
        raise ValueError(f"image_size must be positive, got {height}x{width}.")
    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if dynamic_hw:
        if getattr(config, "use_absolute_embeddings", False):
            raise ValueError(
                "dynamic_hw=True is not supported for a model with absolute position embeddings (the table is "
                "resized for each input size); export one graph per resolution (dynamic_hw=False, image_size=...)."
            )
        sizes = dynamic_size_rule(model)
        if not explicit:  # the smallest accepted size not below the config's
            height, width = (max(s["min"], -(-v // s["multiple"]) * s["multiple"]) for s, v in
                             ((sizes["height"], height), (sizes["width"], width)))
        check_input_size(sizes, height, width)
        for axis, side in ((2, "height"), (3, "width")):
            rule = sizes[side]
            blocks = torch.export.Dim(f"{side}_blocks", min=rule["min"] // rule["multiple"], max=rule["max"] // rule["multiple"])
            dims[axis] = rule["multiple"] * blocks
    else:
        sizes = {side: {"multiple": v, "min": v, "max": v} for side, v in (("height", height), ("width", width))}
    dynamic_shapes = {"pixel_values": dims} if dims else None
    wrapper = _OnnxOutputs(model).eval()
    example = torch.randn(batch_size, config.num_channels, height, width)

    # the speed paths are for eager CPU runs: the graph is traced from the plain model, so that no path's
    # size check can enter it (the outputs are the same; `verify` runs the model with its own paths)
    paths = getattr(model, "fast_paths", None)
    if paths is not None:
        model.set_fast_paths(FastPaths.plain())
    try:
        with torch.no_grad():
            torch.onnx.export(
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
    finally:
        if paths is not None:
            model.set_fast_paths(paths)
    _write_sizes(path, sizes)
    if verify:
        with torch.no_grad():
            expected = wrapper(example)
        expected = (expected,) if isinstance(expected, torch.Tensor) else expected
        got = run_onnx(path, example)
        for name, e, g in zip(wrapper.output_names, expected, got):
            diff = float(abs(e.numpy() - g).max())
            if diff > atol:
                raise RuntimeError(f"ONNX output {name!r} differs from PyTorch by {diff:.2e} (> {atol}).")
    return path


def run_onnx(path: str | os.PathLike, pixel_values: torch.Tensor) -> list:
    """Run an exported graph with onnxruntime (CPU); returns the outputs as numpy arrays.

    The input is checked first: float32 (B, C, H, W) at a size the graph accepts (its `swin_hf.input_size`
    metadata); anything else raises ValueError saying what the graph takes."""
    import onnxruntime

    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}.")
    if pixel_values.dtype != torch.float32:
        raise ValueError(
            f"pixel_values must be float32 (normalised pixels, as the image processor returns), got {pixel_values.dtype}."
        )
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    stored = session.get_modelmeta().custom_metadata_map.get(SIZE_KEY)
    if stored is not None:
        check_input_size(json.loads(stored), *pixel_values.shape[-2:])
    return session.run(None, {"pixel_values": pixel_values.detach().cpu().numpy()})


__all__ = ["SIZE_KEY", "check_input_size", "dynamic_size_rule", "export_onnx", "onnx_input_sizes", "run_onnx"]
