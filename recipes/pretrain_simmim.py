"""SimMIM self-supervised pre-training of a Swin encoder on unlabelled images.

    python recipes/pretrain_simmim.py                           # built-in: digits images without labels, offline
    python recipes/finetune.py --model outputs/swin-simmim      # then fine-tune the pre-trained encoder
    lightning run --accelerator cpu --devices 2 recipes/pretrain_simmim.py --dataset <images> --model swin-tiny-patch4-window7-224 --image-size 192
    accelerate launch recipes/pretrain_simmim.py ...
    torchrun --nproc-per-node 2 recipes/pretrain_simmim.py ...

See `python recipes/pretrain_simmim.py --help` for every option and its default.
"""

import sys

import _checkout  # noqa: F401  (from a checkout: swin_hf from its src/, not installed)
from swin_hf.training.simmim import main

if __name__ == "__main__":
    sys.exit(main())
