"""`swin-hf predict`: classify image files with a saved model, in its fastest inference form.

    swin-hf predict ./my-swin photo.jpg more/photos/ --top-k 3
    swin-hf predict microsoft/swin-tiny-patch4-window7-224 images/ --json predictions.json --compile
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_files(sources: list[str]) -> list[Path]:
    """The image files named in `sources` (files, or folders searched recursively), sorted within folders."""
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{source!r} is a folder with no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{source!r} is neither an image file nor a folder; check the path.")
    return files


def load_classifier(source: str):
    """(model, image processor) for a save_pretrained folder or Hub id of an image classifier."""
    from transformers import AutoImageProcessor

    from .image_processing_swin import SwinImageProcessor
    from .model_source import check_model_source
    from .modeling_swin import SwinForImageClassification

    if check_model_source(source, "MODEL") == "preset":
        raise ValueError(f"{source!r} is a preset, whose weights are random: give a trained model's folder or Hub id.")
    model = SwinForImageClassification.from_pretrained(source).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError):  # no processor saved with the weights: the official evaluation transform
        processor = SwinImageProcessor.for_image_size(model.config.image_size)
    return model, processor


def predict(model, processor, files: list[Path], top_k: int = 5, batch_size: int = 16, progress: bool = True) -> tuple[list[dict], list[str]]:
    """([{"image": path, "predictions": [{"label", "score"}, ...]}, ...], [unreadable files]) for `files`."""
    from .training.data import decode_image  # the training recipes' reading: one file, one tensor

    labels = model.config.id2label
    top_k = min(top_k, model.config.num_labels)
    results, skipped = [], []
    bar = None
    if progress and len(files) > batch_size:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), unit="image", desc="predict", file=sys.stderr)
    for start in range(0, len(files), batch_size):
        batch, names = [], []
        for path in files[start : start + batch_size]:
            try:
                batch.append(decode_image({"path": str(path), "bytes": None}))
                names.append(str(path))
            except (OSError, ValueError, SyntaxError) as error:
                skipped.append(str(path))
                logger.warning("skipped %s: %s", path, error)
        if batch:
            pixels = processor(batch, return_tensors="pt")["pixel_values"].to(next(model.parameters()).device)
            with torch.inference_mode():
                probabilities = model(pixels).logits.float().softmax(-1)
            scores, classes = probabilities.topk(top_k, dim=-1)
            for name, row_scores, row_classes in zip(names, scores.tolist(), classes.tolist()):
                predictions = [{"label": labels.get(c, str(c)), "score": round(s, 6)} for s, c in zip(row_scores, row_classes)]
                results.append({"image": name, "predictions": predictions})
        if bar is not None:
            bar.update(len(files[start : start + batch_size]))
    if bar is not None:
        bar.close()
    return results, skipped


def run(args) -> int:
    """The `swin-hf predict` command (arguments from cli.build_parser)."""
    from .inference import optimize_for_inference

    files = image_files(args.images)
    model, processor = load_classifier(args.model)
    if not args.no_optimize:
        model = optimize_for_inference(model, compile=args.compile)
    results, skipped = predict(model, processor, files, args.top_k, args.batch_size, progress=not args.quiet)
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            tmp = f"{args.json}.tmp"
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, args.json)
    else:
        for row in results:
            shown = ", ".join(f"{p['label']} ({p['score']:.3f})" for p in row["predictions"])
            print(f"{row['image']}: {shown}")
    if skipped:
        print(f"swin-hf predict: {len(skipped)} unreadable image(s) skipped: {', '.join(skipped[:5])}", file=sys.stderr)
    return 0 if results else 1


__all__ = ["image_files", "load_classifier", "predict", "run"]
