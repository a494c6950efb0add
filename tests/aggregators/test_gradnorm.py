"""GradNorm: alpha = 0 equalises the weighted gradient norms, the slowly training task gains weight."""
import pytest
import torch

from projects.allinone.engine.aggregators import GradNormAggregator


def test_gradnorm_alpha0_equalises_weighted_norms():
    agg = GradNormAggregator(alpha=0.0, lr=0.02)
    agg.bind(['a', 'b'])
    grads = torch.zeros(2, 4, dtype=torch.float64)
    grads[0, 0], grads[1, 1] = 1.0, 100.0
    losses = torch.ones(2, dtype=torch.float64)
    ratios = []
    for _ in range(300):
        w = agg.aggregate(grads, losses, None, ['a', 'b']).weights
        assert float(w.sum()) == pytest.approx(2.0)
        assert (w > 0).all()
        ratios.append(float(w[0] * 1.0 / (w[1] * 100.0)))
    # with a constant lr the L1 objective ends in a small limit cycle around w_a * 1 = w_b * 100
    assert all(0.8 < r < 1.25 for r in ratios[-50:])
    assert sum(ratios[-50:]) / 50 == pytest.approx(1.0, rel=0.05)
    assert float(agg.next_weights()[0]) == pytest.approx(200 / 101, rel=0.01)


def test_gradnorm_favours_the_slowly_training_task():
    agg = GradNormAggregator(alpha=1.5, lr=0.02)
    agg.bind(['fast', 'slow'])
    grads = torch.eye(2, dtype=torch.float64)  # equal norms
    for k in range(100):
        losses = torch.tensor([0.97 ** k, 1.0], dtype=torch.float64)
        agg.aggregate(grads, losses, None, ['fast', 'slow'])
    w = agg.next_weights()
    assert w[1] > w[0]
    assert float(w.sum()) == pytest.approx(2.0)
    # the target: G_t proportional to r_t^alpha (r relative inverse training rate)
    rel = torch.tensor([0.97 ** 99, 1.0], dtype=torch.float64)
    r = rel / rel.mean()
    # the target ratio (r_slow / r_fast)^alpha is ~92 here; the weights follow it with some lag
    assert float(w[1] / w[0]) > 0.5 * float((r[1] / r[0]) ** 1.5)


def rising_then_falling(k):
    """Losses of a detection head that warms up (0.1 -> 1.6 over 50 steps, then falling like the
    others) beside two tasks whose losses fall from the start."""
    det = 0.1 + 1.5 * k / 50 if k < 50 else 1.6 * 0.995 ** (k - 50)
    return torch.tensor([det, 1.0 * 0.995 ** k, 1.8 * 0.998 ** k], dtype=torch.float64)


def test_a_reference_window_keeps_a_rising_loss_from_taking_the_weight():
    """First-loss reference: detection's L/L(0) is ~14, so GradNorm pushes the others to the floor. The
    mean over the first 50 losses as L(0): no weight collapses, and the weights stay 1 in the window."""
    grads = torch.eye(3, dtype=torch.float64)            # equal norms: only the loss ratios matter
    tasks = ['det', 'seg', 'cls']
    first = GradNormAggregator(alpha=1.5, lr=0.02)
    warm = GradNormAggregator(alpha=1.5, lr=0.02, reference_steps=50)
    for k in range(150):
        first.aggregate(grads, rising_then_falling(k), None, tasks)
        warm.aggregate(grads, rising_then_falling(k), None, tasks)
        if k < 49:
            assert torch.equal(warm.next_weights(tasks), torch.ones(3, dtype=torch.float64))
    wf, ww = first.next_weights(tasks), warm.next_weights(tasks)
    assert float(wf[0]) > 2.5 and float(wf[1]) < 0.1
    assert float(ww.min()) > 0.4 and float(ww[0]) < float(wf[0]) - 1.0
    assert float(ww.sum()) == pytest.approx(3.0)
    # L(0) is the window's mean: 0.1 + 1.5 * mean(0..49) / 50 for detection
    assert warm.state_dict()['initial_loss']['det'] == pytest.approx(0.1 + 1.5 * 24.5 / 50)


def test_state_round_trip_inside_the_window():
    from agg_props import check_round_trip, make_stream
    check_round_trip(lambda: GradNormAggregator(reference_steps=5), make_stream(8))
    check_round_trip(GradNormAggregator, make_stream(8))


def test_bad_reference_steps_name_the_argument():
    for bad in (0, 1.5, False):
        with pytest.raises(ValueError, match='reference_steps'):
            GradNormAggregator(reference_steps=bad)


def test_the_window_through_the_optim_wrapper():
    from agg_props import check_through_wrapper
    logged = check_through_wrapper(dict(type='GradNormAggregator', lr=0.05, reference_steps=3), steps=6,
                                   streaming_modes=(True, False))
    assert all(row == [1.0, 1.0, 1.0] for row in logged[:3]) and logged[3] != logged[2]
