"""Active learning with Expected Gradient Length (EGL) and baselines.

``egl_scores`` gives Σ_y p(y|x)‖∇θ ℓ(x, y)‖² per pool point; the strategies share one interface,
``strategy.select(model, X_pool, k) -> indices`` (scores in ``strategy.scores_``); ``run`` is the
pool-based loop that returns learning curves; ``ActiveLearner`` wraps a user's own model.
"""

from .batch import BADGE, BAIT
from .learner import ActiveLearner
from .loop import STRATEGIES, aulc, labels_to_target, make_strategy, run, summarize, train_classifier
from .scores import egl_scores, last_layer_features
from .strategies import BALD, EGL, Entropy, LeastConfidence, Margin, Random, Strategy, predict_proba

__all__ = [
    "egl_scores", "last_layer_features", "Strategy", "EGL", "Random", "Entropy", "Margin", "LeastConfidence",
    "BALD", "BADGE", "BAIT", "run", "ActiveLearner", "summarize", "labels_to_target", "aulc", "make_strategy", "STRATEGIES",
    "train_classifier", "predict_proba",
]
