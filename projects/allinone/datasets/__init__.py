from .checked import (BadInputError, ChallengeClsDataset, ChallengeCocoDataset,  # noqa: F401
                      ChallengeSegDataset)
from .mixing import MixingPipelineMixin, MixSource, bind_mixing_transforms  # noqa: F401
from .unlabeled import UnlabeledImageDataset  # noqa: F401
from .transforms import *  # noqa: F401,F403
