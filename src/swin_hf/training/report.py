"""What a run leaves behind for people, the same in every recipe (`write_report`): metrics.json, the
training curves, a Hub model card, and the CSV/TensorBoard logs (`MetricLoggers`); plus the classifier's
confusion matrix."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import warnings

import numpy as np

logger = logging.getLogger(__name__)


def write_text(path: str, text: str) -> None:
    """Write `text` to a temporary file and rename it over `path`; a failed write (a full disk) removes the
    temporary file and leaves `path` as it was."""
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str))


class CSVLog:
    """Appends rows (dicts) to a CSV file; columns grow as new keys appear (the file is rewritten)."""

    def __init__(self, path: str):
        self.path = path
        self.rows: list[dict] = []
        if os.path.exists(path):
            with open(path, newline="") as f:
                self.rows = [dict(r) for r in csv.DictReader(f)]

    def log(self, row: dict) -> None:
        self.rows.append(row)
        columns: list[str] = []
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, text.getvalue())


def confusion_matrix(references, predictions, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(references, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


ACCURACY = {"val_top1": "top-1", "val_top5": "top-5"}


def plot_curves(history: list[dict], path: str, scores: dict[str, str] | None = None, score_title: str = "Validation accuracy") -> None:
    """Training loss per logged step (and validation loss per evaluation), the validation `scores` (history
    keys -> legend names, shown in %; classification: top-1/top-5), and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = ACCURACY if scores is None else scores
    train = [h for h in history if "train_loss" in h]
    evals = [h for h in history if any(k in h for k in scores) or "val_loss" in h]
    panels = [("Loss", "loss"), *([(score_title, "%")] if scores else []), ("Learning rate", "lr")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    loss_axis, lr_axis = axes[0], axes[-1]
    if train:
        loss_axis.plot([h["step"] for h in train], [h["train_loss"] for h in train], label="train", alpha=0.8)
        lr_axis.plot([h["step"] for h in train], [h["lr"] for h in train])
    if any("val_loss" in h for h in evals):
        loss_axis.plot([h["step"] for h in evals if "val_loss" in h], [h["val_loss"] for h in evals if "val_loss" in h], "o-", label="validation")
    for (key, name), marker in zip(scores.items(), ("o-", "s--", "^:", "d-.")):
        points = [h for h in evals if key in h]
        if points:
            axes[1].plot([h["step"] for h in points], [100 * h[key] for h in points], marker, label=name)
    for ax, (title, ylabel) in zip(axes, panels):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str, max_classes: int = 50) -> None:
    """Row-normalised confusion matrix (true class on rows); the most frequent classes if there are many."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(class_names)
    if len(names) > max_classes:
        keep = np.argsort(-matrix.sum(1))[:max_classes]
        matrix, names = matrix[np.ix_(keep, keep)], [names[i] for i in keep]
    rows = matrix.sum(1, keepdims=True).clip(min=1)
    normalised = matrix / rows
    size = max(4, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 10 else 0)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Validation confusion matrix (accuracy {np.trace(matrix) / max(matrix.sum(), 1):.1%})")
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# what a model card says per task: the pipeline, the headline metric (summary key, Hub metric type, name),
# what the model is, how to use it, and the pictures the recipe writes beside it
CARD_TASKS = {
    "image-classification": dict(
        pipeline="image-classification", title="Image Classification", metric=("val_top1", "accuracy", "top-1 accuracy"),
        what="image classifier trained with the swin_hf fine-tuning recipe",
        usage=['from transformers import pipeline', '', 'classifier = pipeline("image-classification", model={name})',
               'classifier("image.png")'],
        figures=[("training curves", "training_curves.png"), ("confusion matrix", "confusion_matrix.png")],
    ),
    "image-segmentation": dict(
        pipeline="image-segmentation", title="Semantic Segmentation", metric=("mean_iou", "mean_iou", "mIoU"),
        what="backbone in a UperNet semantic segmentation model, trained with the swin_hf segmentation recipe",
        usage=['from transformers import pipeline', '', 'segmenter = pipeline("image-segmentation", model={name})',
               'segmenter("image.png")  # a mask per class found'],
        figures=[("training curves", "training_curves.png"), ("validation image, truth and prediction", "overlays/validation_000.png")],
    ),
    "object-detection": dict(
        pipeline="object-detection", title="Object Detection", metric=("map", "mAP", "box mAP (IoU 0.50:0.95)"),
        what="backbone in a transformers DETR-family object detector, trained with the swin_hf detection recipe",
        usage=['from transformers import pipeline', '', 'detector = pipeline("object-detection", model={name})',
               'detector("image.png")  # boxes, labels and scores'],
        figures=[("training curves", "training_curves.png"), ("validation image, truth and prediction", "pictures/validation_000.png")],
    ),
    "instance-segmentation": dict(
        pipeline="image-segmentation", title="Instance Segmentation", metric=("mask_map", "mAP", "mask mAP (IoU 0.50:0.95)"),
        what="backbone in a transformers Mask2Former instance segmentation model, trained with the swin_hf segmentation recipe",
        usage=['from transformers import pipeline', '', 'segmenter = pipeline("image-segmentation", model={name})',
               'segmenter("image.png", subtask="instance")  # a mask, label and score per object'],
        figures=[("training curves", "training_curves.png"), ("validation image, truth and prediction", "pictures/validation_000.png")],
    ),
    "video-classification": dict(
        pipeline="video-classification", title="Video Classification", metric=("val_top1", "accuracy", "top-1 accuracy"),
        what="video classifier in its Video Swin form (shifted windows over time, height and width), trained with the "
             "swin_hf video recipe",
        usage=['from transformers import pipeline', 'from swin_hf import VideoSwinClassificationPipeline', '',
               'classifier = pipeline("video-classification", model={name}, pipeline_class=VideoSwinClassificationPipeline)',
               'classifier(frames)  # a list of PIL images (or a video file, with PyAV installed)'],
        figures=[("training curves", "training_curves.png"), ("confusion matrix", "confusion_matrix.png")],
    ),
    "masked-image-modeling": dict(
        pipeline=None, title="Masked Image Modeling", metric=None,
        what="encoder pre-trained with SimMIM (masked image modeling) by the swin_hf pre-training recipe",
        usage=['from transformers import AutoModelForMaskedImageModeling', '',
               'model = AutoModelForMaskedImageModeling.from_pretrained({name})',
               '# fine-tune it: python recipes/finetune.py --model {name}'],
        figures=[("training curves", "training_curves.png"), ("input, masked input, reconstruction", "reconstructions.png")],
    ),
}


def _is_percent(key: str) -> bool:
    return any(part in key for part in ("top", "acc", "iou"))


def model_card(
    model_name: str,
    base_model: str,
    dataset: str,
    class_names: list[str],
    hyperparameters: dict,
    metrics: dict,
    notes: list[str] = (),
    task: str = "image-classification",
    version: int = 1,
) -> str:
    """A Hub-format README.md (YAML metadata + text) for a model a recipe trained: `task` is one of
    CARD_TASKS (classification, segmentation, SimMIM pre-training);
    `version`: Swin 1 or 2."""
    from ..model_card import escape_markdown, quoted
    from ..model_source import HUB_ID

    spec = CARD_TASKS[task]
    lines = ["---", "library_name: transformers"]
    if spec["pipeline"]:
        lines.append(f"pipeline_tag: {spec['pipeline']}")
    lines += ["tags:", "- swin_hf", f"- {task}", "- vision"]
    if base_model and "/" in base_model and not base_model.startswith("swin-") and HUB_ID.fullmatch(base_model):
        lines.append(f"base_model: {base_model}")
    if dataset and "/" in dataset and not os.path.exists(dataset) and HUB_ID.fullmatch(dataset):
        lines += ["datasets:", f"- {dataset}"]
    key, kind, name = spec["metric"] or (None, None, None)
    value = metrics.get(key, metrics.get(f"best_{key}")) if key else None
    if value is not None:
        lines += [
            "model-index:",
            f"- name: {quoted(model_name)}",
            "  results:",
            "  - task:",
            f"      type: {task}",
            f"      name: {spec['title']}",
            "    dataset:",
            f"      name: {quoted(dataset)}",
            f"      type: {quoted(dataset)}",
            "    metrics:",
            f"    - type: {kind}",
            f"      value: {value:.4f}",
            f"      name: {name}",
        ]
    lines.append("---")
    classes = f" ({len(class_names)} classes)" if class_names else ""
    lines += [
        "",
        f"# {escape_markdown(model_name)}",
        "",
        f"A {'Swin Transformer V2 (Liu et al., CVPR 2022)' if version == 2 else 'Swin Transformer (Liu et al., ICCV 2021)'} "
        f"{spec['what']}, from {escape_markdown(base_model, code=True)} on {escape_markdown(dataset, code=True)}{classes}.",
        "",
        "## Usage",
        "",
        "```python",
        "import swin_hf  # registers the model with transformers' Auto classes",
        *(line.format(name=quoted(model_name)) for line in spec["usage"]),
        "```",
        "",
        "## Results" + (" (validation split)" if spec["metric"] else ""),
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, float):
            value = f"{100 * value:.2f}%" if _is_percent(key) else f"{value:.4g}"
        lines.append(f"| {escape_markdown(key)} | {escape_markdown(value)} |")
    lines += ["", "## Training hyperparameters", "", "| name | value |", "|---|---|"]
    for key in sorted(hyperparameters):
        lines.append(f"| {escape_markdown(key)} | {escape_markdown(hyperparameters[key], code=True)} |")
    if class_names:
        shown = ", ".join(f"{i}: {escape_markdown(n)}" for i, n in enumerate(class_names[:100]))
        lines += ["", "## Labels", "", shown + (" ..." if len(class_names) > 100 else "")]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {escape_markdown(n)}" for n in notes]
    for caption, figure in spec["figures"]:
        lines += ["", f"![{caption}]({figure})"]
    lines.append("")
    return "\n".join(lines)


def write_report(out: str, summary: dict, history: list[dict], card: str, scores: dict[str, str] | None = None,
                 score_title: str = "Validation accuracy") -> None:
    """What every recipe leaves in its output folder besides the model (call on process 0): metrics.json
    (the summary and the logged history), training_curves.png and the model card README.md."""
    write_json(os.path.join(out, "metrics.json"), {**summary, "history": history})
    plot_curves(history, os.path.join(out, "training_curves.png"), scores, score_title)
    write_text(os.path.join(out, "README.md"), card)


class MetricLoggers:
    """The CSV and TensorBoard logs in output_dir/logs (metrics.csv, tensorboard/), written by process 0
    through Lightning's logger objects (owned here, not attached to Fabric). They open at the first row
    logged: with `resume`, the rows an earlier run logged before that step are kept (Lightning's CSV logger
    would delete them) and TensorBoard hides the earlier events from that step on (they are logged again),
    so the logs of a resumed run hold the whole run once."""

    def __init__(self, fabric, out: str, resume: bool = False):
        self.out, self.resume = out, resume
        self.loggers: list | None = None if fabric.is_global_zero else []
        self.closed = False

    def _open(self, step: int) -> list:
        from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

        earlier = self._rows_before(step) if self.resume else []
        table = CSVLogger(self.out, name="logs", version="")
        with warnings.catch_warnings():  # (its warning that metrics.csv will be deleted: its rows were read above)
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            table.experiment
        for row in earlier:
            table.log_metrics({k: v for k, v in row.items() if k != "step"}, row["step"])
        board = TensorBoardLogger(self.out, name="logs", version="tensorboard", **({"purge_step": step} if self.resume else {}))
        return [table, board]

    def _rows_before(self, step: int) -> list[dict]:
        """The rows of logs/metrics.csv logged before `step`, as numbers (empty cells left out)."""
        path = os.path.join(self.out, "logs", "metrics.csv")
        if not os.path.exists(path):
            return []
        rows = []
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    values = {k: float(v) for k, v in row.items() if k and v not in ("", None)}
                except ValueError:
                    continue
                if "step" in values and values["step"] < step:
                    rows.append({**values, "step": int(values["step"])})
        if rows:
            logger.info("--resume: the logs keep the %d row(s) logged before step %d", len(rows), step)
        return rows

    def log(self, row: dict, step: int) -> None:
        if self.loggers is None:
            self.loggers = self._open(step)
        for experiment_logger in self.loggers:
            experiment_logger.log_metrics(row, step)

    def finalize(self, status: str = "success") -> None:
        """Write out and close the logs (once; a failed run closes them with status "failed")."""
        if not self.closed:
            self.closed = True
            for experiment_logger in self.loggers or []:
                experiment_logger.finalize(status)


__all__ = [
    "CARD_TASKS",
    "CSVLog",
    "MetricLoggers",
    "confusion_matrix",
    "model_card",
    "plot_confusion",
    "plot_curves",
    "write_json",
    "write_report",
    "write_text",
]
