"""Multi-task gradient methods: one file per method, all behind :class:`GradAggregator`."""
from .aligned_mtl import AlignedMTLAggregator
from .base import AggregateResult, GradAggregator, TaskScalingAggregator
from .cagrad import CAGradAggregator
from .chain import ChainAggregator
from .conflict_free import ConFIGAggregator
from .crmogm import CRMOGMAggregator
from .dbmtl import DBMTLAggregator
from .dualproj import DualProjAggregator
from .dwa import DWAAggregator
from .equal import EqualAggregator
from .excessmtl import ExcessMTLAggregator
from .fairgrad import FairGradAggregator
from .famo import FAMOAggregator
from .gls import GLSAggregator
from .graddrop import GradDropAggregator
from .gradnorm import GradNormAggregator
from .gradvac import GradVacAggregator
from .gramian import GramianAggregator
from .imtl import IMTLGAggregator
from .imtl_hybrid import IMTLAggregator
from .imtl_l import IMTLLAggregator
from .maxgnr import MaxGNRAggregator
from .mgda import MGDAAggregator
from .moco import MoCoAggregator
from .modo import MoDoAggregator
from .nashmtl import NashMTLAggregator
from .pcgrad import PCGradAggregator
from .rlw import RLWAggregator
from .sampled import SampledGradAggregator
from .sdmgrad import SDMGradAggregator
from .stch import STCHAggregator
from .sum import SumAggregator
from .tbgc import TBGCAggregator
from .uncertainty import UncertaintyAggregator
from .upgrad import UPGradAggregator

__all__ = ['AggregateResult', 'GradAggregator', 'TaskScalingAggregator', 'SumAggregator', 'TBGCAggregator',
           'DWAAggregator', 'EqualAggregator', 'FAMOAggregator', 'GradNormAggregator', 'MaxGNRAggregator',
           'RLWAggregator', 'UncertaintyAggregator',
           'AlignedMTLAggregator', 'CAGradAggregator', 'GradVacAggregator', 'IMTLGAggregator', 'MGDAAggregator',
           'NashMTLAggregator', 'PCGradAggregator', 'ChainAggregator',
           'GramianAggregator', 'UPGradAggregator', 'DualProjAggregator',
           'FairGradAggregator', 'ConFIGAggregator', 'CRMOGMAggregator', 'IMTLAggregator', 'DBMTLAggregator',
           'MoCoAggregator', 'ExcessMTLAggregator', 'GradDropAggregator', 'STCHAggregator', 'GLSAggregator',
           'IMTLLAggregator', 'MoDoAggregator', 'SampledGradAggregator', 'SDMGradAggregator']
