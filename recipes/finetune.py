"""Fine-tune (or train from scratch) a Swin Transformer image classifier on any `datasets` splits.

    python recipes/finetune.py                                  # built-in digits, tiny Swin from scratch
    lightning run --accelerator cpu --devices 2 recipes/finetune.py --dataset beans
    accelerate launch recipes/finetune.py --train-dir data/train --validation-dir data/val
    torchrun --nproc-per-node 2 recipes/finetune.py ...

See `python recipes/finetune.py --help` for every option and its default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# `python recipes/finetune.py` from a checkout works without installing the package
_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(os.path.join(_SRC, "swin_hf")) and _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from swin_hf.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
