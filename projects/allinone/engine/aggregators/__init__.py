"""Multi-task gradient methods: one file per method, all behind :class:`GradAggregator`."""
from .base import AggregateResult, GradAggregator, LinearAggregator
from .sum import SumAggregator
from .tbgc import TBGCAggregator

__all__ = ['AggregateResult', 'GradAggregator', 'LinearAggregator', 'SumAggregator', 'TBGCAggregator']
