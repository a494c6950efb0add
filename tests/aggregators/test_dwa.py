"""Dynamic weight average (DWA): the weights follow the slowest-falling loss, held for a window."""
import pytest
import torch

from projects.allinone.engine.aggregators import DWAAggregator

from agg_props import TASKS


def test_dwa_weights_follow_the_slowest_falling_loss():
    agg = DWAAggregator(window=3, temperature=2.0)
    agg.bind(TASKS)
    # det halves every window, seg stays, cls falls by 10% per window
    loss_of = lambda k: torch.tensor([4.0 * 0.5 ** (k // 3), 1.0, 2.0 * 0.9 ** (k // 3)],  # noqa: E731
                                     dtype=torch.float64)
    grads = torch.randn(3, 4, dtype=torch.float64)
    for k in range(6):  # the first two windows: equal weights
        w = agg.aggregate(grads, loss_of(k), None, TASKS).weights
        torch.testing.assert_close(w, torch.ones(3, dtype=torch.float64))
    w = agg.aggregate(grads, loss_of(6), None, TASKS).weights
    expect = 3 * torch.softmax(torch.tensor([0.5, 1.0, 0.9], dtype=torch.float64) / 2.0, 0)
    torch.testing.assert_close(w, expect)
    assert w.argmax() == 1 and w.argmin() == 0
    assert float(w.sum()) == pytest.approx(3.0)
    for k in range(7, 9):  # held for the whole window
        torch.testing.assert_close(agg.aggregate(grads, loss_of(k), None, TASKS).weights, expect)
