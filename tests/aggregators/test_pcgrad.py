"""PCGrad: known answers, conflicting components removed (Algorithm 1 of the paper with explicit
vectors), the random projection order from the method's own generator."""
import itertools

import numpy as np
import torch

from projects.allinone.engine.aggregators import PCGradAggregator
from projects.allinone.engine.aggregators._gram import gram_matrix

from gradient_props import (
    G,
    close,
    random_grads,
    run,
)


def pcgrad_reference(grads, orders):
    """Algorithm 1 of the paper with explicit vectors; orders[i] = order of the other tasks for task i."""
    g = grads.double().numpy()
    out = []
    for i, order in enumerate(orders):
        v = g[i].copy()
        for j in order:
            dot = v @ g[j]
            if dot < 0:
                v = v - dot / (g[j] @ g[j]) * g[j]
        out.append(v)
    return np.sum(out, 0)


def test_pcgrad_known_answers():
    agg = PCGradAggregator()
    r = run(agg, G([1, 0], [0, 1]))                      # orthogonal: no conflict, the sum
    close(r.grad, [1, 1]), close(r.weights, [1, 1])
    r = run(agg, G([1, 0], [-1, 1]))                     # conflict: g1 + g2/2 and g2 + g1
    close(r.grad, [0.5, 1.5]), close(r.weights, [2, 1.5])
    r = run(agg, G([1, 2], [-1, -2]))                    # opposite: both projected to zero
    close(r.grad, [0, 0])
    r = run(agg, G([100, 0], [-1, 1]))                   # dominating and conflicting
    close(r.grad, [50, 51]), close(r.weights, [1.01, 51])  # (100,0) + 50 g2 and g2 + g1 / 100
    close(r.own_scales, [1, 1])
    close(run(PCGradAggregator(reduction='mean'), G([1, 0], [-1, 1])).grad, [0.25, 0.75])


def test_pcgrad_removes_conflicting_components():
    torch.manual_seed(0)
    grads = random_grads(2, 8)
    K = gram_matrix(grads)
    assert K[0, 1] < 0
    C = PCGradAggregator().coefficients(K)
    projected = torch.tensor(C) @ grads.double()
    # each projected gradient lies on the normal plane of the other task's gradient (to the float32
    # precision of the gradients, in which the Gram matrix is formed)
    assert abs(float(projected[0] @ grads[1].double())) < 1e-5
    assert abs(float(projected[1] @ grads[0].double())) < 1e-5
    close(run(PCGradAggregator(), grads).grad, pcgrad_reference(grads, [[1], [0]]))


def test_pcgrad_no_conflict_is_the_sum():
    grads = G([1, 0, 0], [1, 1, 0], [0, 1, 1])
    r = run(PCGradAggregator(), grads)
    close(r.grad, grads.sum(0)), close(r.weights, [1, 1, 1])


def test_pcgrad_random_order_from_its_own_generator():
    grads = G([1, 0, 0], [-1, 1, 0], [-1, -1, 1])        # order matters for T=3
    possible = [pcgrad_reference(grads, orders) for orders in itertools.product(
        *[list(itertools.permutations([j for j in range(3) if j != i])) for i in range(3)])]
    seen = set()
    for seed in range(12):
        r = run(PCGradAggregator(seed=seed), grads)
        assert any(np.allclose(r.grad.numpy(), p, atol=1e-5) for p in possible)
        seen.add(tuple(np.round(r.grad.numpy(), 4)))
        torch.manual_seed(seed + 100)                                      # the global RNG plays no part
        close(run(PCGradAggregator(seed=seed), grads).grad, r.grad, atol=0, rtol=0)   # reproducible
    assert len(seen) > 1                                                   # and really random
