"""Fine-tune (or train from scratch) a Swin Transformer image classifier on any `datasets` splits.

    python recipes/finetune.py                                  # built-in digits, tiny Swin from scratch
    lightning run --accelerator cpu --devices 2 recipes/finetune.py --dataset beans
    accelerate launch recipes/finetune.py --train-dir data/train --validation-dir data/val
    torchrun --nproc-per-node 2 recipes/finetune.py ...

See `python recipes/finetune.py --help` for every option and its default.
"""

import sys

import _checkout  # noqa: F401  (from a checkout: swin_hf from its src/, not installed)
from swin_hf.training.classification import main

if __name__ == "__main__":
    sys.exit(main())
