"""What a model-side method is to :class:`~projects.allinone.models.AllInOneModel`: one small protocol.

A routing method changes how the tasks share the backbone's layers (GradSplit routes each task's
gradient to its channel groups, Recon gives chosen layers one copy per task). The model builds
every method named in its config from the ``ROUTING`` registry, whose names are the config keys
(``model.grad_split``, ``model.recon``), and calls only the methods below; it knows no method by
name. A new method is one folder under ``routing/`` and one registry entry.
"""
from typing import Dict, Iterator, Optional, Sequence, Tuple

from torch import nn

from ..registry import ROUTING
from .context import TaskContext


class RoutingMethod:
    """Base class (and the protocol) of the methods the model builds from ``ROUTING``.

    ``attach_order``: when several are configured, lower attaches first (Recon replaces layers, so
    it attaches before GradSplit registers hooks on modules by name).
    """

    attach_order = 50

    @classmethod
    def from_config(cls, cfg) -> Optional['RoutingMethod']:
        """The config value (``None``/``False``: off; ``True``: the defaults; a dict of arguments;
        an instance) -> an unattached method or ``None``."""
        if cfg is None or cfg is False:
            return None
        if cfg is True:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        if not isinstance(cfg, dict):
            raise TypeError(f'{cls.__name__}: expected a dict of arguments, True or None, got {cfg!r}')
        cfg = dict(cfg)
        kind = cfg.pop('type', cls.__name__)
        if kind != cls.__name__:
            raise ValueError(f'{cls.__name__}: config type {kind!r} is another method')
        return cls(**cfg)

    def attach(self, model: nn.Module, tasks: Sequence[str], context: TaskContext) -> 'RoutingMethod':
        """Install the method on ``model`` (the model's ``task_context`` says which task runs)."""
        raise NotImplementedError

    def task_parameters(self, model: nn.Module, task: str) -> Iterator[Tuple[str, nn.Parameter]]:
        """Parameters the method gives ``task`` alone (they leave the shared set); default none."""
        return iter(())

    def after_init_weights(self, model: nn.Module) -> None:
        """Called after the model's weights are initialised (or loaded as pretrained)."""

    def plain_key(self, key: str, prefix: str) -> str:
        """How a checkpoint of the plain network names ``key`` of the module named ``prefix`` (e.g. a
        per-task copy's key -> the shared layer's key it loads from); default: the key itself."""
        return key


def model_name(modules: Dict[str, nn.Module], name: str) -> Optional[str]:
    """The model's name of a module given by its model name (``'backbone.layer4'``) or its name in the
    backbone (``'layer4'``); ``None`` when neither names a module of ``modules`` (``named_modules()``)."""
    for candidate in (name, f'backbone.{name}'):
        if candidate and candidate in modules:
            return candidate
    return None


def build_routing(key: str, cfg, model: nn.Module, tasks: Sequence[str],
                  context: TaskContext) -> Optional[RoutingMethod]:
    """``model.<key>`` -> the attached method registered under ``key`` (``None`` when off)."""
    cls = ROUTING.get(key)
    if cls is None:
        raise KeyError(f'model.{key}: no such model argument or routing method; routing methods: '
                       f'{sorted(ROUTING.module_dict)}')
    method = cls.from_config(cfg)
    return None if method is None else method.attach(model, tasks, context)


def routing_order(keys: Sequence[str]):
    """The config keys in attach order."""
    return sorted(keys, key=lambda k: (getattr(ROUTING.get(k), 'attach_order', 50), k))
