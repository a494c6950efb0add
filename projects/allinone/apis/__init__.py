"""High-level APIs: run a trained AllInOne model on images."""
from .inferencer import AllInOneInferencer, ImageReadError, list_images

__all__ = ['AllInOneInferencer', 'ImageReadError', 'list_images']
