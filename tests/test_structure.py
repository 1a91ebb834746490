"""The package's shape: no import circles, the model file is the paper, saved folders carry only the
code their model needs."""

import ast
from pathlib import Path

import pytest
import torch

from swin_hf import (
    SwinBackbone, SwinConfig, SwinForImageClassification, SwinForMaskedImageModeling, SwinModel, VideoSwinConfig,
    VideoSwinForVideoClassification, VideoSwinModel,
)  # fmt: skip

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "swin_hf"
TINY = dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4, image_size=32, encoder_stride=8)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The swin_hf modules `path` imports anywhere in it (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in modules and c != name}
    return found


def test_no_import_circles():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, name, set(files)) for name, path in files.items()}
    # a package's __init__ importing its own modules is not a circle: only edges between modules count
    edges = {n: {t for t in ts if not n.startswith(t + ".") or files[t].name != "__init__.py"} for n, ts in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    cycles = [c for c in cycles if not all(files[m].name == "__init__.py" or m == "swin_hf" for m in c[:-1])]
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_public_name_exists():
    """What each module's __all__ promises is there: `from swin_hf.x import *` works for every module."""
    import importlib

    missing = {}
    for path in PACKAGE.rglob("*.py"):
        module = importlib.import_module(_module_name(path))
        absent = [name for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
        if absent:
            missing[module.__name__] = absent
    assert not missing, f"names in __all__ that the module does not define: {missing}"


def test_the_model_file_is_the_paper():
    source = (PACKAGE / "modeling_swin.py").read_text()
    assert len(source.splitlines()) <= 800
    for machinery in ("torch.ops", "autograd.Function", "custom_op", "WeakIdKeyDictionary", "_version"):
        assert machinery not in source, machinery


def test_the_video_model_file_is_the_paper_on_swins_pieces():
    source = (PACKAGE / "modeling_video_swin.py").read_text()
    assert len(source.splitlines()) <= 500
    for machinery in ("torch.ops", "autograd.Function", "custom_op", "WeakIdKeyDictionary", "fast_paths"):
        assert machinery not in source, machinery
    for shared in ("WindowAttention", "SwinBlock", "PatchMerging", "relative_position_index", "classification_loss"):
        assert f"{shared}" in source.split("# ---- 1.")[0], f"{shared} should come from modeling_swin.py"


MODEL_CODE = {"configuration_swin.py", "modeling_swin.py", "fast_paths.py", "image_processing_swin.py"}


@pytest.mark.parametrize(
    "cls, extra",
    [
        (SwinForImageClassification, set()),
        (SwinModel, set()),
        (SwinBackbone, set()),
        (SwinForMaskedImageModeling, {"modeling_simmim.py"}),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_a_saved_folder_carries_only_the_code_its_model_needs(tmp_path, cls, extra):
    config = SwinConfig(**TINY, out_features=["stage1", "stage2"]) if cls is SwinBackbone else SwinConfig(**TINY)
    cls(config).save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.glob("*.py")} == MODEL_CODE | extra
    loaded = cls.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert type(loaded) is cls and loaded(x) is not None


@pytest.mark.parametrize("cls", [VideoSwinForVideoClassification, VideoSwinModel], ids=lambda v: v.__name__)
def test_a_saved_video_folder_carries_only_the_code_its_model_needs(tmp_path, cls):
    config = VideoSwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[2, 4, 4])
    cls(config).save_pretrained(tmp_path)
    video_code = {"configuration_video_swin.py", "modeling_video_swin.py", "image_processing_video_swin.py"} | MODEL_CODE
    assert {p.name for p in tmp_path.glob("*.py")} == video_code
    loaded = cls.from_pretrained(tmp_path)
    with torch.no_grad():
        assert type(loaded) is cls and loaded(torch.randn(1, 4, 3, 16, 16)) is not None


def test_the_weights_of_a_saved_folder_have_the_mode_of_its_other_files(tmp_path):
    """safetensors writes its file 0600; save_pretrained gives it the mode every other file got (umask)."""
    import os

    previous = os.umask(0o022)
    try:
        SwinForImageClassification(SwinConfig(**TINY)).save_pretrained(tmp_path)
    finally:
        os.umask(previous)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()}
    assert set(modes.values()) == {"0o644"}, modes
