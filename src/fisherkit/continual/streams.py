"""Task streams from bundled data (scikit-learn digits, 8×8 images, 10 classes; nothing downloaded).

* ``PermutedDigits(n_tasks)``: task t applies a fixed random pixel permutation (task 0: identity)
  to every image; same 10 labels, one 10-way head (domain-incremental input shift).
* ``RotatedDigits(n_tasks, max_angle)``: task t rotates every image by t·max_angle/(n_tasks−1)
  degrees (bilinear, zero background); one 10-way head.
* ``SplitDigits(scenario)``: 5 tasks of 2 classes ({0,1}, {2,3}, ...) in the three scenarios of
  van de Ven & Tolias (2019): ``"task"`` (task identity given: one 2-way head per task),
  ``"domain"`` (one 2-way head, label = parity within the task; the task is not given), and
  ``"class"`` (one head over every class seen so far, growing by 2 each task; the task must be
  inferred — the scenario where regularisation methods are known to fail).

Each ``Stream`` knows how to build its model (``make_model``), how to prepare it for task t
(``prepare``: add/grow/select a head) and which parameters task t uses (``task_params``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..datasets import load
from ..errors import FisherkitError
from .models import MultiHeadMLP

SCENARIOS = ("task", "domain", "class")


@dataclass
class Task:
    """One task: train/test tensors, the global classes it contains and the head it uses."""

    index: int
    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[int] = field(default_factory=list)
    head: int = 0

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X_test, self.y_test


@dataclass
class Stream:
    """A sequence of tasks in one scenario (``"task" | "domain" | "class"``)."""

    name: str
    scenario: str
    tasks: list[Task]
    n_inputs: int
    head_sizes: list[int]  # outputs of the head(s) after the last task

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, t: int) -> Task:
        return self.tasks[t]

    def make_model(self, hidden: tuple[int, ...] = (256, 256), seed: int = 0) -> MultiHeadMLP:
        """A fresh model for this stream (seeded), ready for task 0 after ``prepare(model, 0)``."""
        torch.manual_seed(seed)
        if self.scenario == "task":
            return MultiHeadMLP(self.n_inputs, hidden, [])
        if self.scenario == "class":
            return MultiHeadMLP(self.n_inputs, hidden, [len(self.tasks[0].classes)])
        return MultiHeadMLP(self.n_inputs, hidden, [self.head_sizes[0]])

    def prepare(self, model: MultiHeadMLP, t: int) -> None:
        """Make ``model`` ready to train on task t: add its head (task-IL), widen the head to every
        class seen so far (class-IL), and select the head used by ``forward``."""
        if self.scenario == "task":
            while len(model.heads) <= t:
                model.add_head(len(self.tasks[len(model.heads)].classes))
        elif self.scenario == "class":
            model.grow_head(0, self.seen_classes(t))
        self.select(model, t)

    def select(self, model: MultiHeadMLP, t: int) -> None:
        """Point ``model.forward`` at the head that answers task t (task-IL: head t; else head 0)."""
        model.task = self.tasks[t].head

    def task_params(self, model: MultiHeadMLP, t: int) -> list[str]:
        """Names of the parameters used on task t (the body and task t's head)."""
        return model.task_parameter_names(self.tasks[t].head)

    def seen_classes(self, t: int) -> int:
        return len({c for task in self.tasks[: t + 1] for c in task.classes})


def _digits(seed: int, test_size: float = 0.25, dtype=torch.float32):
    s = load("digits", test_size=test_size, seed=seed, standardize="unit", dtype=dtype)
    return s.X_train, s.y_train, s.X_test, s.y_test


def _check_n_tasks(n_tasks, low=1, high=None):
    if not isinstance(n_tasks, int) or n_tasks < low or (high is not None and n_tasks > high):
        rng = f"[{low}, {high}]" if high else f">= {low}"
        raise FisherkitError(f"n_tasks must be an integer {rng}; got {n_tasks!r}")


def PermutedDigits(n_tasks: int = 10, seed: int = 0, dtype=torch.float32) -> Stream:
    """Digits with a fixed random pixel permutation per task (task 0 unpermuted), one 10-way head."""
    _check_n_tasks(n_tasks)
    Xtr, ytr, Xte, yte = _digits(seed, dtype=dtype)
    g = torch.Generator().manual_seed(10_000 + seed)
    tasks = []
    for t in range(n_tasks):
        perm = torch.arange(Xtr.shape[1]) if t == 0 else torch.randperm(Xtr.shape[1], generator=g)
        tasks.append(Task(t, f"permutation {t}", Xtr[:, perm], ytr, Xte[:, perm], yte, list(range(10)), 0))
    return Stream("permuted", "domain", tasks, Xtr.shape[1], [10])


def _rotate(X: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate square images (rows of X, side √d) about their centre; bilinear, zeros outside."""
    side = int(round(math.sqrt(X.shape[1])))
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=X.dtype)
    imgs = X.reshape(-1, 1, side, side)
    grid = torch.nn.functional.affine_grid(theta.expand(imgs.shape[0], 2, 3), imgs.shape, align_corners=False)
    out = torch.nn.functional.grid_sample(imgs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(X.shape[0], -1)


def RotatedDigits(n_tasks: int = 5, max_angle: float = 180.0, seed: int = 0, dtype=torch.float32) -> Stream:
    """Digits rotated by t·max_angle/(n_tasks−1) degrees in task t, one 10-way head."""
    _check_n_tasks(n_tasks)
    Xtr, ytr, Xte, yte = _digits(seed, dtype=dtype)
    tasks = []
    for t in range(n_tasks):
        deg = 0.0 if n_tasks == 1 else t * max_angle / (n_tasks - 1)
        tasks.append(Task(t, f"rotation {deg:.0f}°", _rotate(Xtr, deg), ytr, _rotate(Xte, deg), yte, list(range(10)), 0))
    return Stream("rotated", "domain", tasks, Xtr.shape[1], [10])


def SplitDigits(scenario: str = "task", n_tasks: int = 5, seed: int = 0, dtype=torch.float32) -> Stream:
    """Digits split into ``n_tasks`` tasks of 10/n_tasks classes each ({0,1}, {2,3}, ... for 5).

    Labels: ``"task"`` and ``"domain"``: position within the task (0..k−1); ``"class"``: the digit.
    """
    if scenario not in SCENARIOS:
        raise FisherkitError(f"unknown scenario {scenario!r}; use one of {list(SCENARIOS)}")
    if not isinstance(n_tasks, int) or n_tasks not in (1, 2, 5, 10):
        raise FisherkitError(f"SplitDigits needs n_tasks in (1, 2, 5, 10) so every task has the same classes; got {n_tasks!r}")
    if scenario != "class" and n_tasks == 10:
        raise FisherkitError("with 10 tasks each task has one class; use scenario='class' or fewer tasks")
    Xtr, ytr, Xte, yte = _digits(seed, dtype=dtype)
    k = 10 // n_tasks
    tasks = []
    for t in range(n_tasks):
        cls = list(range(t * k, (t + 1) * k))
        mtr, mte = (ytr >= cls[0]) & (ytr <= cls[-1]), (yte >= cls[0]) & (yte <= cls[-1])
        off = 0 if scenario == "class" else cls[0]
        head = t if scenario == "task" else 0
        tasks.append(Task(t, f"digits {cls}", Xtr[mtr], ytr[mtr] - off, Xte[mte], yte[mte] - off, cls, head))
    sizes = [k] * n_tasks if scenario == "task" else ([10] if scenario == "class" else [k])
    return Stream(f"split-{scenario}", scenario, tasks, Xtr.shape[1], sizes)


def make_stream(name: str, n_tasks: int | None = None, seed: int = 0, dtype=torch.float32) -> Stream:
    """By name: ``permuted``, ``rotated``, ``split-task``, ``split-domain``, ``split-class``."""
    if name == "permuted":
        return PermutedDigits(10 if n_tasks is None else n_tasks, seed=seed, dtype=dtype)
    if name == "rotated":
        return RotatedDigits(5 if n_tasks is None else n_tasks, seed=seed, dtype=dtype)
    if name.startswith("split-") and name[6:] in SCENARIOS:
        return SplitDigits(name[6:], 5 if n_tasks is None else n_tasks, seed=seed, dtype=dtype)
    raise FisherkitError(f"unknown stream {name!r}; use permuted, rotated, split-task, split-domain or split-class")
