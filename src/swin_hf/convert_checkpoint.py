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
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configuration_swin import PRESETS, SwinConfig, to_pair
from .convert import SOURCES, ConversionError, config_from_transformers, convert_state_dict, infer_config
from .model_card import find_spec, render_card
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
) -> ConversionResult:
    """Convert the checkpoint `src` (file, folder or Hub id) of `source` into a swin_hf folder `out_dir`.

    Nothing is written to `out_dir` unless the whole conversion succeeds.
    """
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
