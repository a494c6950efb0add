"""GradDrop: the sign-purity masking rule on hand-made signs, its probabilities, leak, and the owned,
seeded generator (same draws on every rank, resumed sequence, global RNG untouched)."""
import pytest
import torch

from projects.allinone.engine.aggregators import GradDropAggregator

from agg_props import G, check_round_trip, check_through_wrapper, close, make_stream, run

#: coordinates: all positive | P = 1/3 | P = 1/2 | all zero | P = 0.6
HAND = G([1, -1, 2, 0, 3],
         [1, 1, -2, 0, -1],
         [1, -1, 0, 0, -1])
PURITY = torch.tensor([1.0, 1 / 3, 0.5, 0.5, 0.6], dtype=torch.float64)


def expected(grads, U, P=PURITY, leak=(0.0, 0.0, 0.0)):
    """Algorithm 1's lines 10-15 written out per coordinate and task."""
    out = torch.zeros(grads.shape[1], dtype=grads.dtype)
    for i, g in enumerate(grads):
        M = ((P > U) & (g > 0)) | ((P < U) & (g < 0))
        out += (leak[i] + (1 - leak[i]) * M.to(g.dtype)) * g
    return out


def test_masking_rule_on_hand_made_signs():
    agg = GradDropAggregator(seed=3)
    for _ in range(6):
        U = agg.uniform(5, HAND)                        # the draw of the coming step
        r = run(agg, HAND)
        close(r.grad, expected(HAND, U))
        assert float(r.grad[0]) == 3 and float(r.grad[3]) == 0   # agreement is never dropped
        kept_pos = PURITY > U
        close(r.grad[1], torch.where(kept_pos[1], 1.0, -2.0))    # the positive or the negative side, whole
        close(r.grad[4], torch.where(kept_pos[4], 3.0, -2.0))
        close(r.own_scales, [1, 1, 1])
        for i in range(3):                              # logged weight: the kept fraction of the norm
            g = HAND[i]
            M = ((PURITY > U) & (g > 0)) | ((PURITY < U) & (g < 0))
            close(r.weights[i], (g * M).norm() / g.norm())


def test_keep_probability_is_the_sign_purity():
    reps = 4000
    grads = HAND.repeat(1, reps)
    r = run(GradDropAggregator(seed=0), grads).grad.view(reps, 5)
    freq_pos = [(r[:, 1] > 0).double().mean(), (r[:, 2] > 0).double().mean(), (r[:, 4] > 0).double().mean()]
    close(freq_pos, [1 / 3, 0.5, 0.6], atol=0.03)


def test_leak():
    agg = GradDropAggregator(leak=1.0)
    close(run(agg, HAND).grad, HAND.sum(0))             # everything leaks: the plain sum
    agg = GradDropAggregator(leak=dict(task1=0.25), seed=1)
    U = agg.uniform(5, HAND)
    close(run(agg, HAND).grad, expected(HAND, U, leak=(0.0, 0.25, 0.0)))


def test_generator_is_owned_seeded_and_resumable():
    stream = make_stream(6)
    outs = []
    for _ in range(2):                                  # two "ranks": the same draws whatever the global RNG
        torch.manual_seed(len(outs) * 1000)
        agg = GradDropAggregator(seed=7)
        outs.append([agg.aggregate(g, l, None, t).grad for g, l, t in stream])
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    other = GradDropAggregator(seed=8)
    assert not all(torch.equal(other.aggregate(g, l, None, t).grad, a) for (g, l, t), a in zip(stream, outs[0]))
    state = torch.random.get_rng_state()
    run(GradDropAggregator(), HAND)
    assert torch.equal(state, torch.random.get_rng_state())     # the global RNG is not touched
    check_round_trip(lambda: GradDropAggregator(seed=7), stream)


def test_bad_arguments_name_the_argument():
    for kwargs, arg in ((dict(leak=1.5), 'leak'), (dict(leak=dict(a=-0.1)), 'leak'), (dict(seed=-1), 'seed'),
                        (dict(seed=1.5), 'seed')):
        with pytest.raises(ValueError, match=arg):
            GradDropAggregator(**kwargs)
    with pytest.raises(ValueError, match=r"leak names tasks \['sge'\]"):
        GradDropAggregator(leak=dict(sge=0.5)).bind(['det', 'seg'])


def test_through_the_optim_wrapper():
    check_through_wrapper(dict(type='GradDropAggregator', seed=2))
