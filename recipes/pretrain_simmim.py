"""SimMIM self-supervised pre-training of a Swin encoder on unlabelled images.

    python recipes/pretrain_simmim.py                           # built-in: digits images without labels, offline
    python recipes/finetune.py --model outputs/swin-simmim      # then fine-tune the pre-trained encoder
    lightning run --accelerator cpu --devices 2 recipes/pretrain_simmim.py --dataset <images> --model swin-tiny-patch4-window7-224 --image-size 192
    accelerate launch recipes/pretrain_simmim.py ...
    torchrun --nproc-per-node 2 recipes/pretrain_simmim.py ...

See `python recipes/pretrain_simmim.py --help` for every option and its default.
"""

from __future__ import annotations

import os
import sys

# `python recipes/pretrain_simmim.py` from a checkout works without installing the package
_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(os.path.join(_SRC, "swin_hf")) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from swin_hf.training.simmim import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
