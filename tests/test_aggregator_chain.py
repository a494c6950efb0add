"""Method presets (one name per method) and chains of methods (TBGC clip, then a surgery)."""
import pytest
import torch

from projects.allinone.engine.aggregators import ChainAggregator, PCGradAggregator, TBGCAggregator
from projects.allinone.engine.aggregators.base import build_aggregator
from projects.allinone.methods import METHOD_PRESETS, method_optim_overrides


def test_tbgc_then_pcgrad_is_pcgrad_on_the_clipped_gradients():
    torch.manual_seed(0)
    G = torch.randn(3, 40, dtype=torch.float64) * torch.tensor([[1.], [30.], [300.]], dtype=torch.float64)
    G[2] = -G[0] * 50 + 0.1 * G[2]  # a conflict that survives the clip
    losses, heads = torch.ones(3, dtype=torch.float64), torch.tensor([1., 2., 3.], dtype=torch.float64)
    chain = build_aggregator(method_optim_overrides('tbgc+pcgrad')['aggregator'])
    chain.bind(['a', 'b', 'c'])
    res = chain.aggregate(G, losses, heads)
    c = torch.clamp(0.1 / (G.norm(dim=1) + 1e-6), max=1.0)
    ref = PCGradAggregator().aggregate(G * c[:, None], losses, heads * c)  # the same seed: the same orders
    assert torch.allclose(res.grad, ref.grad)
    assert torch.allclose(res.grad, res.weights.to(G) @ G)        # weights are on the raw gradients
    assert torch.allclose(res.own_scales, c * ref.own_scales)  # heads scaled by the clip, as TBGC does


def test_chain_rejects_a_combining_method_before_the_last_step():
    with pytest.raises(ValueError, match='steps\\[0\\] \\(PCGradAggregator\\) is not a per-task rescaling'):
        ChainAggregator(steps=[dict(type='PCGradAggregator'), dict(type='TBGCAggregator')])
    with pytest.raises(ValueError, match='at least two'):
        ChainAggregator(steps=[dict(type='TBGCAggregator')])


def test_chain_state_round_trip_reaches_every_step():
    chain = ChainAggregator(steps=[TBGCAggregator(), dict(type='GradVacAggregator')])
    chain.bind(['a', 'b'])
    G = torch.tensor([[1., 0.], [-1., 1.]])
    chain.aggregate(G, torch.ones(2))
    state = chain.state_dict()
    other = ChainAggregator(steps=[TBGCAggregator(), dict(type='GradVacAggregator')])
    other.bind(['a', 'b'])
    other.load_state_dict(state)
    from test_aggregators_contract import assert_same
    assert_same(other.state_dict(), state)
    assert state['1']['targets']


def test_every_preset_builds_and_tbgc_replaces_the_global_clip():
    for name in METHOD_PRESETS:
        over = method_optim_overrides(name)
        assert build_aggregator(over['aggregator']) is not None
        assert ('clip_grad' in over) == (name == 'tbgc')
    assert method_optim_overrides('tbgc+mgda')['clip_grad'] is None
    assert method_optim_overrides('IMTLGAggregator')['aggregator'] == dict(type='IMTLGAggregator')
    with pytest.raises(KeyError, match="unknown method 'pcgard'"):
        method_optim_overrides('pcgard')
    with pytest.raises(KeyError, match="unknown aggregator 'Nope'"):
        build_aggregator(dict(type='Nope'))
    with pytest.raises(TypeError, match='PCGradAggregator: .*unexpected keyword'):
        build_aggregator(dict(type='PCGradAggregator', c=0.4))
