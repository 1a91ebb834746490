"""Mean IoU and pixel accuracy for semantic segmentation, as an `evaluate` metric module.

Shipped inside swin_hf so it loads offline by path:
``evaluate.load(swin_hf.segmentation.evaluate.MEAN_IOU_PATH)``. Predictions and references are (H, W)
integer label maps; pixels whose reference equals `ignore_index` are not counted. IoU of a class is
TP / (TP + FP + FN) summed over the whole set (not averaged per image); classes absent from both
predictions and references are left out of the mean (NaN in the per-class list).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Mean intersection-over-union and pixel accuracy of semantic segmentation label maps."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of 2D int arrays): predicted label maps.
    references (list of 2D int arrays): ground-truth label maps, same shapes.
    num_labels (int): number of classes.
    ignore_index (int): reference value that marks pixels to ignore (default 255).
Returns:
    mean_iou, mean_accuracy (mean per-class recall), overall_accuracy (pixel accuracy),
    per_category_iou, per_category_accuracy (lists, NaN for classes that never occur).
Examples:
    >>> metric = evaluate.load(MEAN_IOU_PATH)
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 1]]], num_labels=2)["mean_iou"]
    0.5833333333333333
"""
_CITATION = ""


def confusion_matrix(prediction: np.ndarray, reference: np.ndarray, num_labels: int, ignore_index: int) -> np.ndarray:
    """(num_labels, num_labels) counts, rows = reference class, columns = predicted class."""
    prediction, reference = np.asarray(prediction).reshape(-1), np.asarray(reference).reshape(-1)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction has {prediction.size} pixels but reference has {reference.size}.")
    keep = reference != ignore_index
    prediction, reference = prediction[keep].astype(np.int64), reference[keep].astype(np.int64)
    bad = (reference < 0) | (reference >= num_labels) | (prediction < 0) | (prediction >= num_labels)
    if bad.any():
        raise ValueError(
            f"label values must lie in [0, {num_labels}) or equal ignore_index={ignore_index}; found "
            f"{sorted(set(np.concatenate([reference[bad], prediction[bad]]).tolist()))[:5]}."
        )
    return np.bincount(reference * num_labels + prediction, minlength=num_labels**2).reshape(num_labels, num_labels)


def scores(confusion: np.ndarray) -> dict:
    """mIoU and accuracies from a summed confusion matrix."""
    tp = np.diag(confusion).astype(np.float64)
    reference_total, predicted_total = confusion.sum(1), confusion.sum(0)
    union = reference_total + predicted_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        accuracy = np.where(reference_total > 0, tp / reference_total, np.nan)
    total = confusion.sum()
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
        "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else 0.0,
        "overall_accuracy": float(tp.sum() / total) if total else 0.0,
        "per_category_iou": iou.tolist(),
        "per_category_accuracy": accuracy.tolist(),
    }


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels: int, ignore_index: int = 255):
        confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
        for prediction, reference in zip(predictions, references):
            confusion += confusion_matrix(prediction, reference, num_labels, ignore_index)
        return scores(confusion)
