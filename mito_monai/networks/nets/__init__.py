"""Network architectures of mito_monai."""

from .dualrel import DualRelBranchOutput, DualRelNet, DualRelOutput, DualRelSingleBranch
from .mito_unet import MitoUNet

__all__ = ["DualRelBranchOutput", "DualRelNet", "DualRelOutput", "DualRelSingleBranch", "MitoUNet"]
