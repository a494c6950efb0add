"""The routing protocol: AllInOneModel builds model-side methods from the ROUTING registry by config key
and reaches them only through RoutingMethod (a new method needs no edit to the model)."""
import copy

import pytest
import torch
from mmengine.config import Config
from torch import nn

from conftest import DEMO_CFG


def build(cfg):
    from projects.allinone.registry import MODELS
    return MODELS.build(copy.deepcopy(cfg))


@pytest.fixture
def toy_method(registered):
    """A fourth method, registered only for this test: gives each task its own scale on the
    backbone's output (a parameter outside the shared set) and records the protocol calls."""
    from projects.allinone.registry import ROUTING
    from projects.allinone.routing import RoutingMethod

    calls = []

    class OwnScale(RoutingMethod):
        attach_order = 5  # before Recon and GradSplit

        def __init__(self, init=1.0):
            self.init = init

        def attach(self, model, tasks, context):
            calls.append(('attach', list(tasks), context is model.task_context))
            self.scales = nn.ParameterDict({t: nn.Parameter(torch.full((1, ), float(self.init))) for t in tasks})
            model.own_scales = self.scales  # registered as a sub-module of the model
            return self

        def task_parameters(self, model, task):
            yield f'own_scales.{task}', self.scales[task]

        def after_init_weights(self, model):
            calls.append(('after_init_weights', ))

    ROUTING.register_module(name='own_scale', module=OwnScale, force=True)
    yield calls
    ROUTING.module_dict.pop('own_scale')


def test_a_new_routing_method_is_a_registry_entry(toy_method):
    cfg = Config.fromfile(DEMO_CFG).model
    cfg.own_scale = dict(init=2.0)
    cfg.grad_split = dict()
    model = build(cfg)
    assert list(model.routing) == ['own_scale', 'grad_split']  # attach order, not config order
    assert toy_method == [('attach', ['det', 'seg', 'cls'], True)]
    method = model.routing['own_scale']
    assert float(method.scales['seg']) == 2.0
    shared = {id(p) for _, p in model.shared_parameters()}
    for task in model.task_names:
        own = dict(model.task_parameters(task))
        assert own[f'own_scales.{task}'] is method.scales[task]
        assert id(method.scales[task]) not in shared
    partition = model.parameter_partition()
    every = [id(p) for ps in partition.values() for p in ps]
    assert len(every) == len(set(every)) == sum(1 for p in model.parameters() if p.requires_grad)
    model.init_weights()
    assert toy_method[-1] == ('after_init_weights', )


def test_routing_config_values_and_unknown_keys(registered):
    cfg = Config.fromfile(DEMO_CFG).model
    for off in (None, False):
        assert build(dict(cfg, grad_split=off)).routing == {}
    assert list(build(dict(cfg, grad_split=True)).routing) == ['grad_split']
    with pytest.raises(KeyError, match=r"model.grad_splt: no such model argument or routing method; "
                                       r"routing methods: \['grad_split', 'recon'\]"):
        build(dict(cfg, grad_splt=dict()))
    with pytest.raises(ValueError, match="GradSplit: config type 'Recon' is another method"):
        build(dict(cfg, grad_split=dict(type='Recon')))
    with pytest.raises(TypeError, match='GradSplit: expected a dict of arguments'):
        build(dict(cfg, grad_split=['layer4']))
