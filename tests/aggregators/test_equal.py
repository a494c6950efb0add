"""Equal (fixed per-task weights, the plain sum by default): the weights as given on the trunk and
the heads, unknown task names refused."""
import pytest
import torch

from projects.allinone.engine.aggregators import EqualAggregator

from agg_props import TASKS


def test_equal_fixed_weights():
    agg = EqualAggregator(weights=dict(det=2.0, cls=0.5))
    agg.bind(TASKS)
    grads = torch.randn(3, 7, dtype=torch.float64)
    r = agg.aggregate(grads, torch.ones(3), None, TASKS)
    w = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(r.weights, w)
    torch.testing.assert_close(r.own_scales, w)
    torch.testing.assert_close(r.grad, w @ grads)
    with pytest.raises(ValueError, match='depth'):
        EqualAggregator(weights=dict(depth=1.0)).bind(TASKS)
