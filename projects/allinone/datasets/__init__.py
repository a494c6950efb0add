from .checked import BadInputError, ChallengeClsDataset, ChallengeCocoDataset, ChallengeSegDataset  # noqa: F401
from .mixing import MixingPipelineMixin, MixSource, bind_mixing_transforms  # noqa: F401
from .transforms import *  # noqa: F401,F403
from .unlabeled import UnlabeledImageDataset  # noqa: F401
