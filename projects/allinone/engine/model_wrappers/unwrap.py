"""The model inside a (data-parallel) model wrapper."""
from mmengine.model import is_model_wrapper
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """``model.module`` for an mmengine model wrapper (``MultiTaskDistributedDataParallel``, DDP...),
    else ``model``: hooks and loops read the AllInOne model's attributes (``task_names``,
    ``grad_split``) whether or not the run is distributed."""
    return model.module if is_model_wrapper(model) else model
