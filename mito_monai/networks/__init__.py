"""Networks of mito_monai: ``nets`` (architectures) and ``blocks`` (building blocks)."""

from .nets import MitoUNet

__all__ = ["MitoUNet"]
