"""Network architectures of mito_monai."""

from .mito_unet import MitoUNet

__all__ = ["MitoUNet"]
