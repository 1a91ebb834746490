"""The `swin-hf` command line: `convert` checkpoints, print model `info` (parameters and FLOPs), write
the model `cards`, `export-onnx`, `predict` image files. `python -m swin_hf.cli ...` does the same as the console script."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .configuration_swin import PRESETS
from .convert import SOURCES, ConversionError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels >= 1, got {text!r}")
    return value


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (`PROG: error: ...`, exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="swin-hf", description="Swin Transformer checkpoints for Hugging Face.")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert official / timm / transformers weights into a swin_hf save_pretrained folder",
        description="Convert a checkpoint (.pth/.bin read with torch.load(weights_only=True), .safetensors, a "
        "folder, or a Hub id) into OUT_DIR: safetensors weights, config, image processor and model card. "
        "OUT_DIR is written only if the conversion succeeds.",
    )
    convert.add_argument(
        "--from", dest="source", choices=(*SOURCES, "torchvision", "mmaction"), required=True,
        help="layout of the source weights (torchvision: a swin_t/s/b, swin_v2_t/s/b or swin3d_t/s/b state-dict file; "
        "mmaction: an official Video Swin checkpoint, backbone.* and cls_head.fc_cls.*)",
    )  # fmt: skip
    convert.add_argument("src", metavar="SRC", help="checkpoint file, folder, or Hub id (org/name)")
    convert.add_argument("out_dir", metavar="OUT_DIR", help="folder to create")
    target = convert.add_mutually_exclusive_group()
    target.add_argument(
        "--preset",
        metavar="NAME",
        help=f"config to load into ({', '.join(PRESETS)}); by default it is inferred from the tensor shapes. A "
        "preset with another window / image size resizes the position tables (Swin V1). Swin V2 weights do not "
        "record their window: give --preset or --config unless they are official .pth files (whose buffers do) "
        "or the timm / transformers folder says it.",
    )
    target.add_argument(
        "--config",
        metavar="CONFIG_JSON",
        help="config to load into, from a config.json (swin_hf's or transformers' Swin/Swinv2) or its folder",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")

    info = commands.add_parser("info", help="parameters and FLOPs per stage, and the attention cost")
    info.add_argument("target", metavar="PRESET_OR_DIR", help=f"a preset ({', '.join(PRESETS)}) or a model folder")
    info.add_argument("--image-size", type=int, help="input side in pixels (default: the config's image size)")
    info.add_argument("--num-labels", type=int, help="classes of the head (default: the release's, 1000 or 21841 for presets)")
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")

    cards = commands.add_parser("cards", help="write the model card of every released model")
    cards.add_argument("out_dir", metavar="OUT_DIR", nargs="?", default="model_cards")

    onnx = commands.add_parser(
        "export-onnx",
        help="export a model to ONNX (dynamic batch), checked against PyTorch with onnxruntime",
        description="Export a saved swin_hf model (or a preset, randomly initialised) to ONNX with a free batch "
        "dimension; onnxruntime's outputs are compared with PyTorch's before the command succeeds. One file "
        "serves one resolution, or with --dynamic-hw the sizes where a free height/width is exact (multiples of "
        "patch x 2^(stages-1) x window from twice that); the accepted sizes are stored in the file and checked by "
        "swin_hf.run_onnx.",
    )
    onnx.add_argument("target", metavar="PRESET_OR_DIR", help="a model folder or a preset")
    onnx.add_argument("out", metavar="OUT.onnx", help="file to write")
    onnx.add_argument("--image-size", type=_positive_int, help="input side in pixels (default: the config's image size)")
    onnx.add_argument("--dynamic-hw", action="store_true", help="free height and width (at the sizes where the graph is exact)")
    onnx.add_argument("--atol", type=float, default=1e-4, help="largest difference to PyTorch accepted")

    predict = commands.add_parser(
        "predict",
        help="classify image files with a saved model (in its fastest inference form)",
        description="Top-k classes of each image, from a save_pretrained folder or Hub id. The model runs as "
        "swin_hf.optimize_for_inference makes it (bf16 where the CPU/GPU multiplies bf16 natively); --compile "
        "also compiles it, which pays from a few thousand images on a CPU.",
    )
    predict.add_argument("model", metavar="MODEL", help="a save_pretrained folder or Hub id of an image classifier")
    predict.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+", help="image files, or folders of images")
    predict.add_argument("--top-k", type=_positive_int, default=5, help="classes per image (default 5)")
    predict.add_argument("--batch-size", type=_positive_int, default=16, help="images per forward (default 16)")
    predict.add_argument("--json", metavar="FILE", help="write the predictions as JSON to FILE ('-': standard output)")
    predict.add_argument("--compile", action="store_true", help="torch.compile the model first (minutes)")
    predict.add_argument("--no-optimize", action="store_true", help="run the model as loaded (fp32, eager)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a usage error argparse printed
        return exit.code if isinstance(exit.code, int) else 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "convert":
            return _convert(args)
        if args.command == "info":
            return _info(args)
        if args.command == "export-onnx":
            return _export_onnx(args)
        if args.command == "predict":
            from .predict import run

            return run(args)
        return _cards(args)
    except (ConversionError, ValueError, OSError) as error:
        print(f"swin-hf {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


def _convert(args) -> int:
    from .convert_checkpoint import convert_checkpoint

    result = convert_checkpoint(
        args.src, args.out_dir, args.source, preset=args.preset, overwrite=args.overwrite, config_file=args.config
    )
    c = result.config
    print(
        f"Wrote {result.model_class} (embed_dim {c.embed_dim}, depths {list(c.depths)}, window {c.window_size}, "
        f"image {c.image_size}, {c.num_labels} labels) to {result.out_dir}"
        + (f" [{'; '.join(result.notes)}]" if result.notes else "")
    )
    return 0


def _info(args) -> int:
    from .flops import format_report, measure_cost, resolve_config

    if args.image_size is not None and args.image_size <= 0:
        raise ValueError(f"--image-size must be a positive number of pixels, got {args.image_size}.")
    config = resolve_config(args.target, num_labels=args.num_labels)
    cost = measure_cost(config, args.image_size)
    if args.json:
        print(json.dumps({"target": args.target, **cost.as_dict()}, indent=2))
    else:
        print(format_report(cost, title=args.target))
    return 0


def _export_onnx(args) -> int:
    from .configuration_swin import SwinConfig
    from .export import export_onnx
    from .modeling_swin import SwinForImageClassification

    from .export import onnx_input_sizes
    from .model_source import check_model_source

    check_model_source(args.target, "PRESET_OR_DIR")
    if args.target in PRESETS:
        model = SwinForImageClassification(SwinConfig.from_preset(args.target))
    else:
        try:
            model = SwinForImageClassification.from_pretrained(args.target)
        except (TypeError, KeyError) as error:
            raise ValueError(f"{args.target!r} cannot be loaded ({type(error).__name__}: {error}); check its config.json.") from error
    path = export_onnx(model.eval(), args.out, image_size=args.image_size, atol=args.atol, dynamic_hw=args.dynamic_hw)
    sizes = onnx_input_sizes(path)
    accepted = " x ".join(
        str(side["min"]) if side["min"] == side["max"] else f"{side['min']}..{side['max']} step {side['multiple']}"
        for side in (sizes["height"], sizes["width"])
    )
    print(f"Wrote {path} (dynamic batch; input {accepted} pixels; outputs match PyTorch within {args.atol:g})")
    return 0


def _cards(args) -> int:
    from .model_card import write_model_cards

    for path in write_model_cards(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
