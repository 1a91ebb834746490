"""Imported first by every recipe here: run from a checkout (`python recipes/<name>.py`, or under `lightning
run`, `fabric run`, `torchrun` or `accelerate launch`, which all run the file with this folder first on
sys.path), the recipe imports swin_hf from the checkout's src/ without installing it; anywhere else the
installed swin_hf is used.
"""

import os
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(os.path.join(SRC, "swin_hf")) and SRC not in sys.path:
    sys.path.insert(0, SRC)
