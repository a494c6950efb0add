from .allinone_model import AllInOneModel
from .gradsplit import GradSplit
from .pass_through import SharedFeatures
from .recon import TaskSpecificLayer
from .routing import TaskContext

__all__ = ['AllInOneModel', 'GradSplit', 'SharedFeatures', 'TaskContext', 'TaskSpecificLayer']
