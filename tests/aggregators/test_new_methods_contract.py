"""What every method added with the Gramian base shares: a preset name, a registry entry, the streaming
flag of its family, finite results on zero gradients, the gradients' dtype, and a one-config-line run."""
import pytest
import torch

from projects.allinone.engine.aggregators import GramianAggregator, TaskScalingAggregator
from projects.allinone.engine.aggregators.base import build_aggregator
from projects.allinone.methods import METHOD_PRESETS, method_optim_overrides

from agg_props import TASKS, random_grads

#: preset name -> (class, family)
NEW = {
    'upgrad': ('UPGradAggregator', 'gram'), 'dualproj': ('DualProjAggregator', 'gram'),
    'fairgrad': ('FairGradAggregator', 'gram'), 'config': ('ConFIGAggregator', 'gram'),
    'crmogm': ('CRMOGMAggregator', 'wrapper'), 'imtl_hybrid': ('IMTLAggregator', 'gram'),
    'dbmtl': ('DBMTLAggregator', 'stateful'), 'moco': ('MoCoAggregator', 'stateful'),
    'excessmtl': ('ExcessMTLAggregator', 'stateful'), 'graddrop': ('GradDropAggregator', 'stateful'),
    'stch': ('STCHAggregator', 'scalariser'), 'gls': ('GLSAggregator', 'scalariser'),
    'imtl_l': ('IMTLLAggregator', 'scalariser'),
}


@pytest.mark.parametrize('name', list(NEW))
def test_preset_builds_its_class_of_its_family(name):
    cls, family = NEW[name]
    assert name in METHOD_PRESETS and 'imtl' in METHOD_PRESETS    # 'imtl' stays IMTL-G
    agg = build_aggregator(method_optim_overrides(name)['aggregator'])
    assert type(agg).__name__ == cls and repr(agg).startswith(cls)
    agg.bind(TASKS)
    assert agg.streaming == (family == 'scalariser') == isinstance(agg, TaskScalingAggregator)
    assert isinstance(agg, GramianAggregator) == (family == 'gram')
    assert 'clip_grad' not in method_optim_overrides(name)


@pytest.mark.parametrize('name', list(NEW))
@pytest.mark.parametrize('zero_rows', [[1], [0, 1, 2]])
def test_zero_gradients_give_finite_results_in_the_gradients_dtype(name, zero_rows):
    grads = random_grads(3, 10, 2, dtype=torch.float32)
    grads[zero_rows] = 0
    agg = build_aggregator(METHOD_PRESETS[name][0])
    agg.bind(TASKS)
    for _ in range(2):
        r = agg.aggregate(grads, torch.tensor([1.0, 2.0, 0.5]), torch.ones(3), TASKS)
        assert r.grad.dtype == torch.float32 and r.grad.shape == (10,)
        for t in (r.grad, r.weights, r.own_scales):
            assert torch.isfinite(t).all()
        if len(zero_rows) == 3:
            assert float(r.grad.abs().max()) == 0
