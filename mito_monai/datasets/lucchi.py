"""Lucchi (EPFL originals): ``training.tif``, ``training_groundtruth.tif``, ``testing.tif``,
``testing_groundtruth.tif``; splits ``train`` and ``test``."""

from __future__ import annotations

from pathlib import Path

from mito_monai.datasets.download import DatasetSource, RemoteFile
from mito_monai.datasets.layout import DatasetLayout, SplitFiles, require_file, require_root
from mito_monai.io.errors import DataError

__all__ = ["LucchiLayout", "SOURCE"]

_EPFL = "https://documents.epfl.ch/groups/c/cv/cvlab-unit/www/data/%20ElectronMicroscopy_Hippocampus"

#: Where the dataset comes from: address, licence, citation, the layout it unpacks into.
SOURCE = DatasetSource(
    name="lucchi",
    layout="lucchi",
    files=tuple(
        RemoteFile(url=f"{_EPFL}/{name}", filename=name)
        for name in ("training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif")
    ),
    homepage="https://www.epfl.ch/labs/cvlab/data/data-em/",
    license="see the EPFL CVLab page",
    citation="Lucchi et al., Supervoxel-based segmentation of mitochondria in EM image stacks "
    "with learned shape features, IEEE TMI 2012",
    note="the folder name on the EPFL server starts with a space (%20)",
)


class LucchiLayout(DatasetLayout):
    name = "lucchi"
    expected = "training.tif, training_groundtruth.tif, testing.tif, testing_groundtruth.tif"
    pixel_size = 5.0  # nm per pixel in-plane (FIB-SEM, about 5 x 5 x 5 nm)
    _FILES = {"train": ("training.tif", "training_groundtruth.tif"), "test": ("testing.tif", "testing_groundtruth.tif")}

    def list_splits(self, root: Path) -> list[str]:
        require_root(root, self)
        splits = [s for s, (img, _) in self._FILES.items() if (root / img).exists()]
        if not splits:
            raise DataError(
                f"{root}: neither training.tif nor testing.tif found; expected the lucchi layout ({self.expected})"
            )
        return splits

    def split_files(self, root: Path, split: str) -> SplitFiles:
        self.check_split(root, split)
        img, lab = (root / n for n in self._FILES[split])
        require_file(img, f"the {split} image stack of the lucchi layout")
        require_file(lab, f"the {split} ground-truth stack of the lucchi layout")
        return SplitFiles(self.name, split, img, lab)
