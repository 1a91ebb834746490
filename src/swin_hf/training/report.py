"""What a finished run leaves behind for people: metrics.json, a CSV log, PNG plots, a model card."""

from __future__ import annotations

import csv
import io
import json
import logging
import os

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


def plot_curves(history: list[dict], path: str, scores=(("val_top1", "top-1"), ("val_top5", "top-5")),
                score_title: str = "Validation accuracy") -> None:
    """Training loss per logged step, validation loss (if logged) and the validation `scores` (history key,
    legend) per evaluation as percentages, learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if "train_loss" in h]
    evals = [h for h in history if scores[0][0] in h]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        axes[0].plot([h["step"] for h in train], [h["train_loss"] for h in train], label="train", alpha=0.8)
    if evals:
        if "val_loss" in evals[0]:
            axes[0].plot([h["step"] for h in evals], [h["val_loss"] for h in evals], "o-", label="validation")
        for (key, name), style in zip(scores, ("o-", "s--", "^:", "d-.")):
            if key in evals[0]:
                axes[1].plot([h["step"] for h in evals], [100 * h[key] for h in evals], style, label=name)
    if train:
        axes[2].plot([h["step"] for h in train], [h["lr"] for h in train])
    for ax, title, ylabel in zip(axes, ("Loss", score_title, "Learning rate"), ("loss", "%", "lr")):
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


def model_card(
    model_name: str,
    base_model: str,
    dataset: str,
    class_names: list[str],
    hyperparameters: dict,
    metrics: dict,
    notes: list[str] = (),
    task: str = "image-classification",
    headline: tuple[str, str, str] = ("val_top1", "accuracy", "top-1 accuracy"),
    description: str | None = None,
    pictures: tuple[str, ...] | list[str] = ("training_curves.png", "confusion_matrix.png"),
) -> str:
    """A Hub-format README.md (YAML metadata + text) for the trained model. `task` is its pipeline tag;
    `headline` = (metrics key, metric type, metric name) is the result in the model index; `description`
    replaces the classifier's first sentence; `pictures` are the images shown at the end."""
    headline_value = metrics.get(headline[0])
    caller = {"image-classification": "classifier", "object-detection": "detector"}.get(task, "pipe")
    lines = ["---", "library_name: transformers", f"pipeline_tag: {task}", "tags:", "- swin_hf", f"- {task}", "- vision"]
    if base_model and os.path.sep not in base_model and not base_model.startswith("swin-") and "/" in base_model:
        lines.append(f"base_model: {base_model}")
    if dataset and "/" in dataset and not os.path.exists(dataset):
        lines += ["datasets:", f"- {dataset}"]
    if headline_value is not None:
        lines += [
            "model-index:",
            f"- name: {model_name}",
            "  results:",
            "  - task:",
            f"      type: {task}",
            f"      name: {task.replace('-', ' ').title()}",
            "    dataset:",
            f"      name: {dataset}",
            f"      type: {dataset}",
            "    metrics:",
            f"    - type: {headline[1]}",
            f"      value: {headline_value:.4f}",
            f"      name: {headline[2]}",
        ]
    lines.append("---")
    lines += [
        "",
        f"# {model_name}",
        "",
        description
        or f"A Swin Transformer (Liu et al., ICCV 2021) image classifier trained with the swin_hf fine-tuning recipe "
        f"from `{base_model}` on `{dataset}` ({len(class_names)} classes).",
        "",
        "## Usage",
        "",
        "```python",
        "import swin_hf  # registers the model with transformers' Auto classes",
        "from transformers import pipeline",
        "",
        f'{caller} = pipeline("{task}", model="{model_name}")',
        f'{caller}("image.png")',
        "```",
        "",
        "## Results (validation split)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, float):
            value = f"{100 * value:.2f}%" if ("top" in key or "acc" in key) else f"{value:.4g}"
        lines.append(f"| {key} | {value} |")
    lines += ["", "## Training hyperparameters", "", "| name | value |", "|---|---|"]
    for key in sorted(hyperparameters):
        lines.append(f"| {key} | `{hyperparameters[key]}` |")
    lines += ["", "## Labels", "", ", ".join(f"{i}: {n}" for i, n in enumerate(class_names[:100])) + (" ..." if len(class_names) > 100 else "")]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    for picture in pictures:
        lines += ["", f"![{os.path.splitext(os.path.basename(picture))[0].replace('_', ' ')}]({picture})"]
    lines.append("")
    return "\n".join(lines)


__all__ = ["CSVLog", "confusion_matrix", "model_card", "plot_confusion", "plot_curves", "write_json", "write_text"]
