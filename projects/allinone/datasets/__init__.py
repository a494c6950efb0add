from .checked import (BadInputError, ChallengeClsDataset, ChallengeCocoDataset,  # noqa: F401
                      ChallengeSegDataset)
from .transforms import *  # noqa: F401,F403
