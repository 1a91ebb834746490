"""How often the optimized forms of a trained classifier agree with its fp32 answers (top-1).

    python recipes/finetune.py --output-dir outputs/digits                 # the README's model
    python benchmarks/agreement.py outputs/digits                           # bf16 (and int8 with --int8)

The model is a save_pretrained folder written by recipes/finetune.py; the images are the validation
split of the built-in digits (or `--dataset` as the recipe takes it), processed by the folder's image
processor. Each form answers every image; agreement = share of images whose top-1 class equals the fp32
model's, and accuracy is reported for each form too.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from swin_hf import optimize_for_inference  # noqa: E402
from swin_hf.predict import load_classifier  # noqa: E402


def validation_images(dataset: str | None):
    """(list of PIL RGB images, list of label ids) of the recipe's validation split."""
    from swin_hf.training.data import DIGITS, decode_image, load_splits, prepare

    splits = load_splits(dataset or DIGITS)
    data = prepare(splits, None, None, 0.15, None, None, 0, dataset or DIGITS)
    split = data.validation
    images = [decode_image(row[data.image_column]) for row in split]
    return images, [int(row[data.label_column]) for row in split]


def top1(model, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(pixels[i : i + batch]).logits.argmax(-1) for i in range(0, len(pixels), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a save_pretrained folder of an image classifier")
    parser.add_argument("--dataset", help="as recipes/finetune.py --dataset (default: the built-in digits)")
    parser.add_argument("--int8", action="store_true", help="also the int8 form (needs torchao)")
    parser.add_argument("--no-compile", action="store_true", help="the optimized forms without torch.compile")
    args = parser.parse_args()
    model, processor = load_classifier(args.model)
    images, labels = validation_images(args.dataset)
    pixels = processor(images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor(labels)
    reference = top1(model, pixels)
    forms = {"bf16": dict(dtype="bf16")}
    if args.int8:
        forms["int8"] = dict(dtype="fp32", quantize="int8", calibration=pixels[:64])
    print(f"{args.model}: {len(labels)} validation images; fp32 top-1 accuracy {(reference == labels).float().mean():.2%}")
    for name, options in forms.items():
        fast = optimize_for_inference(copy.deepcopy(model), compile=not args.no_compile, **options)
        answer = top1(fast, pixels)
        print(f"{name}: agreement with fp32 {(answer == reference).float().mean():.2%}, "
              f"accuracy {(answer == labels).float().mean():.2%}")


if __name__ == "__main__":
    main()
