"""Checkpoint files in, a `save_pretrained` folder out: the engine of `swin-hf convert`.

    read   .pth / .pt / .bin / .ckpt with torch.load(weights_only=True) (never plain unpickling), unwrapping
           {"model": ...} / {"state_dict": ...}; or .safetensors; or a folder / Hub id holding one
    convert  convert.convert_state_dict (strict), config from the preset, the source's config.json or the
           tensor shapes; resize.adapt_state_dict when the preset has another window / image size
    write  safetensors weights + config, the image processor of the source's preprocessing, a model card;
           into a temporary folder next to OUT_DIR, renamed into place only when everything succeeded
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configuration_swin import PRESETS, SwinConfig, to_pair
from .convert import SOURCES, ConversionError, config_from_transformers, convert_state_dict, infer_config
from .image_processing_swin import SwinImageProcessor

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


class CheckpointError(ConversionError):
    """A file or folder that is not a readable checkpoint."""


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a .safetensors or torch file (`{"model": sd}` / `{"state_dict": sd}` unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error types
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({error}). Expected the model.safetensors of a timm or "
                "transformers checkpoint; a truncated download also gives this error."
            ) from error
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError (bad zip), EOFError (truncated), ...
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint that torch.load(weights_only=True) can read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Expected a {'/'.join(_TORCH_SUFFIXES)} file "
            "holding a state dict, like the official swin_*.pth; a truncated download also gives this error."
        ) from error
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else f"dict with keys {list(obj)[:6]}"
        raise CheckpointError(
            f"{path}: holds a {kind}, not a state dict (a mapping of tensor names to tensors, possibly under "
            "'model' or 'state_dict')."
        )
    return dict(obj)


@dataclass
class Source:
    """A resolved SRC: the weights file and the side files that describe it."""

    weights: Path
    config: dict | None = None  # config.json (transformers config, or timm's with `pretrained_cfg`)
    preprocessor: dict | None = None  # preprocessor_config.json (transformers)


def resolve_source(src: str, source: str) -> Source:
    """A local file, a local folder holding model.safetensors / pytorch_model.bin, or a Hub id
    (`org/name`; for official .pth files on the Hub, `org/name/file.pth`)."""
    path = Path(src)
    if path.is_file():
        return Source(path, *_side_files(path.parent) if source != "official" else (None, None))
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return Source(path / name, *_side_files(path))
        raise CheckpointError(f"{path}: a folder without {' or '.join(WEIGHT_FILES)}; pass the weights file itself.")
    if re.fullmatch(r"[\w.-]+/[\w.-]+(/[\w./-]+)?", src) and not src.startswith((".", "/")):
        return _download(src, source)
    raise CheckpointError(f"{src}: no such file or folder, and not a Hub id of the form 'org/name'.")


def _side_files(folder: Path) -> tuple[dict | None, dict | None]:
    def load(name):
        file = folder / name
        return json.loads(file.read_text()) if file.is_file() else None

    return load("config.json"), load("preprocessor_config.json")


def _download(repo: str, source: str) -> Source:
    import huggingface_hub

    def get(repo_id, name, required):
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, name))
        except Exception as error:
            if required:
                raise CheckpointError(f"Could not download {name} of {repo_id} from the Hub: {error}") from error
            return None

    parts = repo.split("/")
    if len(parts) > 2:  # org/name/path/to/file
        return Source(get("/".join(parts[:2]), "/".join(parts[2:]), required=True))
    weights = None
    for name in WEIGHT_FILES:
        if (weights := get(repo, name, required=False)) is not None:
            break
    if weights is None:
        raise CheckpointError(f"Could not download {' or '.join(WEIGHT_FILES)} of {repo} from the Hub.")
    side = [get(repo, n, required=False) for n in ("config.json", "preprocessor_config.json")]
    return Source(weights, *(json.loads(p.read_text()) if p else None for p in side))


# --------------------------------------------------------------------------------------------------
# Preprocessing of each source
# --------------------------------------------------------------------------------------------------


def processor_for_source(
    source: str, image_size, timm_cfg: dict | None = None, preprocessor: dict | None = None
) -> SwinImageProcessor:
    """The evaluation preprocessing the source's weights were validated with.

    official: resize to image/0.875 (bicubic) and centre-crop below 384 pixels, resize straight to the image
        size from 384 up (the official evaluation); ImageNet mean/std.
    timm: its `pretrained_cfg` (crop_pct, interpolation, mean, std) when config.json has one; else timm's
        Swin defaults, crop_pct 0.9 below 384 and 1.0 from 384 up, bicubic, ImageNet mean/std.
    transformers: the checkpoint's preprocessor_config.json when there is one; else a bicubic resize
        straight to the image size with ImageNet mean/std (what the Hub's Swin checkpoints use).
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if source == "official":
        return SwinImageProcessor.for_image_size((height, width))
    if source == "timm":
        cfg = dict(timm_cfg or {})
        crop_pct = float(cfg.get("crop_pct", 0.9 if max(height, width) < 384 else 1.0))
        extra = {}
        if "mean" in cfg:
            extra["image_mean"] = list(cfg["mean"])
        if "std" in cfg:
            extra["image_std"] = list(cfg["std"])
        resample = _RESAMPLE.get(str(cfg.get("interpolation", "bicubic")), 3)
        # timm: resize the shorter side to floor(size / crop_pct), then centre-crop (also when crop_pct = 1)
        return SwinImageProcessor(
            size={"shortest_edge": int(math.floor(min(height, width) / crop_pct))},
            crop_size={"height": height, "width": width},
            do_center_crop=True,
            resample=resample,
            **extra,
        )
    if source == "transformers":
        if preprocessor:
            keep = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                    "do_normalize", "image_mean", "image_std")
            values = {k: preprocessor[k] for k in keep if k in preprocessor}
            if "crop_pct" in preprocessor and "shortest_edge" in values.get("size", {}):  # ConvNeXt-style processors
                edge = values["size"]["shortest_edge"]
                values.update(size={"shortest_edge": int(edge / preprocessor["crop_pct"])},
                              crop_size={"height": edge, "width": edge}, do_center_crop=True)
            values.setdefault("do_center_crop", False)
            return SwinImageProcessor(**values)
        return SwinImageProcessor.for_image_size((height, width), crop_pct=1.0)
    raise ValueError(f"Unknown source {source!r}; expected one of {SOURCES}.")


