"""Semantic segmentation: UperNet on a Swin backbone, fine-tuned on any `datasets` segmentation set.

    python recipes/segment.py                                   # built-in texture-collage set, offline: mIoU 0.84 in ~1 min CPU
    python recipes/segment.py --model outputs/swin-simmim       # start from a pre-trained encoder
    lightning run --accelerator cpu --devices 2 recipes/segment.py
    accelerate launch recipes/segment.py --dataset <hub id or saved DatasetDict> --num-labels 150 --reduce-labels
    torchrun --nproc-per-node 2 recipes/segment.py ...

The output folder loads with `pipeline("image-segmentation", model=...)` after `import swin_hf`.
See `python recipes/segment.py --help` for every option and its default.
"""

from __future__ import annotations

import os
import sys

# `python recipes/segment.py` from a checkout works without installing the package
_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(os.path.join(_SRC, "swin_hf")) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from swin_hf.segmentation.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
