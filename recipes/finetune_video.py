"""Video classification: a Video Swin Transformer trained, fine-tuned or inflated from a 2D Swin on any `datasets` set.

    python recipes/finetune_video.py                            # built-in moving-digits, tiny Video Swin, offline
    python recipes/finetune_video.py --model outputs/swin-finetuned --image-size 224 --frames 16 --lr 1e-4
    lightning run --accelerator cpu --devices 2 recipes/finetune_video.py
    accelerate launch recipes/finetune_video.py --dataset <saved DatasetDict with `video` + `label` columns>
    torchrun --nproc-per-node 2 recipes/finetune_video.py ...

A 2D swin_hf image checkpoint given as --model is inflated to video (the paper's initialisation). The output folder
loads with `pipeline("video-classification", model=..., pipeline_class=VideoSwinClassificationPipeline)` after
`import swin_hf`. See `python recipes/finetune_video.py --help` for every option and its default.
"""

import sys

import _checkout  # noqa: F401  (from a checkout: swin_hf from its src/, not installed)
from swin_hf.training.video import main

if __name__ == "__main__":
    sys.exit(main())
