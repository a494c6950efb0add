"""Random loss weighting (RLW): a softmax of standard normal draws from the method's own generator,
resumed from a checkpoint on the same sequence."""
import pytest
import torch

from projects.allinone.engine.aggregators import RLWAggregator

from agg_props import TASKS, roundtrip


def test_rlw_weights_are_a_random_softmax():
    agg = RLWAggregator()
    grads = torch.randn(3, 4, dtype=torch.float64)
    agg.bind(TASKS)
    ws = [agg.aggregate(grads, torch.ones(3), None, TASKS).weights for _ in range(5)]
    for w in ws:
        assert (w > 0).all() and float(w.sum()) == pytest.approx(1.0)
    assert not torch.equal(ws[0], ws[1])
    # exactly softmax of standard normal draws from the method's generator (seed 0 by default) ...
    expect = torch.softmax(torch.randn(3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 0)
    torch.testing.assert_close(ws[0], expect)
    # ... so reproducible whatever the global RNG does (it differs per rank under diff_rank_seed)
    torch.manual_seed(99)
    again = RLWAggregator()
    again.bind(TASKS)
    for w in ws:
        torch.testing.assert_close(again.aggregate(grads, torch.ones(3), None, TASKS).weights, w)
    other = RLWAggregator(seed=1)
    other.bind(TASKS)
    assert not torch.equal(other.next_weights(TASKS), ws[0])
    assert float(RLWAggregator(total=3).next_weights(TASKS).sum()) == pytest.approx(3.0)


def test_rlw_private_seed_resumes_the_same_sequence():
    a = RLWAggregator(seed=7)
    a.bind(TASKS)
    grads = torch.randn(3, 4)
    for _ in range(3):
        a.aggregate(grads, torch.ones(3), None, TASKS)
    b = RLWAggregator(seed=7)
    b.bind(TASKS)
    b.load_state_dict(roundtrip(a.state_dict()))
    torch.manual_seed(123)  # the global RNG does not matter
    wa = [a.aggregate(grads, torch.ones(3), None, TASKS).weights for _ in range(3)]
    torch.manual_seed(456)
    wb = [b.aggregate(grads, torch.ones(3), None, TASKS).weights for _ in range(3)]
    for x, y in zip(wa, wb):
        assert torch.equal(x, y)
