"""Continual learning with the Fisher: EWC (separate / online, diagonal / KFAC), task streams from
bundled digits, the baselines it must beat (fine-tuning, L2, SI, joint) and the standard metrics.

    from fisherkit.continual import EWC, PermutedDigits

The experiment runner and its plots (``run_stream``, ...) live in ``fisherkit.studies.continual``.
"""

from . import baselines, metrics, streams
from .baselines import SI, EWCMethod, FineTune, Joint, L2, make_method
from .ewc import EWC
from .metrics import accuracy_matrix_summary, average_accuracy, backward_transfer, forgetting
from .models import MultiHeadMLP
from .streams import PermutedDigits, RotatedDigits, SplitDigits, Stream, Task, make_stream


__all__ = ["EWC", "streams", "metrics", "baselines", "PermutedDigits", "RotatedDigits", "SplitDigits", "Stream",
           "Task", "make_stream", "MultiHeadMLP", "FineTune", "L2", "SI", "Joint", "EWCMethod", "make_method",
           "average_accuracy", "backward_transfer", "forgetting", "accuracy_matrix_summary"]
