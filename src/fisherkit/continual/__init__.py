"""Continual learning with the Fisher: EWC (separate / online, diagonal / KFAC), task streams from
bundled digits, the baselines it must beat (fine-tuning, L2, SI, joint) and the standard metrics.

    from fisherkit.continual import EWC, PermutedDigits, run_stream
"""

from . import baselines, metrics, streams
from .baselines import SI, EWCMethod, FineTune, Joint, L2, make_method
from .ewc import EWC
from .metrics import accuracy_matrix_summary, average_accuracy, backward_transfer, forgetting
from .models import MultiHeadMLP
from .streams import PermutedDigits, RotatedDigits, SplitDigits, Stream, Task, make_stream


def __getattr__(name):  # the experiment runner and plots load on first use (matplotlib is heavy)
    if name in ("experiment", "plots"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "run_stream":
        from .experiment import run_stream

        return run_stream
    raise AttributeError(f"module 'fisherkit.continual' has no attribute {name!r}")


__all__ = ["EWC", "streams", "metrics", "baselines", "PermutedDigits", "RotatedDigits", "SplitDigits", "Stream",
           "Task", "make_stream", "MultiHeadMLP", "FineTune", "L2", "SI", "Joint", "EWCMethod", "make_method",
           "average_accuracy", "backward_transfer", "forgetting", "accuracy_matrix_summary", "run_stream"]
