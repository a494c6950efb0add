"""Pictures of what the model does: every task drawn by its own library's visualiser."""
from .hook import MultiTaskVisualizationHook
from .visualizer import MultiTaskVisualizer, compose_panels, sample_kind

__all__ = ['MultiTaskVisualizationHook', 'MultiTaskVisualizer', 'compose_panels', 'sample_kind']
