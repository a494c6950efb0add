"""Where AllInOne registers its modules.

Like mmdetection's ``projects/``, AllInOne runs under ``default_scope='mmdet'`` and registers into
mmdet's registries, so an mmdet user's configs, tools and habits carry over. Parts from the other
libraries are named with ``_scope_='mmseg'`` / ``_scope_='mmpretrain'`` in the config, which makes
mmengine build them (and everything nested in them) from that library's registry.
"""
from mmdet.registry import DATASETS, HOOKS, LOOPS, METRICS, MODELS, OPTIM_WRAPPERS, TRANSFORMS
from mmengine.registry import MODEL_WRAPPERS, Registry

# MODEL_WRAPPERS is mmengine's root registry, not mmdet's child: ``Runner.wrap_model`` looks the
# configured wrapper up with ``MODEL_WRAPPERS.get(type)`` on the root, which does not search scoped
# children, so a wrapper registered under mmdet would not be found.

#: Gradient aggregation methods (see ``projects/allinone/engine/aggregators``).
AGGREGATORS = Registry('gradient aggregator', scope='allinone',
                       locations=['projects.allinone.engine.aggregators'])

#: Model-side methods (routing inside the shared layers: GradSplit, Recon), registered under the
#: model config key that turns them on (``grad_split``, ``recon``; see ``projects/allinone/routing``).
ROUTING = Registry('routing method', scope='allinone', locations=['projects.allinone.routing'])

__all__ = ['AGGREGATORS', 'ROUTING', 'DATASETS', 'HOOKS', 'LOOPS', 'METRICS', 'MODELS', 'MODEL_WRAPPERS',
           'OPTIM_WRAPPERS', 'TRANSFORMS']
