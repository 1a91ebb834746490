"""Reusable pieces of the swin_hf training recipes (recipes/*.py), one concern per module.

- cli:        the command lines (one-line argument errors), profiles, launcher detection, `launch`
- launcher:   the `lightning` command (`lightning run SCRIPT`: Lightning Fabric's launcher, a free port)
- distributed: --strategy (fsdp = FSDP2 per Swin block, CPU or GPU), model + optimiser set-up, whole tensors
              for saving
- streaming:  --streaming (datasets streaming, a part per process, block shuffle, resumable position)
- progress:   the first log line, one progress bar, a line per epoch, images/s per process and in total
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
- report:     metrics.json, CSV/TensorBoard logs, training-curve and confusion-matrix plots, Hub model card
              (per task), `write_report`
- loop:       the classification recipe (`run(TrainConfig)` = setup, fit, evaluate, finish)
- simmim:     the SimMIM pre-training recipe (the segmentation recipe is swin_hf.segmentation.train)

Needs the `recipes` extra: ``pip install "swin_hf[recipes]"``.

What a recipe calls to get the launch, scale and output-folder behaviour of the others (segment.py and
pretrain_simmim.py are short examples):

- its parser: `cli.add_data_arguments` (--dataset, --streaming, --shuffle-block, --steps-per-epoch),
  `cli.add_hardware_arguments`, `cli.add_run_arguments` (--no-progress, ...); its main: `cli.launch(parser,
  argv, prepare)` (checks --streaming, starts Fabric for the launcher in use with --strategy fsdp as FSDP2,
  logs the launch line)
- `session.Session(...)`; `distributed.setup_model_and_optimizer(fabric, model, make_optimizer)` (the model
  first, then the optimiser on its parameters, as FSDP2 needs)
- with --streaming: `data.load_splits(..., streaming=True)`, `streaming.bounded(validation, n)`,
  `streaming.StreamLoader(fabric, train, decode_rows, batch_size, steps_per_epoch, seed, shuffle_block,
  num_workers)` and `session.track_stream(loader)` before `session.begin`
- the loop: `session.run_epochs(..., metrics=..., progress_bar=...)`, or `progress.Display` in its own loop
  (with `loop.log_training` / `session.log_training_row` for its training rows)
- saving: `session.save_model(lambda folder, weights: model.save_pretrained(folder, state_dict=weights), ...)`
  (`weights` are whole tensors under any strategy); pictures from a forward pass on every process, drawn by
  process 0
- the folder: `report.MetricLoggers` (logs/), `report.model_card(..., task=...)` (a task of
  `report.CARD_TASKS`; a new task adds its entry) and `report.write_report` (metrics.json, training_curves.png,
  README.md)
"""
