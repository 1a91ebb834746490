"""A swin_hf model in its fastest inference form on the device it is on, in one call.

    >>> import swin_hf
    >>> model = swin_hf.SwinForImageClassification.from_pretrained("...")  # doctest: +SKIP
    >>> model = swin_hf.optimize_for_inference(model)  # doctest: +SKIP
    >>> model(pixel_values).logits  # same inputs, same outputs (fp32), faster  # doctest: +SKIP

What it does (each choice measured on the machines in BENCHMARKS.md, "Serving"):
  - eval mode, no autograd, the weights frozen (`requires_grad_(False)`);
  - bf16 where the hardware multiplies bf16 natively (CPUs with AMX or AVX512-BF16, CUDA GPUs with bf16),
    as autocast inside the compiled graph, so that the weight casts are folded into constants once;
    fp32 elsewhere; outputs come back in fp32;
  - torch.compile with Inductor's freezing (weights and the derived attention biases become constants,
    products prepacked for oneDNN on CPU with their bias, GELU and residual add fused) and, on CPU, the
    graph's calls written in C++ (cpp_wrapper); the batch dimension is dynamic from the first call, and each
    new image size compiles once;
  - `quantize="int8"`: post-training quantization of the products (PT2E with the x86 Inductor quantizer,
    calibrated on `calibration` images), on x86 CPUs, where torchao is installed.

Its weights must not change once optimized (it refuses `train()`): with Inductor's freezing the graphs
compiled so far keep the weights they were compiled with while a new image size compiles with the weights
of that moment, and without compile the changes show at once. After changing weights (training, loading,
merging adapters), optimize a fresh model. `copy.deepcopy` gives an independent optimized model (it
compiles on its own first calls); pickling (`torch.save`, multiprocessing) is refused: save the model with
`save_pretrained` and optimize it after loading.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import platform

import torch
from torch import nn

from .fast_paths import CpuFeatures

logger = logging.getLogger(__name__)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: CPUs with AMX or AVX512-BF16, CUDA GPUs that
    report bf16 support."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = CpuFeatures.of_this_machine()
        return cpu.amx_bf16 or cpu.avx512_bf16
    return False


def optimize_for_inference(
    model: nn.Module,
    dtype: str | torch.dtype = "auto",
    quantize: str | None = None,
    calibration: torch.Tensor | None = None,
    compile: bool = True,
    max_autotune: bool = False,
    backend: str = "inductor",
    cpp_wrapper: bool = True,
    image_sizes=None,
) -> nn.Module:
    """Turn `model` (any swin_hf model) into its fastest inference form on its device; returns the same
    object, whose calls take the same inputs and give the same outputs (floating outputs in fp32).

    Args:
        dtype: "auto" (bf16 where the device multiplies bf16 natively, else fp32; fp32 with int8), "bf16" or
            "fp32".
        quantize: None, or "int8" (x86 CPUs, needs torchao; `calibration` images required, e.g. a few
            dozen processed by the model's image processor).
        compile: torch.compile the forward (False: only the dtype choice, eagerly).
        max_autotune: let Inductor benchmark its own GEMM kernels against the libraries' (slower compile).
        backend: the torch.compile backend; Inductor's options (freezing, max_autotune, cpp_wrapper) apply to
            "inductor".
        cpp_wrapper: on CPU, let Inductor write the compiled graph's calls in C++ rather than Python (less
            overhead per call; compiling takes about twice as long). Not used with int8.
        image_sizes: image sizes (ints or (height, width) pairs) to compile now rather than at their first
            call: each is run once at batch 1 and once at batch 2 (torch.compile makes a graph for batch 1
            and one for every other batch size). Every size compiled later logs a line when it compiles.
    """
    if getattr(model, "optimized_for_inference", None):
        raise ValueError("This model is already optimized for inference; optimize a freshly loaded model instead.")
    options = dict(dtype=dtype, quantize=quantize, calibration=calibration, compile=compile, max_autotune=max_autotune,
                   backend=backend, cpp_wrapper=cpp_wrapper)
    sizes = _image_sizes(image_sizes, compile)
    device = next(model.parameters()).device
    if dtype == "auto":  # (int8 products take fp32 activations)
        dtype = torch.bfloat16 if native_bf16(device) and quantize is None else torch.float32
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype={dtype!r}: use 'auto', 'bf16' or 'fp32'.")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r}: use None or 'int8'.")
    model.eval().requires_grad_(False)
    forward = model.forward
    if quantize == "int8":
        forward = _int8_forward(model, device, calibration)
    call = _inference_call(forward, device.type, dtype)
    if compile:
        compiled = torch.compile(call, backend=backend)
        # Inductor freezes (weights become constants, products prepacked for oneDNN with their bias and
        # activation fused) only when its config says so and autograd is off *around* the compiled call, at
        # each compilation: torch.compile(options={"freezing": True}) alone does not freeze (torch 2.13)
        inductor = {"freezing": True, "max_autotune": max_autotune,
                    "cpp_wrapper": cpp_wrapper and device.type == "cpu" and quantize is None}
        settings = functools.partial(torch._inductor.config.patch, inductor) if backend == "inductor" else contextlib.nullcontext
        # Inductor cannot fold the int8 weights' prepacking into constants under inference_mode (it then
        # traces the prepack ops, which have no fake kernels): the quantized graph runs outside it
        mode = functools.partial(torch.inference_mode, False) if quantize else contextlib.nullcontext

        seen = set()  # (height, width, batch of 1) of the graphs compiled so far

        @functools.wraps(forward)
        def call(*args, **kwargs):
            pixels = args[0] if args else kwargs.get("pixel_values")
            if isinstance(pixels, torch.Tensor) and pixels.ndim == 4:
                torch._dynamo.maybe_mark_dynamic(pixels, 0)  # any batch size, one graph
                key = (pixels.shape[-2], pixels.shape[-1], pixels.shape[0] == 1)
                if key not in seen:
                    seen.add(key)
                    logger.info("optimize_for_inference: compiling for image size %dx%d (%s); pass image_sizes= to "
                                "compile sizes ahead of time", key[0], key[1], "batch 1" if key[2] else "any batch > 1")
            with mode(), torch.no_grad(), settings():
                return compiled(*args, **kwargs)

    model.forward = call
    model.optimized_for_inference = {"dtype": str(dtype).removeprefix("torch."), "quantize": quantize, "compile": compile}
    model.train = functools.partial(_refuse_training, model)
    # copies: a deep copy is optimized on its own; pickling (and shallow copies) are refused with what to do
    model._inference_options = options
    model.__deepcopy__ = functools.partial(_deepcopy_optimized, model)
    model.__reduce_ex__ = _refuse_pickling
    logger.info("optimized for inference on %s: %s", device, model.optimized_for_inference)
    channels = getattr(getattr(model, "config", None), "num_channels", 3)
    for height, width in sizes:
        for batch in (1, 2):
            model(torch.zeros(batch, channels, height, width, device=device))
    return model


_OPTIMIZATION_ATTRIBUTES = ("forward", "train", "optimized_for_inference", "_inference_options", "__deepcopy__",
                            "__reduce_ex__")


def _image_sizes(image_sizes, compile: bool) -> list[tuple[int, int]]:
    """`image_sizes` as (height, width) pairs, checked."""
    if image_sizes is None:
        return []
    if not compile:
        raise ValueError("image_sizes= compiles sizes ahead of time; it needs compile=True.")
    sizes = []
    for size in image_sizes:
        pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else ()
        if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair):
            raise ValueError(f"image_sizes: {size!r} is not an image size; give ints or (height, width) pairs, e.g. "
                             "[224, (256, 320)].")
        sizes.append(pair)
    return sizes


def _deepcopy_optimized(model: nn.Module, memo: dict) -> nn.Module:
    """An independent optimized copy: the model's state copied without its optimization, then optimized
    with the same options (its compiled graphs are its own)."""
    clone = model.__class__.__new__(model.__class__)
    memo[id(model)] = clone
    state = {k: v for k, v in model.__dict__.items() if k not in _OPTIMIZATION_ATTRIBUTES}
    clone.__dict__.update(copy.deepcopy(state, memo))
    return optimize_for_inference(clone, **model._inference_options)


def _refuse_pickling(protocol=None):
    raise TypeError(
        "A model optimized for inference cannot be pickled or shallow-copied (torch.save, multiprocessing, "
        "copy.copy): its forward is compiled for this process. Save it with model.save_pretrained(folder) and "
        "call optimize_for_inference again after loading; copy.deepcopy gives an independent optimized copy."
    )


def _inference_call(forward, device_type: str, dtype: torch.dtype):
    """forward under no_grad and (for bf16) autocast, with floating outputs back in fp32."""
    autocast = (
        functools.partial(torch.autocast, device_type, dtype=torch.bfloat16)
        if dtype == torch.bfloat16
        else contextlib.nullcontext
    )

    @functools.wraps(forward)
    def call(*args, **kwargs):
        with torch.no_grad(), autocast():
            out = forward(*args, **kwargs)
        return _to_fp32(out)

    return call


def _to_fp32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return type(value)(_to_fp32(v) for v in value) if not hasattr(value, "_fields") else type(value)(*map(_to_fp32, value))
    if isinstance(value, dict):  # ModelOutput is an OrderedDict
        for key in list(value.keys()):
            value[key] = _to_fp32(value[key])
        return value
    return value


def _refuse_training(model: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError(
            "This model was optimized for inference (frozen weights, compiled for eval). Train a freshly loaded "
            "model instead, and optimize it again afterwards."
        )
    return nn.Module.train(model, False)


def _int8_forward(model: nn.Module, device: torch.device, calibration: torch.Tensor | None):
    """The model's forward with its products quantized to int8 (PT2E, x86 Inductor quantizer)."""
    if device.type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise ValueError(f"quantize='int8' runs on x86 CPUs; this model is on {device} ({platform.machine()}).")
    if calibration is None or calibration.ndim != 4:
        raise ValueError(
            "quantize='int8' needs calibration images: a (N, channels, H, W) tensor of processed images, e.g. "
            "processor(images, return_tensors='pt').pixel_values for a few dozen images of the task."
        )
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as error:
        raise ImportError("quantize='int8' needs torchao: pip install torchao") from error

    class TensorOutputs(nn.Module):  # tensors in, tensors out, for torch.export
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            out = self.inner(pixel_values, return_dict=True)
            return tuple(v for v in out.values() if isinstance(v, torch.Tensor))

    wrapper = TensorOutputs(model).eval()
    example = calibration[:2]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        exported = torch.export.export(wrapper, (example,), dynamic_shapes={"pixel_values": {0: batch}}).module()
        quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        for start in range(0, len(calibration), 8):
            prepared(calibration[start : start + 8])
        quantized = convert_pt2e(prepared)
    keys = [k for k, v in model(example, return_dict=True).items() if isinstance(v, torch.Tensor)]
    output_class = type(model(example[:1], return_dict=True))

    def forward(pixel_values=None, **kwargs):
        if kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
            raise ValueError("The int8 model returns its main outputs only (no hidden states or attentions).")
        return output_class(**dict(zip(keys, quantized(pixel_values))))

    return forward


__all__ = ["native_bf16", "optimize_for_inference"]
