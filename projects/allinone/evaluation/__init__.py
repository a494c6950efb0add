from .leaderboard import KNOWN_PER_CLASS, KNOWN_PRIMARY, Leaderboard
from .metrics import ChallengeCocoMetric, ChallengeIoUMetric
from .submission import SubmissionBuilder, mask_to_polygons, polygons_to_mask

__all__ = ['ChallengeCocoMetric', 'ChallengeIoUMetric', 'KNOWN_PER_CLASS', 'KNOWN_PRIMARY', 'Leaderboard',
           'SubmissionBuilder', 'mask_to_polygons', 'polygons_to_mask']
