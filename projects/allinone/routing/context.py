"""Which task's forward is running: the context GradSplit and Recon read inside the shared backbone.

:class:`AllInOneModel` owns one :class:`TaskContext` and sets it around every per-task forward
(``task_loss`` while training, ``val_step`` / ``test_step`` / ``forward(task=...)`` otherwise).
The backbone's routing pieces (GradSplit's forward hooks, Recon's per-task layers) hold a
reference to it and read ``task`` and ``train``; nothing else in the backbone knows about tasks.

It is a plain object, not a module: it is not in the state dict, and ``copy.deepcopy`` of the model
copies it once (the memo keeps every reference inside the copied model pointing at the copy).
"""
from contextlib import contextmanager
from typing import Iterator, Optional


class TaskContext:
    """``task``: the task whose forward runs now (``None``: no task, e.g. plain feature extraction).
    ``train``: ``True`` inside a training forward (``task_loss``), where GradSplit routes gradients.
    """

    __slots__ = ('task', 'train')

    def __init__(self):
        self.task: Optional[str] = None
        self.train: bool = False

    @contextmanager
    def running(self, task: Optional[str], train: bool = False) -> Iterator[None]:
        previous = (self.task, self.train)
        self.task, self.train = task, bool(train)
        try:
            yield
        finally:
            self.task, self.train = previous

    def __getstate__(self):
        return {'task': self.task, 'train': self.train}

    def __setstate__(self, state):
        self.task, self.train = state['task'], state['train']

    def __repr__(self):
        return f'TaskContext(task={self.task!r}, train={self.train})'
