from .allinone_model import AllInOneModel
from .pass_through import SharedFeatures

__all__ = ['AllInOneModel', 'SharedFeatures']
