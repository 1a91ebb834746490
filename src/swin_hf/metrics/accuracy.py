"""Top-k accuracy as an `evaluate` metric module, shipped inside swin_hf so it loads offline.

Load it by path: ``evaluate.load(swin_hf.metrics.ACCURACY_PATH)``. Inputs are class indices;
for top-k, pass per example the rank-k hit as `predictions` (see swin_hf.training.loop) or just
top-1 predictions. `normalize=False` returns the count of correct examples.
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their references."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class indices.
    references (list of int): true class indices.
    normalize (bool): fraction (default) or count of correct predictions.
Returns:
    accuracy (float or int)
Examples:
    >>> metric = evaluate.load(ACCURACY_PATH)
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 2])
    {'accuracy': 0.6666666666666666}
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize=True):
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        if not normalize:
            return {"accuracy": correct}
        return {"accuracy": correct / len(references) if len(references) else 0.0}
