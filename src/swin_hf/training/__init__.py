"""Reusable pieces of the swin_hf training recipes (recipes/*.py), one concern per module.

- data:       datasets loading (Hub id, saved DatasetDict, imagefolder, built-in sklearn digits), column
              detection, split checks, any-mode -> RGB decoding, unreadable-image skipping, resumable sampler
- augment:    kornia batch augmentation (random resized crop, flip, RandAugment, erasing, mixup/cutmix)
- optim:      AdamW parameter groups (no decay on norms/biases/position tables, layer-wise lr decay),
              cosine schedule with warmup
- ema:        exponential moving average of weights
- checkpoint: atomic checkpoints, latest-checkpoint lookup, RNG state
- report:     metrics.json, CSV log, training-curve and confusion-matrix plots, Hub model card
- loop:       the Fabric training loop of the classification recipe (`run(TrainConfig)`)
- cli:        the recipe's command line, profiles and launcher detection

Needs the `recipes` extra: ``pip install "swin_hf[recipes]"``.
"""
