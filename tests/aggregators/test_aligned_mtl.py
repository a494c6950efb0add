"""Aligned-MTL: known answers, the paper's formula from an SVD computed here (condition number 1, equal
singular values along every principal direction), rank-deficient gradients, task weights."""
import numpy as np
import pytest

from projects.allinone.engine.aggregators import AlignedMTLAggregator

from gradient_props import (
    G,
    close,
    random_grads,
    run,
)


def aligned_reference(grads, mode='min'):
    """The paper's formula from an SVD of G computed here: G_hat = s V U^T, update = 1^T G_hat."""
    g = grads.double().numpy()
    V, S, Ut = np.linalg.svd(g, full_matrices=False)
    keep = S ** 2 > (S ** 2).max() * len(g) * np.finfo(np.float32).eps
    V, S, Ut = V[:, keep], S[keep], Ut[keep]
    s = dict(min=S.min(), rmse=np.sqrt(np.mean(S ** 2)))[mode]
    aligned = s * V @ Ut
    return aligned.sum(0), aligned, V, Ut, s


def test_aligned_known_answers():
    agg = AlignedMTLAggregator()
    r = run(agg, G([3, 0], [0, 1]))
    close(r.grad, [1, 1]), close(r.weights, [1 / 3, 1]), close(r.own_scales, [1, 1])
    r = run(agg, G([2, 0], [0, 2]))
    close(r.grad, [2, 2]), close(r.weights, [1, 1])


@pytest.mark.parametrize('mode', ['min', 'rmse'])
@pytest.mark.parametrize('seed', [0, 1])
def test_aligned_matches_paper_formula(seed, mode):
    grads = random_grads(3, 6, seed)
    r = run(AlignedMTLAggregator(scale_mode=mode), grads)
    expected, aligned, V, Ut, s = aligned_reference(grads, mode)
    close(r.grad, expected, atol=1e-4)
    # the aligned system is orthogonal with equal norms s: condition number 1
    close(aligned @ aligned.T, s ** 2 * np.eye(3), atol=1e-8)
    # every principal direction u_k (right singular vector) gets the same singular value s: the
    # component of the update along u_k is s * sum_t V[t, k] (it would be sigma_k * sum_t V[t, k] for the sum)
    close(Ut @ r.grad.double().numpy(), s * V.sum(0), atol=1e-4)


def test_aligned_rank_deficient_and_weights():
    grads = random_grads(3, 6, 0)
    grads[2] = grads[0] + grads[1]
    r = run(AlignedMTLAggregator(), grads)
    close(r.grad, aligned_reference(grads)[0], atol=1e-4)
    assert np.linalg.matrix_rank(grads.double().numpy()) == 2
    agg = AlignedMTLAggregator(task_weights=dict(task0=2.0), scale_heads=True)
    r = run(agg, G([3, 0], [0, 1]))
    close(r.grad, [2, 1]), close(r.own_scales, r.weights)
