"""Reusable pieces of the swin_hf training recipes (recipes/*.py), one concern per module.

- cli:        the command lines (one-line argument errors), profiles, launcher detection, `launch`
- session:    what every recipe does around its own loop: the output folder, resume, checkpoints and
              model folders, the optimiser step, the plain epoch loop of segment.py and pretrain_simmim.py
- checkpoint: atomic checkpoints (weights_only), the settings compared on resume, unreadable files set
              aside, the output-folder checks, RNG state
- guard:      the non-finite stop (loss or gradient norm)
- errors:     the errors printed as one line (RecipeError and its kinds)
- data:       datasets loading (Hub id, saved DatasetDict, imagefolder, built-in sklearn digits), folder, column,
              split and class checks, any-mode -> RGB decoding (EXIF orientation), unreadable-image skipping,
              resumable sampler
- augment:    kornia batch augmentation (random resized crop, flip, RandAugment, erasing, mixup/cutmix)
- optim:      AdamW parameter groups (no decay on norms/biases/position tables, layer-wise lr decay),
              cosine schedule with warmup
- ema:        exponential moving average of weights
- report:     metrics.json, CSV log, training-curve and confusion-matrix plots, Hub model card
- loop:       the classification recipe (`run(TrainConfig)` = setup, fit, evaluate, finish)
- simmim:     the SimMIM pre-training recipe (the segmentation recipe is swin_hf.segmentation.train)

Needs the `recipes` extra: ``pip install "swin_hf[recipes]"``.
"""
