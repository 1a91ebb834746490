"""Object detection: a transformers DETR-family detector (RT-DETR by default) on a Swin backbone, trained on any
set in the Hub's detection convention (image + objects{bbox, category}) or a COCO-JSON folder.

    python recipes/detect.py                                    # built-in pasted-objects set, offline (see README)
    python recipes/detect.py --model outputs/swin-simmim        # start from a pre-trained encoder
    python recipes/detect.py --dataset data/coco-folder --model swin-tiny-patch4-window7-224 --image-size 640
    fabric run --accelerator cpu --devices 2 recipes/detect.py
    accelerate launch recipes/detect.py --dataset <hub id or saved DatasetDict>
    torchrun --nproc-per-node 2 recipes/detect.py ...

The output folder loads with `pipeline("object-detection", model=...)` after `import swin_hf`.
See `python recipes/detect.py --help` for every option and its default.
"""

from __future__ import annotations

import os
import sys

# `python recipes/detect.py` from a checkout works without installing the package
_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(os.path.join(_SRC, "swin_hf")) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from swin_hf.detection.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
