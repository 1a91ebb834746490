"""The swin_hf training recipes (recipes/*.py): one loop, and a task per recipe, one concern per module.

- settings:   recipe settings as dataclasses (`RecipeSettings`: the options every recipe shares); the
              command line, --config files and OUTPUT_DIR/settings.json come from the fields
- task:       what a recipe adds to the loop (`Task`: its data, model, loss, evaluation, saved folder, pictures)
- loop:       the loop every recipe runs: setup -> fit -> evaluate -> finish (resume, accumulation, EMA,
              checkpoints, the best model, the outputs)
- cli:        a recipe's main (`launch`): settings parsed, Fabric started for the launcher in use, one-line errors
- classification: the fine-tuning recipe's task (recipes/finetune.py); simmim: SimMIM pre-training's
              (recipes/pretrain_simmim.py); swin_hf.segmentation.train and swin_hf.detection.train: the others
- launcher:   the `lightning` command (`lightning run SCRIPT`: Lightning Fabric's launcher, a free port)
- distributed: --strategy (fsdp = FSDP2 per Swin block, CPU or GPU), model + optimiser set-up, whole tensors
              for saving
- streaming:  --streaming (datasets streaming, a part per process, block shuffle, resumable position)
- progress:   the first log line, one progress bar, a line per epoch, images/s per process and in total
- session:    the output folder, resume (the settings compared), atomic checkpoints and model folders, the
              optimiser step
- checkpoint: atomic checkpoints (weights_only), the settings compared on resume, unreadable files set
              aside, the output-folder checks and lock, RNG state
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

Needs the `recipes` extra: ``pip install "swin_hf[recipes]"``.

A new recipe is a settings class and a task (swin_hf.training.classification is the example):

    @dataclass
    class MySettings(RecipeSettings):
        image_size: int = option(64, "training size", positive_int, group="model")

    class MyTask(Task):
        name, score, card_task = "mine", "val_top1", "image-classification"
        def load_data(self, fabric): ...      # -> TaskData(train, validation, collate)
        def build_model(self, data): ...
        def loss(self, run, batch): ...
        def evaluate(self, run): ...          # -> Evaluation(metrics, score, text)

    def main(argv=None):
        return launch(MyTask, MySettings, argv, "mine.py", "What it trains.")
"""
