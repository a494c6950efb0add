"""AllInOne: one shared backbone trained on detection, segmentation and classification at once.

Importing this package (``custom_imports=dict(imports=['projects.allinone'])``) registers its
model, loops, optim wrappers, aggregators and transforms into the mmdet-scoped registries.
"""
from . import datasets, engine, evaluation, models, routing, visualization  # noqa: F401
from .engine import register_checkpoint_safe_globals

register_checkpoint_safe_globals()

__version__ = '0.1.0'