def preprocessing_summary(processor: SwinImageProcessor) -> str:
    """One line describing the processor, for model cards."""
    names = {v: k for k, v in _RESAMPLE.items()}
    resample = names.get(int(processor.resample), str(processor.resample))
    size = processor.size
    if "shortest_edge" in size:
        steps = f"resize the shorter side to {size['shortest_edge']} ({resample})"
    else:
        steps = f"resize to {size['height']}x{size['width']} ({resample})"
    if processor.do_center_crop:
        steps += f", centre-crop {processor.crop_size['height']}x{processor.crop_size['width']}"
    mean = ", ".join(f"{v:.3f}" for v in processor.image_mean)
    std = ", ".join(f"{v:.3f}" for v in processor.image_std)
    return f"{steps}, scale to [0, 1], normalise with mean ({mean}) and std ({std})"


# --------------------------------------------------------------------------------------------------
# Converting and writing
# --------------------------------------------------------------------------------------------------


@dataclass
class ConversionResult:
    out_dir: Path
    config: SwinConfig
    model_class: str
    resized: bool
    notes: list[str] = field(default_factory=list)


def convert_checkpoint(
    src: str,
    out_dir: str | os.PathLike,
    source: str,
    preset: str | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert the checkpoint `src` (file, folder or Hub id) of `source` into a swin_hf folder `out_dir`.

    Nothing is written to `out_dir` unless the whole conversion succeeds.
    """
    from .model_card import find_spec, render_card
    from .resize import adapt_state_dict

    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {', '.join(SOURCES)}.")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Available presets: {', '.join(PRESETS)}.")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConversionError(f"{out_dir} already exists and is not empty; choose a new folder or pass --overwrite.")

    resolved = resolve_source(src, source)
    if (resolved.config or {}).get("model_type") == SwinConfig.model_type:
        raise ConversionError(
            f"{src} is already a swin_hf model (its config.json has model_type {SwinConfig.model_type!r}); there is "
            f"nothing to convert: load it with swin_hf.SwinForImageClassification.from_pretrained({str(src)!r}), or "
            "copy the folder."
        )
    raw = read_checkpoint(resolved.weights)
    try:
        state_dict = convert_state_dict(raw, source=source)
    except ConversionError as error:
        raise ConversionError(f"{resolved.weights}: {error}") from error

    timm_cfg = (resolved.config or {}).get("pretrained_cfg") if source == "timm" else None
    hints = {}
    if timm_cfg and timm_cfg.get("input_size"):
        hints["image_size"] = list(timm_cfg["input_size"][1:])
    inferred = infer_config(state_dict, **_hints(raw, source, hints))
    if source == "transformers" and resolved.config and resolved.config.get("model_type") == "swin":
        base = config_from_transformers(resolved.config, SwinConfig)
    else:
        base = inferred
    config = base
    if preset is not None:
        config = _preset_config(preset, base)
    resized = (config.window_size, to_pair(config.image_size)) != (base.window_size, to_pair(base.image_size))
    state_dict = adapt_state_dict(state_dict, config)

    model = _build_model(config, state_dict)
    processor = processor_for_source(source, config.image_size, timm_cfg, resolved.preprocessor)
    spec = find_spec(config, None if source == "transformers" else str(resolved.weights))
    if spec is not None and (spec.num_labels != config.num_labels or resized):
        spec = None
    note = f"`{Path(src).name if Path(src).exists() else src}` ({source} format)"
    card = render_card(
        config,
        title=spec.title if spec else f"Swin Transformer converted from {source} weights",
        paper_top1=spec.paper_top1 if spec else None,
        pretraining=spec.pretraining if spec else None,
        official_file=spec.official_file if spec else None,
        folder=f"./{out_dir.name}",
        source_note=note,
        weights_license="mit" if source in ("official", "timm") else "other",
        preprocessing=preprocessing_summary(processor),
    )

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        (folder / "README.md").write_text(card, encoding="utf-8")

    _write_atomically(out_dir, write, overwrite)
    notes = [f"resized to window {config.window_size}, image {config.image_size}"] if resized else []
    return ConversionResult(out_dir, config, type(model).__name__, resized, notes)


def _hints(raw, source, hints):
    from .convert import _inference_hints

    found = _inference_hints(raw, source) if source != "transformers" else {}
    return {**found, **hints}


def _preset_config(preset: str, checkpoint: SwinConfig) -> SwinConfig:
    """The preset's config with the checkpoint's head; its architecture must be the checkpoint's."""
    config = SwinConfig.from_preset(preset, num_labels=checkpoint.num_labels)
    fields = ("embed_dim", "depths", "num_heads", "patch_size", "mlp_ratio", "num_channels", "use_absolute_embeddings")
    different = [
        f"{f}={getattr(checkpoint, f)!r} (preset: {getattr(config, f)!r})"
        for f in fields
        if _plain(getattr(checkpoint, f)) != _plain(getattr(config, f))
    ]
    if different:
        raise ConversionError(
            f"The checkpoint does not have the architecture of preset {preset!r}: {'; '.join(different)}. "
            "Choose the matching preset or omit --preset to infer the config from the weights."
        )
    if checkpoint.id2label and len(checkpoint.id2label) == checkpoint.num_labels:
        config.id2label = dict(checkpoint.id2label)
        config.label2id = {v: k for k, v in config.id2label.items()}
    return config


def _build_model(config: SwinConfig, state_dict: dict[str, torch.Tensor]):
    """The model holding `state_dict`, loaded strictly, built without random initialisation."""
    from .modeling_swin import SwinForImageClassification, SwinModel

    with_head = config.num_labels > 0 and "classifier.weight" in state_dict
    cls = SwinForImageClassification if with_head else SwinModel
    if not with_head:  # the encoder alone, whatever prefix it had; a backbone's extra norms are not kept
        state_dict = {
            k.removeprefix("swin."): v
            for k, v in state_dict.items()
            if not k.startswith(("classifier.", "hidden_states_norms."))
        }
    with torch.device("meta"):
        model = cls(config)
    tensors = {k: v.detach().clone().contiguous() for k, v in state_dict.items()}
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        raise ConversionError(f"The converted weights do not load into {cls.__name__}: {error}") from error
    return model.eval()


def _write_atomically(out_dir: Path, write, overwrite: bool) -> None:
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    try:
        write(staging)
        if out_dir.exists():
            if not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
                raise ConversionError(f"{out_dir} was filled while converting; nothing was changed.")
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            old.rmdir()
            out_dir.rename(old)
            staging.rename(out_dir)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise




def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


__all__ = [
    "CheckpointError",
    "ConversionResult",
    "convert_checkpoint",
    "preprocessing_summary",
    "processor_for_source",
    "read_checkpoint",
    "resolve_source",
]
