"""`evaluate` metric modules shipped with swin_hf (loadable by path, no Hub access needed)."""

import os

ACCURACY_PATH = os.path.join(os.path.dirname(__file__), "accuracy.py")


def load_accuracy():
    """evaluate's Metric for accuracy, from the module shipped in this package (works offline)."""
    import evaluate

    return evaluate.load(ACCURACY_PATH)


__all__ = ["ACCURACY_PATH", "load_accuracy"]
