"""Checkpoint files in, a `save_pretrained` folder out: the engine of `swin-hf convert`.

    read   .pth / .pt / .bin / .ckpt with torch.load(weights_only=True) (never plain unpickling), unwrapping
           {"model": ...} / {"state_dict": ...}; or .safetensors; or a folder / Hub id holding one
    convert  convert.convert_state_dict (strict), config from the preset / --config file, the source's
           config.json, the official buffers or the tensor shapes; resize.adapt_state_dict when the preset
           has another window / image size (Swin V1; V2's position bias takes any window as it is)
    write  safetensors weights + config, the image processor of the source's preprocessing, a model card;
           into a temporary folder next to OUT_DIR, renamed into place only when everything succeeded
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configuration_swin import PRESETS, SwinConfig, to_pair
from .convert import (
    SOURCES,
    TRANSFORMERS_MODEL_TYPES,
    ConversionError,
    _inference_hints,
    config_from_transformers,
    convert_state_dict,
    infer_config,
)
from .model_card import escape_markdown, find_spec, render_card, timm_architecture
from .preprocessing import preprocessing_summary, processor_for_source

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


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
    config_file: str | os.PathLike | None = None,
) -> ConversionResult:
    """Convert the checkpoint `src` (file, folder or Hub id) of `source` into a swin_hf folder `out_dir`.

    `preset` or `config_file` (a config.json of swin_hf or of transformers' Swin / Swinv2, or its folder)
    gives the config to load into; its architecture must be the checkpoint's. Swin V2 weights need one of
    them unless the window is known otherwise (official buffers, timm's architecture name, transformers'
    config.json). Nothing is written to `out_dir` unless the whole conversion succeeds.
    """
    from .resize import adapt_state_dict

    if source in ("torchvision", "mmaction"):
        return _convert_torchvision(src, Path(out_dir), overwrite, preset, config_file, source)
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {', '.join(SOURCES)}.")
    if preset is not None and config_file is not None:
        raise ValueError("Give a preset or a config file, not both.")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Available presets: {', '.join(PRESETS)}.")
    target = SwinConfig.from_preset(preset) if preset is not None else None
    if config_file is not None:
        target = read_config_file(config_file)
    target_name = ("preset", repr(preset)) if preset is not None else ("config", str(config_file))
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
    if source == "transformers" and (resolved.config or {}).get("model_type") in TRANSFORMERS_MODEL_TYPES:
        base = config_from_transformers(resolved.config, SwinConfig)
    else:
        # lowest to highest priority: the window (and size) of the given config or of timm's model name (Swin V2
        # weights do not record it), the official buffers, timm's input size
        hints = _v2_windows(target) or _v2_windows(_timm_preset(resolved.config if source == "timm" else None))
        hints.update(_inference_hints(raw, source))
        if timm_cfg and timm_cfg.get("input_size"):
            hints["image_size"] = list(timm_cfg["input_size"][1:])
        base = infer_config(state_dict, **hints)
    config = base if target is None else _target_config(target, base, target_name)
    resized = _geometry(config) != _geometry(base)
    state_dict = adapt_state_dict(state_dict, config)

    model = _build_model(config, state_dict)
    processor = processor_for_source(source, config.image_size, timm_cfg, resolved.preprocessor)
    spec = find_spec(config, None if source == "transformers" else str(resolved.weights))
    if spec is not None and (spec.num_labels != config.num_labels or resized):
        spec = None
    note = f"{escape_markdown(Path(src).name if Path(src).exists() else src, code=True)} ({source} format)"
    card = render_card(
        config,
        title=spec.title if spec else f"Swin Transformer{' V2' if config.version == 2 else ''} converted from {source} weights",
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
    notes = []
    if resized:
        what = "nothing resized: V2's position bias takes any window" if config.version == 2 else "resized"
        notes.append(f"window {base.window_size} -> {config.window_size}, image {base.image_size} -> {config.image_size}; {what}")
    return ConversionResult(out_dir, config, type(model).__name__, resized, notes)


# torchvision's resize before its centre crop, per model: (version, embed_dim, stage-3 depth) -> shorter side
_TORCHVISION_RESIZE = {(1, 96, 6): 232, (1, 96, 18): 246, (1, 128, 18): 238, (2, 96, 6): 260, (2, 96, 18): 260, (2, 128, 18): 272}


def _convert_torchvision(src: str, out_dir: Path, overwrite: bool, preset, config_file, source: str = "torchvision") -> ConversionResult:
    """A torchvision state dict file (swin_t/s/b, swin_v2_t/s/b, swin3d_t/s/b) or an official Video Swin checkpoint
    (`source` "mmaction": backbone.*, cls_head.fc_cls.*) as a swin_hf folder; the config is inferred from the
    weights (convert_torchvision.from_torchvision, convert_video.from_mmaction)."""
    from .convert_torchvision import from_torchvision
    from .convert_video import from_mmaction
    from .image_processing_swin import SwinImageProcessor
    from .modeling_video_swin import VideoSwinForVideoClassification

    if preset is not None or config_file is not None:
        raise ValueError(f"--from {source} infers the config from the weights; leave out --preset and --config.")
    if out_dir.exists() and not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConversionError(f"{out_dir} already exists and is not empty; choose a new folder or pass --overwrite.")
    path = Path(src)
    example = "swin_tiny_patch244_window877_kinetics400_1k.pth" if source == "mmaction" else "swin3d_t-7615ae03.pth"
    if not path.is_file():
        raise CheckpointError(f"{src}: no such file; --from {source} reads a state-dict file such as {example}.")
    try:
        config, state_dict = (from_mmaction if source == "mmaction" else from_torchvision)(read_checkpoint(path))
    except ConversionError as error:
        raise ConversionError(f"{path}: {error}") from error
    video = not isinstance(config, SwinConfig)
    model = _build_model(config, state_dict) if not video else VideoSwinForVideoClassification(config)
    if video:
        model.load_state_dict(state_dict, strict="classifier.weight" in state_dict)
    processor = None
    if source == "mmaction":  # the official single-view test transforms: shorter side 224, centre crop 224, ImageNet mean/std
        from .image_processing_video_swin import VideoSwinImageProcessor

        processor = VideoSwinImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                            do_center_crop=True, resample=2)
    elif not video:  # torchvision's evaluation transforms: bicubic resize of the shorter side, centre crop, ImageNet mean/std
        crop = config.image_size
        resize = _TORCHVISION_RESIZE.get((config.version, config.embed_dim, config.depths[2] if len(config.depths) > 2 else 0), round(crop / 0.875))
        processor = SwinImageProcessor(
            size={"shortest_edge": resize}, crop_size={"height": crop, "width": crop}, do_center_crop=True, resample=3
        )  # fmt: skip

    def write(folder: Path) -> None:
        model.eval().save_pretrained(folder, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(folder)

    _write_atomically(out_dir, write, overwrite)
    return ConversionResult(out_dir, config, type(model).__name__, False, [])


def read_config_file(path: str | os.PathLike) -> SwinConfig:
    """The SwinConfig of a config.json (swin_hf's, or transformers' Swin / Swinv2), or of the folder holding one."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    try:
        values = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ConversionError(f"--config {path}: not a readable config.json ({error}).") from error
    if not isinstance(values, dict) or values.get("model_type") not in (*TRANSFORMERS_MODEL_TYPES, SwinConfig.model_type):
        kind = values.get("model_type") if isinstance(values, dict) else type(values).__name__
        raise ConversionError(
            f"--config {path}: model_type {kind!r}; expected the config.json of a swin_hf model or of transformers' "
            "Swin / Swinv2."
        )
    return config_from_transformers(values, SwinConfig)


def _v2_windows(config: SwinConfig | None) -> dict:
    """The window, pre-training windows and image size of a Swin V2 config, as hints for weights that do not
    record them."""
    if config is None or config.version != 2:
        return {}
    return {k: getattr(config, k) for k in ("window_size", "pretrained_window_sizes", "image_size")}


def _timm_preset(timm_config: dict | None) -> SwinConfig | None:
    """The preset that timm's config.json names in `architecture`: timm calls swinv2-tiny-patch4-window8-256
    `swinv2_tiny_window8_256` and swinv2-base-patch4-window12to16-192to256-22kto1k-ft
    `swinv2_base_window12to16_192to256` (the tag after the dot names the weights)."""
    architecture = (timm_config or {}).get("architecture")
    name = next((name for name in PRESETS if timm_architecture(name) == architecture), None)
    return SwinConfig.from_preset(name) if name else None


def _geometry(config: SwinConfig) -> tuple:
    """What a checkpoint's config and a target's may differ in without a different architecture."""
    windows = config.pretrained_window_sizes or [0] * len(config.depths)
    return config.window_size, to_pair(config.image_size), tuple(windows) if config.version == 2 else ()


def _target_config(target: SwinConfig, checkpoint: SwinConfig, target_name: tuple[str, str]) -> SwinConfig:
    """`target` (a preset's or a file's config) with the checkpoint's head; its architecture must be the
    checkpoint's. `target_name`: ("preset", name) or ("config", path), for messages."""
    config = copy.deepcopy(target)
    config.num_labels = checkpoint.num_labels
    fields = ("version", "embed_dim", "depths", "num_heads", "patch_size", "mlp_ratio", "qkv_bias", "num_channels",
              "use_absolute_embeddings")
    different = [
        f"{f}={getattr(checkpoint, f)!r} ({target_name[0]}: {getattr(config, f)!r})"
        for f in fields
        if _plain(getattr(checkpoint, f)) != _plain(getattr(config, f))
    ]
    if different:
        raise ConversionError(
            f"The checkpoint does not have the architecture of {' '.join(target_name)}: {'; '.join(different)}. "
            "Choose the matching preset or config, or omit --preset/--config to infer the config from the weights."
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
    "read_config_file",
    "resolve_source",
]
