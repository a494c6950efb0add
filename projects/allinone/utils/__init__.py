from .data_check import check_data, missing_data
from .unlabeled import use_unlabeled_images

__all__ = ['check_data', 'missing_data', 'use_unlabeled_images']
