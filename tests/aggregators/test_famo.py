"""FAMO: the closed-form weights from the logits, the logit update as one Adam step on the log-loss
change, a stalled task gaining weight."""
import pytest
import torch

from projects.allinone.engine.aggregators import FAMOAggregator


def test_famo_closed_form_gradient():
    agg = FAMOAggregator()
    agg.bind(['a', 'b'])
    agg.load_state_dict(dict(xi=dict(a=0.3, b=-0.2)))
    grads = torch.randn(2, 6, dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    r = agg.aggregate(grads, losses, None, ['a', 'b'])
    z = torch.softmax(torch.tensor([0.3, -0.2], dtype=torch.float64), 0)
    c = 1 / (z / losses).sum()
    w = c * z / losses
    torch.testing.assert_close(r.weights, w)
    torch.testing.assert_close(r.grad, w[0] * grads[0] + w[1] * grads[1])
    torch.testing.assert_close(r.own_scales, w)
    assert float(r.weights.sum()) == pytest.approx(1.0)  # c makes the weights sum to 1


def test_famo_logit_update_is_one_adam_step_on_the_log_loss_change():
    agg = FAMOAggregator(lr=0.025, gamma=1e-3)
    agg.bind(['a', 'b'])
    grads = torch.randn(2, 3, dtype=torch.float64)
    agg.aggregate(grads, torch.tensor([1.0, 1.0], dtype=torch.float64), None, ['a', 'b'])
    assert agg.state_dict()['xi'] == {}  # nothing to compare with yet
    agg.aggregate(grads, torch.tensor([0.5, 1.0], dtype=torch.float64), None, ['a', 'b'])
    xi = agg.state_dict()['xi']
    # delta = (log 2, 0), z = (1/2, 1/2): d xi = z (delta - z.delta) = (+, -); Adam's first step is lr * sign
    assert xi['a'] == pytest.approx(-0.025) and xi['b'] == pytest.approx(0.025)


def test_famo_task_whose_loss_stalls_gains_weight():
    agg = FAMOAggregator()
    agg.bind(['falling', 'stalled'])
    grads = torch.randn(2, 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for k in range(60):
        noise = 1 + 0.02 * torch.rand(2, generator=g, dtype=torch.float64)
        agg.aggregate(grads, torch.tensor([0.9 ** k, 1.0], dtype=torch.float64) * noise, None,
                      ['falling', 'stalled'])
    xi = agg.state_dict()['xi']
    assert xi['stalled'] > xi['falling']
    w = agg.next_weights(dict(falling=1.0, stalled=1.0))  # at equal losses the stalled task leads
    assert w['stalled'] > 0.6
