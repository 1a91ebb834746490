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

import sys

import _checkout  # noqa: F401  (from a checkout: swin_hf from its src/, not installed)
from swin_hf.detection.train import main

if __name__ == "__main__":
    sys.exit(main())
