from .leaderboard import KNOWN_PRIMARY, Leaderboard
from .submission import SubmissionBuilder, mask_to_polygons, polygons_to_mask

__all__ = ['KNOWN_PRIMARY', 'Leaderboard', 'SubmissionBuilder', 'mask_to_polygons', 'polygons_to_mask']
