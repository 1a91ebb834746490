"""Segmentation: UperNet (semantic, the default) or Mask2Former (--task instance) on a Swin backbone, fine-tuned on any `datasets` set.

    python recipes/segment.py                                   # built-in texture-collage set, offline: mIoU 0.84 in ~1 min CPU
    python recipes/segment.py --model outputs/swin-simmim       # start from a pre-trained encoder
    python recipes/segment.py --task instance                   # Mask2Former instance masks, built-in pasted-objects set
    lightning run --accelerator cpu --devices 2 recipes/segment.py
    accelerate launch recipes/segment.py --dataset <hub id or saved DatasetDict> --num-labels 150 --reduce-labels
    torchrun --nproc-per-node 2 recipes/segment.py ...

The output folder loads with `pipeline("image-segmentation", model=...)` after `import swin_hf`.
See `python recipes/segment.py --help` for every option and its default.
"""

import sys

import _checkout  # noqa: F401  (from a checkout: swin_hf from its src/, not installed)
from swin_hf.segmentation.train import main

if __name__ == "__main__":
    sys.exit(main())
