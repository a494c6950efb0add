"""GramianAggregator: the base of the Gram-only methods forms K once, validates, assembles the result."""
import numpy as np
import pytest
import torch

from projects.allinone.engine.aggregators import GramianAggregator

from agg_props import G, close, random_grads, run


class Recorder(GramianAggregator):
    """Weights = the diagonal of K; records what it was given."""

    def __init__(self, heads=False):
        super().__init__()
        self.heads = heads
        self.seen = []

    def weights_from_gram(self, K, losses, tasks):
        self.seen.append((K, losses, tasks))
        w = np.diag(K).copy()
        return (w, 2 * w) if self.heads else w


def test_gram_matrix_losses_and_tasks_reach_the_method():
    grads = random_grads(3, 7, seed=1, dtype=torch.float32)
    agg = Recorder()
    agg.bind(['a', 'b', 'c'])
    r = run(agg, grads, losses=[0.5, 2.0, 3.0])
    K, losses, tasks = agg.seen[0]
    assert K.dtype == np.float64 and tasks == ['a', 'b', 'c']
    close(K, grads.double() @ grads.double().T, rtol=1e-6)
    close(losses, [0.5, 2.0, 3.0])
    close(r.weights, np.diag(K), rtol=1e-6)
    assert r.grad.dtype == torch.float32
    torch.testing.assert_close(r.grad, r.weights @ grads, rtol=0, atol=0)
    close(r.own_scales, [1, 1, 1])                      # no head scales: plain head gradients


def test_head_scales_when_returned():
    r = run(Recorder(heads=True), G([1, 0], [0, 3]))
    close(r.weights, [1, 9]), close(r.own_scales, [2, 18]), close(r.grad, [1, 27])


def test_rows_are_validated():
    agg = Recorder()
    with pytest.raises(ValueError, match='rows'):
        agg.aggregate(random_grads(3, 4), torch.ones(3), None, ['a', 'b'])
    with pytest.raises(ValueError, match='2 losses'):
        agg.aggregate(random_grads(3, 4), torch.ones(2), None, None)
    with pytest.raises(ValueError, match=r'\(T, n\) matrix'):
        agg.aggregate(torch.ones(4), torch.ones(1), None, None)
