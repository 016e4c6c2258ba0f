"""Network architectures of mito_monai."""

from .dualrel import DualRelBranchOutput, DualRelInferenceNet, DualRelNet, DualRelOutput, DualRelSingleBranch
from .mito_unet import MitoUNet

__all__ = ["DualRelBranchOutput", "DualRelInferenceNet", "DualRelNet", "DualRelOutput", "DualRelSingleBranch", "MitoUNet"]
