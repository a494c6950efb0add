"""Multi-task gradient methods: one file per method, all behind :class:`GradAggregator`."""
from .base import AggregateResult, GradAggregator, TaskScalingAggregator
from .sum import SumAggregator
from .tbgc import TBGCAggregator
from .dwa import DWAAggregator
from .equal import EqualAggregator
from .famo import FAMOAggregator
from .gradnorm import GradNormAggregator
from .maxgnr import MaxGNRAggregator
from .rlw import RLWAggregator
from .uncertainty import UncertaintyAggregator
from .aligned_mtl import AlignedMTLAggregator
from .cagrad import CAGradAggregator
from .gradvac import GradVacAggregator
from .imtl import IMTLGAggregator
from .mgda import MGDAAggregator
from .nashmtl import NashMTLAggregator
from .pcgrad import PCGradAggregator
from .chain import ChainAggregator
from .gramian import GramianAggregator
from .upgrad import UPGradAggregator
from .dualproj import DualProjAggregator
from .fairgrad import FairGradAggregator
from .conflict_free import ConFIGAggregator
from .crmogm import CRMOGMAggregator
from .imtl_hybrid import IMTLAggregator
from .dbmtl import DBMTLAggregator
from .moco import MoCoAggregator
from .excessmtl import ExcessMTLAggregator
from .graddrop import GradDropAggregator
from .stch import STCHAggregator
from .gls import GLSAggregator
from .imtl_l import IMTLLAggregator

__all__ = ['AggregateResult', 'GradAggregator', 'TaskScalingAggregator', 'SumAggregator', 'TBGCAggregator',
           'DWAAggregator', 'EqualAggregator', 'FAMOAggregator', 'GradNormAggregator', 'MaxGNRAggregator',
           'RLWAggregator', 'UncertaintyAggregator',
           'AlignedMTLAggregator', 'CAGradAggregator', 'GradVacAggregator', 'IMTLGAggregator', 'MGDAAggregator',
           'NashMTLAggregator', 'PCGradAggregator', 'ChainAggregator',
           'GramianAggregator', 'UPGradAggregator', 'DualProjAggregator',
           'FairGradAggregator', 'ConFIGAggregator', 'CRMOGMAggregator', 'IMTLAggregator', 'DBMTLAggregator',
           'MoCoAggregator', 'ExcessMTLAggregator', 'GradDropAggregator', 'STCHAggregator', 'GLSAggregator',
           'IMTLLAggregator']
